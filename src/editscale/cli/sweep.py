"""``editscale sweep``: a grid of runs (methods x seeds x models x hparams), on Ray where it is installed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json


@app.command("sweep")
def sweep_command(
    grid: Annotated[Path, typer.Argument(help="YAML grid file: a run config whose 'grid:' maps keys to lists.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep directory: one run directory per cell.")],
    address: Annotated[str | None, typer.Option(
        "--address", help="Ray cluster to run the cells on (e.g. ray://head:10001 or auto); default: a local "
                          "Ray started for this sweep.")] = None,
    max_parallel: Annotated[int | None, typer.Option("--max-parallel", min=1,
                                                     help="At most this many cells at once.")] = None,
    local: Annotated[bool, typer.Option("--local", help="Run the cells one after another in this process, "
                                                        "even where Ray is installed.")] = False,
    cells: Annotated[str | None, typer.Option(
        "--cells", help="Run only these cells (comma-separated names, as the cell directories are named), e.g. to "
                        "give a machine's cores to the cells wanted first; a later sweep without it runs the "
                        "rest.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    r"""Run every cell of GRID (each an ordinary run directory under --out, with its own store and checkpoints).

    Cells are Ray tasks asking for their threads as CPUs (and GPUs where their device is cuda); without Ray
    (pip install 'editscale\[ray]') they run one after another here. Re-running skips complete cells and
    resumes interrupted ones; a crashed cell is retried from its last checkpoint. Progress lines on stderr:
    cells done / running (with their current edit) / failed. Exit status 1 when a cell failed. Sweeps may
    share --out (say two with --cells, a core each): a cell another process is running is skipped, not failed.
    """
    from editscale.experiment.sweep import load_grid, run_sweep

    g = load_grid(grid)  # every cell validated before anything runs
    names = None if cells is None else [c.strip() for c in cells.split(",") if c.strip()]
    result = run_sweep(g, out, address=address, max_parallel=max_parallel, backend="local" if local else "auto",
                       cells=names)
    rows = [{"cell": s.name, "state": s.state, "edits": s.edits, "of": s.total, "error": s.error}
            for s in result.statuses]
    if json_out:
        print_json({"sweep": str(out), "backend": result.backend, "cells": rows})
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"sweep {out} ({result.backend})")
        for col in ("cell", "state", "edits", "error"):
            table.add_column(col, justify="right" if col == "edits" else "left")
        for r in rows:
            table.add_row(r["cell"], r["state"], f"{r['edits']}/{r['of']}", r["error"] or "")
        Console().print(table)
        print(f"results: {out}; plots: editscale report {out}")
    if result.elsewhere:
        print(f"{len(result.elsewhere)} cell(s) are running in another process: "
              f"{', '.join(s.name for s in result.elsewhere)}", file=sys.stderr)
    if result.failed:
        print(f"{len(result.failed)} cell(s) did not finish; run the same command again to resume them",
              file=sys.stderr)
        raise typer.Exit(1)
