"""``editscale downstream``: few-shot F1 of a model on the paper's GLUE tasks or a testbed model's skills."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from editscale.cli import app
from editscale.cli.common import print_json
from editscale.cli.evaluate import ModelOpt


@app.command("downstream")
def downstream_command(
    model: ModelOpt,
    tasks: Annotated[str, typer.Option(help="Comma-separated: sst2, mrpc, rte, cola; or skills (a testbed "
                                            "model's four synthetic skills).")] = "sst2,mrpc,rte,cola",
    data_dir: Annotated[Path | None, typer.Option(help="Folder of GLUE dev sets (SST-2/dev.tsv, MRPC/dev.tsv, "
                                                       "RTE/dev.tsv, CoLA/dev.tsv; GLUE TSV or Hugging Face "
                                                       "export). Default: the hub, where a network exists.")] = None,
    n: Annotated[int, typer.Option("--n", help="Examples per task, n/2 of each class; 0: the whole dev set.",
                                   min=0)] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the balanced subsets.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.", min=1)] = 16,
    dtype: Annotated[str | None, typer.Option(help="float32, float16 or bfloat16 (default: as saved).")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cpu or cuda:0.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Few-shot F1, accuracy and MCC of MODEL with the prompts of Gupta et al. 2024 (appendix A.3)."""
    from editscale.eval.downstream import SKILLS, DownstreamSuite, parse_task_names, resolve_tasks
    from editscale.names import load_model, resolve_model_path

    names = parse_task_names(tasks)
    subset = n or None
    glue = resolve_tasks([x for x in names if x != SKILLS], data_dir=data_dir, n=subset, seed=seed)
    path = resolve_model_path(model)
    skills = resolve_tasks([SKILLS], n=subset, seed=seed, model_dir=path) if SKILLS in names else []
    lm, tok, _ = load_model(path, dtype=dtype, device=device)
    results = DownstreamSuite([*glue, *skills], tok, batch_size=batch_size).evaluate(lm, progress=None)
    if json_out:
        print_json(results)
        return
    _print_table(f"{model}: few-shot downstream tasks", results)


def _print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("task")
    for col in ("n", "F1", "accuracy", "MCC"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(name, str(r["n"]), f"{r['f1']:.3f}", f"{r['accuracy']:.3f}", f"{r['mcc']:+.3f}")
    Console().print(table)
