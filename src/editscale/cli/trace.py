"""``editscale trace``: causal tracing of the facts a model knows; heatmaps, JSON, recommended edit layers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from editscale.cli.app import app
from editscale.cli.common import positive_finite, print_json
from editscale.cli.evaluate import ModelOpt


def _load(model: str, data: str, dtype: str | None, device: str | None):
    """The model and the facts, names resolved (``testbed:NAME``, model names) as every command does."""
    from editscale.data.readers import read_facts
    from editscale.names import load_model, resolve_data_path

    lm, tok, _ = load_model(model, dtype=dtype, device=device)
    return lm, tok, read_facts(resolve_data_path(data))


@app.command("trace")
def trace_command(
    model: ModelOpt,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="Facts: ROME's known_1000.json, any records file (their true facts) or testbed:NAME.",
        ),
    ],
    n: Annotated[int, typer.Option("--n", help="Trace the first N facts the model knows.", min=1)] = 50,
    kinds: Annotated[str, typer.Option(help="Comma-separated: hidden, mlp, attn.")] = "hidden,mlp,attn",
    samples: Annotated[int, typer.Option(help="Noise draws per fact (the reference: 10).", min=1)] = 10,
    window: Annotated[
        int | None,
        typer.Option(
            help="MLP/attention layers restored around each layer "
            "(default: 10, or a third of the layers below 28).",
            min=1,
        ),
    ] = None,
    noise_factor: Annotated[
        float, typer.Option(help="Noise as a multiple of the subjects' embedding std (positive).",
                            callback=positive_finite)
    ] = 3.0,
    all_facts: Annotated[bool, typer.Option("--all-facts", help="Trace the first N facts whether or not the model "
                                                                 "knows them (default: only known facts).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Write into --out even where it holds another command's "
                                                         "files or files of the same names.")] = False,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: ./trace-MODEL).")] = None,
    single: Annotated[int, typer.Option(help="Single-fact heatmaps to write.", min=0)] = 3,
    max_rows: Annotated[int, typer.Option(help="Restored rows per batch (memory bound).", min=1)] = 1024,
    seed: Annotated[int, typer.Option(help="Seed of the noise draws.")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).", min=1)] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32, float16 or bfloat16 (default: as saved).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cpu or cuda:0.")] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the JSON summary instead of a table.")
    ] = False,
) -> None:
    """Causal tracing (ROME, section 3) of the first N facts in DATA that MODEL knows.

    Writes trace_{hidden,mlp,attn}.png (average indirect effects by token group and layer), a few single-fact
    heatmaps and trace.json (total effect, per-layer indirect effects at the last subject token and the last
    token, recommended ROME and MEMIT layers with the rule that chose them).
    """
    from editscale.cache import check_out_dir, staged_output
    from editscale.model.loading import torch_threads
    from editscale.trace import causal_trace
    from editscale.trace.plots import write_outputs

    kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
    out_dir = out or Path(f"trace-{re.sub(r'[^A-Za-z0-9._-]+', '_', model).strip('_')}")
    check_out_dir(out_dir, "trace folder", "trace", names=("trace*.json", "trace_*.png", "fact*_*.png"),
                  force=force)  # before the work, not after it
    with torch_threads(threads):
        lm, tok, facts = _load(model, data, dtype, device)
        summary = causal_trace(
            lm,
            tok,
            facts,
            n=n,
            kinds=kind_list,
            samples=samples,
            window=window,
            noise_factor=noise_factor,
            seed=seed,
            max_rows=max_rows,
            known_only=not all_facts,
        )
    with staged_output(out_dir, "trace") as tmp:
        names = [p.relative_to(tmp) for p in write_outputs(summary, tmp, model_name=model, single_facts=single)]
    written = [out_dir / name for name in names]
    if json_out:
        print_json({**summary.to_json(), "out": str(out_dir)})
        return
    _print_summary(summary, model, written)


def _print_summary(summary, model: str, written: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    from editscale.trace import GROUPS

    console = Console()
    c = summary.cost
    console.print(
        f"{model}: {summary.n_facts} known facts traced (of {summary.n_known} known, "
        f"{summary.n_candidates} read); {summary.samples} noise draws, noise {summary.noise:.3g}, "
        f"window {summary.window}"
    )
    console.print(
        f"P(o) clean {summary.p_clean:.3f}, corrupted {summary.p_corrupted:.3f}, "
        f"total effect {summary.total_effect:.3f}"
    )
    # a row per layer (a column per kind and token), so a deep model's table fits a log's 80 columns
    table = Table(title="average indirect effect per layer")
    table.add_column("layer", justify="right")
    columns = [(kind, row) for kind in summary.kinds for row in (2, 5)]
    for kind, row in columns:
        table.add_column(f"{kind}, {GROUPS[row]}", justify="right")
    for layer in range(summary.n_layers):
        table.add_row(str(layer), *[f"{summary.grouped[kind][row][layer]:.3f}" for kind, row in columns])
    console.print(table)
    rec = summary.recommended
    if rec["rome_layer"] is None:
        console.print(f"recommended: none ({rec['note']})")
    else:
        console.print(f"recommended: ROME layer {rec['rome_layer']}, MEMIT layers {rec['memit_layers']}")
    console.print(f"rule: {rec['rule']}")
    console.print(
        f"cost per fact: {c['seconds_per_fact']:.2f} s, {c['forward_calls_per_fact']:.0f} forward calls "
        f"= {c['full_pass_equivalents_per_fact']:.0f} full-pass equivalents (the reference: "
        f"{c['reference_passes_per_fact']:.0f} passes)"
    )
    console.print(f"wrote {len(written)} files to {written[-1].parent}")
