"""``editscale downstream``: few-shot F1 on the paper's GLUE tasks or a testbed model's skills, and the general-ability
probes (perplexity, known-fact retention)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json
from editscale.cli.evaluate import ModelOpt


@app.command("downstream")
def downstream_command(
    model: ModelOpt,
    tasks: Annotated[str, typer.Option(help="Comma-separated: sst2, mrpc, rte, cola; skills (a testbed model's four "
                                            "synthetic skills); perplexity (held-out text), known-facts (retention "
                                            "of facts the model gets right).")] = "sst2,mrpc,rte,cola",
    data_dir: Annotated[Path | None, typer.Option(help="Folder of the data: GLUE dev sets (SST-2/dev.tsv, ...; GLUE "
                                                       "TSV or Hugging Face export), wikitext/, known_1000/. "
                                                       "Default: the hub for GLUE, $EDITSCALE_HOME/data for the "
                                                       "probes (a testbed model reads its own).")] = None,
    n: Annotated[int, typer.Option("--n", help="Examples per task, n/2 of each class; 0: the whole dev set.",
                                   min=0)] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the balanced subsets.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.", min=1)] = 16,
    dtype: Annotated[str | None, typer.Option(help="float32, float16 or bfloat16 (default: as saved).")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cpu or cuda:0.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Few-shot F1, accuracy and MCC of MODEL with the prompts of Gupta et al. 2024 (appendix A.3); perplexity
    and known-fact retention."""
    from editscale.eval.downstream import SKILLS, parse_task_names, prepare_panel, resolve_tasks
    from editscale.eval.panel import PROBE_TASKS
    from editscale.names import load_model, resolve_model_path

    names = parse_task_names(tasks)
    # GLUE's data is read (and refused) before the model is loaded; skills and probes need the model's directory
    glue = {t.name: t for t in resolve_tasks([x for x in names if x not in (SKILLS, *PROBE_TASKS)],
                                             data_dir=data_dir, n=n or None, seed=seed)}
    path = resolve_model_path(model)
    lm, tok, _ = load_model(path, dtype=dtype, device=device)
    panel = prepare_panel([glue.get(x, x) for x in names], lm, tok, data_dir=data_dir, n=n or None, seed=seed,
                          model_dir=path, batch_size=batch_size)
    results = panel.evaluate(lm, progress=None)
    if json_out:
        print_json(results)
        return
    _print_table(f"{model}: few-shot downstream tasks", results)


def _print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    from editscale.eval.panel import primary_metric

    table.add_column("task")
    for col in ("n", "score", "accuracy", "MCC"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        metric = primary_metric(name)
        score = f"{metric.replace('f1', 'F1')} {r[metric]:.3f}" + (f" (margin {r['margin']:+.2f})" if "margin" in r else "")
        table.add_row(name, str(r["n"]), score,
                      f"{r['accuracy']:.3f}" if "accuracy" in r else "", f"{r['mcc']:+.3f}" if "mcc" in r else "")
    Console().print(table)
