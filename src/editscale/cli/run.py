"""``editscale run``, ``report``, ``single-edit-test`` and ``demo``: sequential editing at scale."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json
from editscale.errors import ConfigError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


def _print_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from editscale.eval.metrics import METRICS

    def fmt(key: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if key in METRICS:
            m = METRICS[key]
            return m.format(v) + (" %" if m.percent else "")
        if key == "score":
            return f"{100 * v:.1f} %"
        if isinstance(v, list):
            return ", ".join(map(str, v[:20])) + (f" ... ({len(v)} in all)" if len(v) > 20 else "") or "none"
        return str(v)

    table = Table(title=f"run {run_dir}", caption="per-edit metrics: mean over the last 50 edits; forgotten: "
                  "at the last re-check (the scale paper's definition; _prob: P(new) > P(true))", show_header=False)
    for key, v in summary.items():
        label = METRICS[key].label if key in METRICS else key
        table.add_row(label, fmt(key, v))
    Console().print(table)


@app.command("run")
def run_command(
    config: Annotated[Path | None, typer.Argument(
        help="YAML run config: model, method, data, edits, forget_every, downstream_every, guard, ... "
             "(docs/guide.md, 'A sequential experiment').")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory to create.")] = None,
    resume_dir: Annotated[Path | None, typer.Option("--resume", help="Continue the killed run in this "
                                                                     "directory.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Edit a model sequentially as CONFIG says, measuring every edit; or continue a run with --resume.

    --out onto a run of the same config continues it (or says it is complete); of another config, refuses.
    One process at a time per run directory. Prints the scores over the last 50 edits, the share of earlier
    edits forgotten, the flagged edits and the CPU threads.
    """
    from editscale.experiment.config import load_config
    from editscale.experiment.rundir import check_free, run_state

    if resume_dir is not None:
        if config is not None or out is not None:
            raise ConfigError("--resume RUN_DIR takes no CONFIG or --out: the run directory holds its config")
        check_free(resume_dir)  # before torch is imported: a second process answers at once
        from editscale.experiment.runner import resume

        run_dir, summary = resume_dir, resume(resume_dir)
    else:
        if config is None or out is None:
            raise ConfigError("give a CONFIG and --out RUN_DIR, or --resume RUN_DIR")
        check_free(out)  # before the config is read: validating it imports torch, a second or more
        cfg = load_config(config)
        state = run_state(out, cfg.to_dict())
        if state != "new":
            print(f"{out}: " + ("this run is complete" if state == "complete" else
                                "continuing the run of this config there"), file=sys.stderr)
        from editscale.experiment.runner import run_experiment

        run_dir, summary = out, run_experiment(cfg, out)
    if json_out:
        print_json(summary)
    else:
        _print_summary(run_dir, summary)
        print(f"results: {run_dir}; plots: editscale report {run_dir}")


@app.command("report")
def report_command(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Run directories (overlaid), a folder of run directories (e.g. the demo's), or one sweep directory.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the plots and report.html (default: "
                                             "RUN_DIR/report for one run or a sweep, FOLDER/report for a folder "
                                             "of runs, else a report folder beside the first run).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into --out even where it holds another "
                                                         "command's files or files of the same names.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Also print the summary table as Markdown (the "
                                                               "tables of docs/results are made so).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object (the report's path, its plots and "
                                                          "the summary rows) instead of the path.")] = False,
) -> None:
    """Plots in the paper's style (runs overlaid) and one HTML page with a summary table. The runs are only
    read (a run on read-only storage needs --out elsewhere). A sweep directory (`editscale sweep`): each
    method's curves averaged over its seeds with a min-max band, a table per method with the spread, and links
    to every cell's report. The report is written whole or not at all."""
    from editscale.cache import check_out_dir, staged_output
    from editscale.experiment.store import RunStore
    from editscale.experiment.sweep_status import is_sweep_dir
    from editscale.report.html import default_report_dir, expand_run_dirs, summary_markdown, summary_rows

    sweep = len(run_dirs) == 1 and is_sweep_dir(run_dirs[0])
    if any(is_sweep_dir(d) for d in run_dirs) and not sweep:
        raise ConfigError("a sweep directory is reported alone: `editscale report SWEEP_DIR`")
    runs = [run_dirs[0]] if sweep else expand_run_dirs(run_dirs)
    for run_dir in runs if not sweep else []:  # every run readable before anything is drawn
        RunStore.in_dir(run_dir, readonly=True).close()
    target = out if out is not None else default_report_dir(run_dirs, runs)
    check_out_dir(target, "report folder" if out is not None else "report folder (give --out to write elsewhere)",
                  "report", names=("report.html", "*.png", "cells"), force=force)
    with staged_output(target, "report") as tmp:
        if sweep:  # mean curves over the seeds with a band, a table per method, links to the cells' reports
            from editscale.report.sweep import cell_dirs, write_sweep_report

            name = write_sweep_report(run_dirs[0], tmp).name
            runs = cell_dirs(run_dirs[0])
        else:
            from editscale.report.html import write_report

            name = write_report(runs, tmp).name
    page = target / name
    if json_out:
        print_json({"report": str(page), "plots": sorted(str(p) for p in page.parent.glob("*.png")),
                    "summary": summary_rows(runs)})
        return
    if markdown:
        print(summary_markdown(runs))
    print(f"report: {page}")


@app.command("single-edit-test")
def single_edit_test_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with flagged edits.")],
    normal: Annotated[int, typer.Option(help="How many normal (unflagged) edits to compare with.", min=1)] = 10,
    json_out: JsonOpt = False,
) -> None:
    """Re-apply each flagged edit, alone, to the unedited model and compare its distance with normal edits
    (the paper's Table 2)."""
    from rich.console import Console
    from rich.table import Table

    from editscale.experiment.guard import single_edit_test

    result = single_edit_test(run_dir, n_normal=normal)
    if json_out:
        print_json(result)
        return
    table = Table(title=f"single edits on the unedited model ({run_dir})")
    for col in ("edit", "kind", "distance / element", "distance / neuron", "frobenius", "efficacy", "neighborhood",
                "entropy"):
        table.add_column(col, justify="right")
    for r in result["edits"]:
        table.add_row(str(r["edit_idx"]), r["kind"], f"{r['distance_per_element']:.3e}",
                      f"{r['distance_per_neuron']:.3e}", f"{r['frobenius']:.4g}",
                      f"{r['efficacy']:.2f}", f"{r['neighborhood']:.2f}",
                      "-" if r["entropy"] is None else f"{r['entropy']:.2f}")
    Console().print(table)
    for kind in ("flagged", "normal"):
        g = result[kind]
        if g["n"]:
            print(f"{kind}: {g['n']} edits, mean distance per element {g['distance_per_element']:.3e} "
                  f"(per neuron {g['distance_per_neuron']:.3e})")
        else:
            print(f"{kind}: none")


@app.command("demo")
def demo_command(
    edits: Annotated[int, typer.Option(help="Sequential edits per method.", min=10)] = 300,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the runs and the report.")] = Path(
        "editscale-demo"),
) -> None:
    """Build testbed:demo if needed, edit it sequentially with ROME, ENCORE (which resists forgetting), r-ROME,
    MEMIT and FT-L on the same seeded sample, and write the report."""
    import torch

    from editscale.cache import check_out_dir
    from editscale.demo import DEMO_METHODS, run_demo
    from editscale.report.html import summary_rows

    check_out_dir(out, "--out", "demo")  # before the testbed build
    check_out_dir(out / "report", "--out", "report", names=("report.html",))
    print(f"editscale demo: {len(DEMO_METHODS)} methods x {edits} sequential edits of testbed:demo into {out}, on "
          f"{torch.get_num_threads()} CPU threads (building testbed:demo first if it is not built: 10-30 minutes)",
          file=sys.stderr)
    page, dirs, done_before = run_demo(out, edits=edits)
    if done_before == len(dirs):
        print(f"every run in {out} was complete already (an earlier demo); the report was written again",
              file=sys.stderr)
    print_summary(summary_rows(dirs))
    print(f"report: {page}")


SUMMARY_COLUMNS = ("run", "edits", "efficacy", "paraphrase", "neighborhood", "forgotten %", "skill F1 change",
                   "perplexity change", "known facts kept", "distance / element", "flagged", "method s / edit")


def print_summary(rows: list[dict[str, Any]]) -> None:
    """The report's summary rows as a table, the columns a reader looks at first."""
    from rich.console import Console
    from rich.table import Table

    cols = [c for c in SUMMARY_COLUMNS if any(r.get(c, "-") not in ("-", "") for r in rows)]
    table = Table(title="summary (per-edit scores over the last 50 edits, %; forgotten: of the edits correct when "
                        "made)")
    for c in cols:
        table.add_column(c, justify="left" if c == "run" else "right", no_wrap=c == "run",
                         min_width=min(len(c), 12))
    for r in rows:  # the skill change's mean here; its worst task is in the report
        table.add_row(*[str(r.get(c, "")).split(" (worst")[0] for c in cols])
    Console(width=max(120, Console().width)).print(table)
