"""``editscale mend train``: train MEND's editor networks for a model, then edit with ``--method mend``.

    editscale mend train --model testbed:demo --data testbed:demo
    editscale eval --model testbed:demo --data testbed:demo --method mend --limit 100
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from editscale.cli import app
from editscale.cli.common import print_json
from editscale.cli.edit import HparamsOpt, SetOpt
from editscale.errors import ConfigError

mend = typer.Typer(help="MEND's editor networks (train them once per model; then --method mend).",
                   no_args_is_help=True)
app.add_typer(mend, name="mend")


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    from editscale.cache import sha256_file

    return sha256_file(path)


@mend.command("train")
def train_command(
    model: Annotated[str, typer.Option("--model", "-m", help="testbed:NAME, smollm2-135m, a .gguf file, a model "
                                                             "directory or a hub name.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Training records: testbed:NAME (its training split of "
                                                           "subjects) or a records file (e.g. CounterFact's "
                                                           "train split), used whole.")],
    out: Annotated[Path | None, typer.Option(help="Write the editor here (outside the cache; edit with --set "
                                                  "editor=DIR) instead of the cache entry for the model.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training edits (default: the preset's train_steps).",
                                              min=1)] = None,
    split: Annotated[str, typer.Option(help="auto: a testbed world's training subjects (1 in 5), a records "
                                            "file whole; subjects or all to choose.")] = "auto",
    limit: Annotated[int | None, typer.Option(help="Use only the first N training records.", min=2)] = None,
    hparams: HparamsOpt = None,
    set_: SetOpt = None,
    dtype: Annotated[str | None, typer.Option(help="float32, float16 or bfloat16 (default: as saved).")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cpu or cuda:0.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a summary.")] = False,
) -> None:
    """Train MEND's editor for MODEL on the records of DATA and store it (cache entry keyed by the model's
    fingerprint, or --out) with a manifest; --method mend then finds it."""
    from editscale.cache import check_writable, refuse_inside_cache
    from editscale.cli.edit import parse_overrides
    from editscale.methods.context import EditContext
    from editscale.methods.hparams import resolve_hparams
    from editscale.methods.mend import MendHparams, is_training_subject, is_world, train_and_save
    from editscale.names import load_cases, load_model, resolve_data_path

    if split not in ("auto", "subjects", "all"):
        raise ConfigError(f"--split must be auto, subjects or all, got {split!r}")
    if out is not None:
        refuse_inside_cache(out, "--out")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"--out {out} already exists; choose a new directory")
        check_writable(out, "--out")
    chosen: Literal["subjects", "all"] = ("subjects" if is_world(data) else "all") if split == "auto" else split
    cases = load_cases(data)
    train = [c for c in cases if is_training_subject(c.request.subject)] if chosen == "subjects" else cases
    train = train[:limit] if limit else train
    lm, tok, _ = load_model(model, dtype=dtype, device=device)
    ctx = EditContext(lm, tok, stats_cache=None)
    hp = resolve_hparams("mend", MendHparams, lm, ctx.anatomy, parse_overrides(hparams, set_))
    path = Path(resolve_data_path(data))
    info = {"spec": data, "path": str(path), "sha256": _sha256(path), "records": len(cases),
            "train_records": len(train), "train_subjects": len({c.request.subject for c in train}),
            "split": chosen}
    where, manifest = train_and_save(ctx, train, hp, model_name=model, data=info, out=out, steps=steps)
    summary = {"dir": str(where), "model": model, "fingerprint": manifest["fingerprint"], "data": info,
               "steps": manifest["steps"], "train_seconds": manifest["train_seconds"],
               "threads": manifest["threads"], "final": manifest["final"], "edit_lrs": manifest["edit_lrs"],
               "layers": manifest["hparams"]["layers"], "matrices": manifest["hparams"]["matrices"]}
    if json_out:
        print_json(summary)
        return
    f = manifest["final"]
    typer.echo(f"MEND editor for {model} trained on {len(train)} records of {data} ({chosen}) in "
               f"{manifest['train_seconds']:.0f} s, {manifest['steps']} edits, {manifest['threads']} thread(s)")
    typer.echo(f"last edits: NLL of the new target {f['edit_nll']:.3f} (P {f['edit_p']:.2f}), locality KL "
               f"{f['loc_kl']:.4f}")
    typer.echo(f"edits layers {summary['layers']} ({', '.join(summary['matrices'])}); saved to {where}")
    if out is not None:
        typer.echo(f"use it with: --method mend --set editor={where}")

