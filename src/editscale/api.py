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
from typing import Any

from torch import nn

from editscale.data.records import EditCase
from editscale.methods.base import Delta
from editscale.methods.editor import Editor, HparamsLike, RequestLike, to_request, to_requests
from editscale.names import load_cases, load_model, resolve_corpus_path

__all__ = ["Editor", "HparamsLike", "RequestLike", "edit", "evaluate_edits", "load_cases", "load_model",
           "to_request", "to_requests"]


def edit(
    model: nn.Module,
    tokenizer,
    requests: RequestLike | Iterable[RequestLike],
    method: str = "memit",
    hparams: HparamsLike = None,
    **editor_options: Any,
) -> Delta:
    """Edit ``model`` IN PLACE and return the Delta, ALREADY APPLIED (``delta.applied`` is True).

    ``delta.revert(model)`` restores the original weights bit-exactly. ``editor_options`` are those of
    ``Editor`` (``seed``, ``stats_cache``, ``corpus``, ``progress``). For many calls on one model use an
    ``Editor``, which keeps statistics and prefixes between calls. A ``corpus`` may be ``testbed:NAME``.
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
) -> dict[str, Any]:
    """The papers' single-edit protocol: each case (or each batch of ``batch`` cases) is edited into the
    UNEDITED model, scored, and reverted before the next.

    Returns ``{"method", "n", "batch", "pre", "post"}`` with CounterFact summaries (``pre``: the unedited
    model on all cases; ``post``: each case scored right after its own edit) and ``"cases"``, the per-case
    post-edit scores. The model is left unedited.
    """
    from editscale.eval.counterfact import CounterFactResult, ReferenceScorer, evaluate_cases
    from editscale.progress import progress as bar

    model, tok = editor.model, editor.tokenizer
    reference = ReferenceScorer(cases)  # one vectorizer for all cases, fitted on their reference texts
    pre = evaluate_cases(model, tok, cases, batch_size=batch_size, reference=reference)
    editor.prepare()
    scored = []
    chunks = [list(cases[i: i + batch]) for i in range(0, len(cases), batch)]
    for chunk in bar(chunks, f"{editor.method_name}: edit, score, revert", enabled=progress):
        delta = editor.edit(chunk)
        try:
            scored += evaluate_cases(model, tok, chunk, batch_size=batch_size, reference=reference).cases
        finally:
            delta.revert(model)
    post = CounterFactResult(scored)
    return {"method": editor.method_name, "n": len(cases), "batch": batch, "pre": pre.summary(),
            "post": post.summary(), "cases": [c.to_dict() for c in scored]}
