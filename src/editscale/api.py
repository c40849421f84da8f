"""The Python API: ``editscale.edit`` for one call, ``Editor`` for repeated use.

    import editscale
    model, tok, _ = editscale.load_model("testbed:demo")   # or smollm2-135m, a .gguf file, a directory
    delta = editscale.edit(model, tok, [{"prompt": "{} plays the sport of", "subject": "LeBron James",
                                          "target_new": "football"}], method="rome")
    assert delta.applied          # the model IS edited now
    delta.revert(model)           # ... and restored bit-exactly

    editor = editscale.Editor(model, tok, method="memit")   # keeps statistics, prefixes and method state
    d1 = editor.edit(batch_1)     # applied
    d2 = editor.compute(batch_2)  # NOT applied: d2.apply(model) to apply it, or inspect / store it first
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from editscale.cache import sha256_file
from editscale.data.records import EditCase
from editscale.methods.base import Delta
from editscale.methods.editor import Editor, HparamsLike, RequestLike, to_request, to_requests
from editscale.names import load_cases, load_model, resolve_corpus_path

__all__ = ["Editor", "HparamsLike", "RequestLike", "edit", "evaluate_edits", "load_cases", "load_model",
           "to_request", "to_requests", "train_mend"]


def edit(
    model: nn.Module,
    tokenizer,
    requests: RequestLike | Iterable[RequestLike],
    method: str | None = None,
    hparams: HparamsLike = None,
    **editor_options: Any,
) -> Delta:
    """Edit ``model`` IN PLACE and return the Delta, ALREADY APPLIED (``delta.applied`` is True).

    ``delta.revert(model)`` restores the original weights bit-exactly. ``editor_options`` are those of
    ``Editor`` (``seed``, ``stats_cache``, ``corpus``, ``progress``). For many calls on one model use an
    ``Editor``, which keeps statistics and prefixes between calls. A ``corpus`` may be ``testbed:NAME``.
    ``method``: a registered method's name (``editscale methods``); None, the default one (MEMIT).
    """
    if isinstance(editor_options.get("corpus"), str):
        editor_options["corpus"] = resolve_corpus_path(editor_options["corpus"])
    return Editor(model, tokenizer, method, hparams, **editor_options).edit(requests)


def evaluate_edits(
    editor: Editor,
    cases: Sequence[EditCase],
    *,
    batch: int = 1,
    batch_size: int = 64,
    progress: bool | None = None,
    metrics: Sequence[str] | None = None,
    save: str | Path | None = None,
) -> dict[str, Any]:
    """The papers' single-edit protocol: each case (or each batch of ``batch`` cases) is edited into the
    UNEDITED model, scored, and reverted before the next.

    Returns ``{"method", "n", "batch", "pre", "post"}`` with CounterFact summaries (``pre``: the unedited
    model on all cases; ``post``: each case scored right after its own edit) and ``"cases"``, the per-case
    post-edit scores. The model is left unedited. ``metrics``: the per-edit metrics to score (default: all).
    ``save``: a file that keeps the scores as they are measured (``experiment.score_log``); called again with
    the same file and arguments, the evaluation continues after the last edit it holds.
    """
    from editscale.eval.counterfact import CounterFactResult, ReferenceScorer, evaluate_cases
    from editscale.eval.lengths import EDIT_RESERVE, check_cases_fit
    from editscale.experiment.score_log import ScoreLog, cases_digest
    from editscale.model.loading import fingerprint
    from editscale.progress import progress_bar

    model, tok = editor.model, editor.tokenizer
    check_cases_fit(model, tok, cases, reserve=EDIT_RESERVE)
    log = None
    if save is not None:
        log = ScoreLog(save, {"model": fingerprint(model), "records": cases_digest(cases), "n": len(cases),
                              "method": editor.method_name, "hparams": editor.hparams.model_dump(mode="json"),
                              "batch": batch, "metrics": None if metrics is None else list(metrics),
                              "seed": editor.context.seed})
    reference = ReferenceScorer(cases)  # one vectorizer for all cases, fitted on their reference texts
    chunks = [list(cases[i: i + batch]) for i in range(0, len(cases), batch)]
    pre = [] if log is None or log.pre is None else log.pre
    if not pre:  # the unedited model, in chunks of 16 records; the progress line counts records
        with progress_bar("the unedited model: score (records)", len(cases), progress) as advance:
            for i in range(0, len(cases), 16):
                chunk = list(cases[i: i + 16])
                pre += evaluate_cases(model, tok, chunk, metrics=metrics, batch_size=batch_size,
                                      reference=reference).cases
                advance(len(chunk))
        if log is not None:
            log.add_pre(pre)
    done = {} if log is None else log.edits
    todo = [i for i in range(len(chunks)) if i not in done]
    if todo:
        editor.prepare()
    with progress_bar(f"{editor.method_name}: edit, score, revert", len(chunks), progress,
                      completed=len(chunks) - len(todo)) as advance:
        for i in todo:
            delta = editor.edit(chunks[i])
            try:
                done[i] = evaluate_cases(model, tok, chunks[i], metrics=metrics, batch_size=batch_size,
                                         reference=reference).cases
            finally:
                delta.revert(model)
            if log is not None:
                log.add_edit(i, done[i])
            advance()
    scored = [s for i in range(len(chunks)) for s in done[i]]
    post = CounterFactResult(scored)
    return {"method": editor.method_name, "n": len(cases), "batch": batch, "pre": CounterFactResult(pre).summary(),
            "post": post.summary(), "cases": [c.to_dict() for c in scored]}


def train_mend(
    model: str,
    data: str,
    *,
    out: str | Path | None = None,
    steps: int | None = None,
    split: str = "auto",
    limit: int | None = None,
    hparams: HparamsLike = None,
    dtype: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train MEND's editor for ``model`` (a name or directory) on the records of ``data`` and store it: the cache
    entry for the model's fingerprint, or ``out`` (a new directory outside the cache). Returns its directory
    and manifest. ``split``: ``auto`` trains on a testbed world's training subjects (``is_training_subject``,
    left out of MEND's edits) and on a records file whole; ``subjects`` or ``all`` choose. ``hparams``: overrides
    of the model's preset (a mapping or YAML file)."""
    from editscale.cache import check_writable, refuse_inside_cache
    from editscale.errors import ConfigError
    from editscale.methods.context import EditContext
    from editscale.methods.hparams import read_hparams_file
    from editscale.methods.mend import Mend, is_training_subject, is_world, train_and_save
    from editscale.methods.preset_resolution import resolve_hparams
    from editscale.names import resolve_data_path

    if split not in ("auto", "subjects", "all"):
        raise ConfigError(f"split must be auto, subjects or all, got {split!r}")
    if out is not None:
        out = Path(out)
        refuse_inside_cache(out, "--out")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"--out {out} already exists; choose a new directory")
        check_writable(out, "--out")
    chosen = ("subjects" if is_world(data) else "all") if split == "auto" else split
    cases = load_cases(data)
    train = [c for c in cases if is_training_subject(c.request.subject)] if chosen == "subjects" else cases
    train = train[:limit] if limit else train
    lm, tok, _ = load_model(model, dtype=dtype, device=device)
    ctx = EditContext(lm, tok, stats_cache=None, progress=progress)
    given = read_hparams_file(hparams) if isinstance(hparams, (str, Path)) else hparams
    hp = resolve_hparams(Mend.name, Mend.Hparams, lm, ctx.anatomy, given)
    path = Path(resolve_data_path(data))
    info = {"spec": data, "path": str(path), "sha256": sha256_file(path) if path.is_file() else None,
            "records": len(cases), "train_records": len(train),
            "train_subjects": len({c.request.subject for c in train}), "split": chosen}
    return train_and_save(ctx, train, hp, model_name=model, data=info, out=out, steps=steps, progress=progress)
