"""``editscale edit``: edit one fact (or the records of a file) and show the probabilities before and after.

    editscale edit --model testbed:demo --method rome --prompt "{} plays the sport of" \\
        --subject "LeBron James" --target football --target-true basketball

The options shared with ``editscale eval --method`` (hyperparameters, statistics corpus and cache, seed)
and ``make_editor`` live here.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json
from editscale.errors import ConfigError
from editscale.methods.catalog import method_help

MethodOpt = Annotated[str, typer.Option("--method", help=method_help("The editing method."))]
HparamsOpt = Annotated[Path | None, typer.Option("--hparams", help="YAML file of hyperparameter overrides.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="One hyperparameter override KEY=VALUE "
                                                                  "(VALUE in YAML, e.g. layers=[1,2]); repeatable.")]
CorpusOpt = Annotated[str | None, typer.Option(help="Text for the key statistics: a text file (one text per "
                                                     "line), testbed:NAME or hub:NAME (default: the model "
                                                     "directory's corpus.txt, else WikiText-103 from the hub).")]
StatsDirOpt = Annotated[Path | None, typer.Option(help="Statistics cache directory (default: "
                                                          "$EDITSCALE_HOME/stats or ~/.cache/editscale/stats).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the context prefixes.")]


def parse_overrides(hparams: Path | None, sets: list[str] | None) -> dict[str, Any]:
    """Overrides from a YAML file and KEY=VALUE pairs (the pairs win)."""
    import yaml

    from editscale.methods.hparams import read_hparams_file

    out: dict[str, Any] = read_hparams_file(hparams) if hparams is not None else {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: {value!r} is not a valid YAML value") from None
    return out


def load_edit_cases(method: str | None, data: str, limit: int | None, skip_invalid: bool = False) -> list:
    """The first ``limit`` records of ``data`` that ``method`` may edit: all, except a method's own training
    records (MEND's editor trains on part of a testbed world: ``EditMethod.holds_out``)."""
    from editscale.methods.base import get_method_class
    from editscale.names import load_cases

    if method is not None and get_method_class(method).holds_out(data):
        return get_method_class(method).held_out_cases(load_cases(data, skip_invalid=skip_invalid))[:limit]
    return load_cases(data, limit=limit, skip_invalid=skip_invalid)


def make_editor(model, tok, method: str, hparams: Path | None, sets: list[str] | None, corpus: str | None,
                stats_dir: Path | None, seed: int):
    from editscale.api import Editor
    from editscale.errors import DataLoadError
    from editscale.names import resolve_corpus_path

    if corpus is not None and not corpus.startswith(("hub:", "testbed:")):  # a file: there, before the work
        path = Path(corpus).expanduser()
        if not path.exists() and (corpus.startswith((".", "/", "~")) or path.suffix in (".txt", ".text", ".raw")):
            raise DataLoadError(f"statistics corpus file {corpus!r} does not exist")
    overrides = parse_overrides(hparams, sets)
    if "mom2_corpus" in overrides:
        overrides["mom2_corpus"] = resolve_corpus_path(overrides["mom2_corpus"])
    return Editor(model, tok, method, overrides, corpus=resolve_corpus_path(corpus), seed=seed,
                  stats_cache=stats_dir if stats_dir is not None else "default")


def _probabilities(model, tok, cases) -> list[list[dict[str, Any]]]:
    """Per case, per prompt (the edit prompt, then its paraphrases): P(new object), P(true object)."""
    from editscale.eval.scoring import score_continuations

    prompts, targets, where = [], [], []
    for i, case in enumerate(cases):
        req = case.request
        for kind, prompt in [("prompt", req.text)] + [("paraphrase", p) for p in case.paraphrase_prompts]:
            for which, target in (("p_new", req.target_new), ("p_true", req.target_true)):
                if target:
                    prompts.append(prompt)
                    targets.append(target)
                    where.append((i, kind, prompt, which))
    scores = score_continuations(model, tok, prompts, targets)
    out: list[dict[tuple[str, str], dict[str, Any]]] = [{} for _ in cases]
    for (i, kind, prompt, which), lp in zip(where, scores.logprob.tolist()):
        out[i].setdefault((kind, prompt), {"kind": kind, "prompt": prompt, "p_new": None, "p_true": None})
        out[i][(kind, prompt)][which] = math.exp(lp)
    return [list(d.values()) for d in out]


def _print_tables(cases, before, after) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if len(cases) > 5:  # one row per record, its edit prompt only
        table = Table()
        for col in ("subject", "true -> new", "P(new) before", "after", "P(true) before", "after"):
            table.add_column(col, justify="left" if col in ("subject", "true -> new") else "right")
        wins = [0, 0]
        for case, b, a in zip(cases, before, after):
            req, b, a = case.request, b[0], a[0]
            for j, row in enumerate((b, a)):
                wins[j] += row["p_true"] is not None and row["p_new"] > row["p_true"]
            fmt = [f"{x:.4f}" if x is not None else "-" for x in (b["p_new"], a["p_new"], b["p_true"], a["p_true"])]
            table.add_row(req.subject, f"{req.target_true or '?'} -> {req.target_new}", *fmt)
        console.print(table)
        print(f"P(new) > P(true) on the edit prompt: {wins[0]}/{len(cases)} before, {wins[1]}/{len(cases)} after")
        print("(probability of the whole object continuation after the prompt)")
        return
    for case, b_rows, a_rows in zip(cases, before, after):
        req = case.request
        title = f"{req.subject}: {req.target_true or '?'} -> {req.target_new}"
        table = Table(title=title, title_justify="left")
        table.add_column("prompt")
        table.add_column(f"P({req.target_new}) before", justify="right")
        table.add_column("after", justify="right")
        if req.target_true:
            table.add_column(f"P({req.target_true}) before", justify="right")
            table.add_column("after", justify="right")
        for b, a in zip(b_rows, a_rows):
            cells = [b["prompt"], f"{b['p_new']:.4f}", f"{a['p_new']:.4f}"]
            if req.target_true:
                cells += [f"{b['p_true']:.4f}", f"{a['p_true']:.4f}"]
            table.add_row(*cells)
        console.print(table)
    print("(probability of the whole object continuation after the prompt)")


def check_save_target(save: Path, need_bytes: int | None = None) -> None:
    """``--save DIR`` before the work: not inside editscale's cache, not an existing (non-empty) directory or
    a file, and on writable storage with room (``need_bytes``); one-line errors, nothing written."""
    from editscale.cache import MIN_FREE_BYTES, check_writable, refuse_inside_cache

    refuse_inside_cache(save, "--save")
    if save.exists() and (not save.is_dir() or any(save.iterdir())):
        raise ConfigError(f"--save {save} already exists; choose a new directory (editscale does not overwrite one)")
    check_writable(save, "--save", need_bytes=MIN_FREE_BYTES + (need_bytes or 0))


def save_edited(directory: Path, model, tok, deltas, meta: dict[str, Any]) -> None:
    """The edited model (save_pretrained + tokenizer), its deltas (safetensors, one file per edit call, in
    order) and edit.json; a testbed model's corpus.txt and manifest are copied along. Written into a temporary
    directory beside ``directory`` (which must be absent or empty) and renamed at the end, so a failed save
    leaves nothing."""
    import os
    import tempfile

    from safetensors.torch import save_file

    from editscale.data.text_corpus import CORPUS_FILE
    from editscale.model.loading import MANIFEST_FILE, model_dir

    source = model_dir(model)
    directory.parent.mkdir(parents=True, exist_ok=True)
    from editscale.cache import leftover_prefix

    tmp = Path(tempfile.mkdtemp(prefix=leftover_prefix(directory.name, "saving"), dir=directory.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "deltas").mkdir(exist_ok=True)
        for i, d in enumerate(deltas):
            save_file(d.to_tensors(), str(tmp / "deltas" / f"{i:05d}.safetensors"))
        (tmp / "edit.json").write_text(json.dumps(meta, indent=2) + "\n")
        if source is not None and source.resolve() != directory.resolve():
            for name in (CORPUS_FILE, MANIFEST_FILE):
                if (source / name).is_file():
                    shutil.copy(source / name, tmp / name)
        tmp.chmod(0o755)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@app.command("edit")
def edit_command(
    model: Annotated[str, typer.Option("--model", "-m", help="testbed:NAME, smollm2-135m (editscale models), a "
                                                             ".gguf file, a local model directory or a hub name.")],
    method: MethodOpt = "memit",
    prompt: Annotated[str | None, typer.Option(help="Prompt with '{}' where the subject goes (or the subject "
                                                     "written out).")] = None,
    subject: Annotated[str | None, typer.Option(help="The subject.")] = None,
    target: Annotated[str | None, typer.Option(help="The new object.")] = None,
    target_true: Annotated[str | None, typer.Option(help="The true object (to compare with).")] = None,
    paraphrase: Annotated[list[str] | None, typer.Option(help="A paraphrase of the prompt to check; "
                                                               "repeatable.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Edit the records of this file (or "
                                                                   "testbed:NAME) instead.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N records.", min=1)] = None,
    batch: Annotated[int, typer.Option(help="Records per edit call (MEMIT edits a batch at once; the "
                                            "batches are applied one after another).", min=1)] = 1,
    hparams: HparamsOpt = None,
    set_: SetOpt = None,
    corpus: CorpusOpt = None,
    stats_dir: StatsDirOpt = None,
    seed: SeedOpt = 0,
    dtype: Annotated[str | None, typer.Option(help="float32, float16 or bfloat16 (default: as saved).")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cpu or cuda:0.")] = None,
    save: Annotated[Path | None, typer.Option(help="Write the edited model, its deltas and edit.json here.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Edit facts in MODEL and print the probabilities of the new and true objects before and after."""
    from editscale.data.records import EditCase, EditRequest
    from editscale.names import load_model
    from editscale.progress import progress

    if data is not None:
        if prompt or subject or target:
            raise ConfigError("give either --data or --prompt/--subject/--target, not both")
        cases = load_edit_cases(method, data, limit)
    else:
        missing = [n for n, v in (("--prompt", prompt), ("--subject", subject), ("--target", target)) if not v]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)} (or give --data FILE)")
        req = EditRequest.from_text(prompt, subject, target, target_true=target_true, case_id="cli")
        cases = [EditCase(req, paraphrase_prompts=tuple(paraphrase or ()))]
    if save is not None:
        check_save_target(save)
    lm, tok, _ = load_model(model, dtype=dtype, device=device)
    from editscale.eval.lengths import EDIT_RESERVE, check_cases_fit

    check_cases_fit(lm, tok, cases, reserve=EDIT_RESERVE)
    if save is not None:  # room for the model, now that its size is known; before the edit
        check_save_target(save, sum(p.numel() * p.element_size() for p in lm.parameters()))
    editor = make_editor(lm, tok, method, hparams, set_, corpus, stats_dir, seed)
    before = _probabilities(lm, tok, cases)
    deltas = []
    batches = [cases[i: i + batch] for i in range(0, len(cases), batch)]
    for chunk in progress(batches, f"editing with {method}"):
        deltas.append(editor.edit(chunk))
    after = _probabilities(lm, tok, cases)
    meta = {"model": model, "method": method, "hparams": editor.hparams.to_dict(), "seed": seed,
            "records": [c.request.to_dict() for c in cases], "batch": batch}
    if save is not None:
        for d in deltas:
            d.forget_originals()
        save_edited(save, lm, tok, deltas, meta)
    if json_out:
        norms: dict[str, float] = {}
        for d in deltas:
            for name, value in d.norms().items():
                norms[name] = norms.get(name, 0.0) + value
        print_json({"model": model, "method": method, "n": len(cases), "hparams": editor.hparams.to_dict(),
                    "edits": [{**c.request.to_dict(), "before": b, "after": a}
                              for c, b, a in zip(cases, before, after)],
                    "update_norms": norms, "saved": str(save) if save else None})
        return
    _print_tables(cases, before, after)
    if save is not None:
        print(f"saved the edited model and {len(deltas)} delta file(s) to {save}")
