"""``editscale mend train``: train MEND's editor networks for a model, then edit with ``--method mend``.

    editscale mend train --model testbed:demo --data testbed:demo
    editscale eval --model testbed:demo --data testbed:demo --method mend --limit 100
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json
from editscale.cli.edit import HparamsOpt, SetOpt

mend = typer.Typer(help="MEND's editor networks (train them once per model; then --method mend).",
                   no_args_is_help=True)
app.add_typer(mend, name="mend")


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
    from editscale.api import train_mend
    from editscale.cli.edit import parse_overrides

    where, manifest = train_mend(model, data, out=out, steps=steps, split=split, limit=limit,
                                 hparams=parse_overrides(hparams, set_), dtype=dtype, device=device)
    info = manifest["data"]
    summary = {"dir": str(where), "model": model, "fingerprint": manifest["fingerprint"], "data": info,
               "steps": manifest["steps"], "train_seconds": manifest["train_seconds"],
               "threads": manifest["threads"], "final": manifest["final"], "edit_lrs": manifest["edit_lrs"],
               "layers": manifest["hparams"]["layers"], "matrices": manifest["hparams"]["matrices"]}
    if json_out:
        print_json(summary)
        return
    f = manifest["final"]
    typer.echo(f"MEND editor for {model} trained on {info['train_records']} records of {data} ({info['split']}) in "
               f"{manifest['train_seconds']:.0f} s, {manifest['steps']} edits, {manifest['threads']} thread(s)")
    typer.echo(f"last edits: NLL of the new target {f['edit_nll']:.3f} (P {f['edit_p']:.2f}), locality KL "
               f"{f['loc_kl']:.4f}")
    typer.echo(f"edits layers {summary['layers']} ({', '.join(summary['matrices'])}); saved to {where}")
    if out is not None:
        typer.echo(f"use it with: --method mend --set editor={where}")

