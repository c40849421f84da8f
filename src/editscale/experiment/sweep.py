"""Grids of sequential-editing runs: ``run_sweep(GRID, out_dir)``, on Ray where it is installed.

The grid file (``experiment/grid.py``) expands into cells, each validated as ``editscale run`` validates a
config before anything runs.

Cell directories are named from the cell's values (``rome_seed-0``); ``sweep.json`` in ``out_dir`` holds the
grid and the cells (``editscale report out_dir`` reads it). Re-running a sweep skips complete cells and resumes
interrupted ones from their last checkpoint (``rundir.run_state``); a cell of another config under a cell's name
is refused before anything runs. Sweeps may share an ``out_dir`` (e.g. two ``--cells`` sweeps, one a core each):
each cell's run locks its own directory (``rundir.RunLock``), and a sweep skips a cell another process is running
(reported as running, not failed); ``out_dir``'s lock is held only while ``sweep.json`` is read and written, and
each sweep records the failures of its own cells only. Ray's workers run in process groups of their own: a sweep
process killed alone (not its whole session) may leave workers that finish their cells; a re-run meanwhile
reports such a cell as running, and the next one finds it complete.

Backends: ``ray`` (``pip install 'editscale[ray]'``) runs cells as Ray tasks with resource requests (``num_cpus``
= the cell's threads, ``num_gpus``), on a local Ray started here or on a cluster at ``address``; ``local`` runs
them one after another in this process. ``auto`` is Ray where it is installed.

Nothing here imports torch at module level: a bad grid answers at once.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from editscale.errors import ConfigError, EditscaleError, RunInUseError
from editscale.experiment.config import parse_config
from editscale.experiment.grid import GROUP_OUT, Cell, Grid, load_grid, parse_grid
from editscale.experiment.rundir import RunLock
from editscale.experiment.sweep_status import (
    SWEEP_VERSION,
    CellStatus,
    _write_manifest,
    cell_status,
    check_cells,
    is_sweep_dir,
    read_manifest,
    status_line,
)

Backend = Literal["auto", "ray", "local"]
RAY_HINT = "pip install 'editscale[ray]'"


# --- running ------------------------------------------------------------------------------------------------
def run_cell(config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """One cell, in whatever process runs it (this one, or a Ray worker): the run with the cell's thread count,
    continuing the run directory's run where there is one. Returns ``{"summary": ...}``, or ``{"error": ...}``
    for a problem a retry cannot fix (an ``EditscaleError``); anything else raises (and is retried)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        cfg = parse_config(config)
        from editscale import threads

        threads.apply(cfg.threads or 1)
        from editscale.experiment.runner import run_experiment

        return {"summary": run_experiment(cfg, run_dir, progress=False)}
    except RunInUseError as e:  # another sweep is running this cell: not this sweep's failure
        return {"busy": e.fact}
    except EditscaleError as e:
        return {"error": f"{type(e).__name__}: {e}"}


@dataclass
class SweepResult:
    out_dir: Path
    backend: str
    statuses: list[CellStatus] = field(default_factory=list)

    @property
    def failed(self) -> list[CellStatus]:
        """The cells that did not finish here, but for those another process is running."""
        return [s for s in self.statuses if s.state not in ("done", "running")]

    @property
    def elsewhere(self) -> list[CellStatus]:
        """The cells another process was running (skipped here)."""
        return [s for s in self.statuses if s.state == "running"]


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_sweep(grid: Grid | str | Path | dict, out_dir: str | Path, *, address: str | None = None,
              max_parallel: int | None = None, backend: Backend = "auto", ray_init: dict[str, Any] | None = None,
              progress: bool | None = None, say: Callable[[str], None] | None = _say,
              poll_seconds: float = 5.0, cells: Sequence[str] | None = None) -> SweepResult:
    """Run every cell of ``grid`` into ``out_dir/CELL``: complete cells are skipped, interrupted ones resumed.

    ``cells`` names the cells to run (all by default), for putting a machine's cores where they are wanted
    first: the manifest still lists the whole grid, and a later sweep without it runs the rest.

    ``backend``: ``ray`` (Ray tasks; ``ray.init(address)``, or a local Ray with ``ray_init`` arguments), ``local``
    (one after another in this process) or ``auto`` (Ray where installed). ``max_parallel`` caps the cells
    running at once. ``say`` receives progress lines (cells done / running with their current edit / failed).
    Returns every cell's final state; cells that failed after their retries are listed in ``sweep.json``."""
    from editscale.cache import check_writable, refuse_inside_cache

    g = grid if isinstance(grid, Grid) else parse_grid(grid) if isinstance(grid, dict) else load_grid(grid)
    chosen = g.cells if cells is None else select_cells(g, cells)
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError("--max-parallel must be at least 1")
    if backend == "auto":
        backend = "ray" if ray_available() else "local"
    if backend == "ray" and not ray_available():
        raise ConfigError(f"Ray is not installed: {RAY_HINT}, or run the cells one after another without --address")
    if backend == "local" and address is not None:
        raise ConfigError("--address needs Ray: " + RAY_HINT)
    out = Path(out_dir)
    refuse_inside_cache(out, "sweep directory")
    check_writable(out, "sweep directory")
    say = say or (lambda _m: None)
    ours = {c.name for c in chosen}
    with RunLock(out):  # one manifest writer at a time; each cell's run locks its own directory
        states = check_cells(g, out)
        out.mkdir(parents=True, exist_ok=True)
        old = read_manifest(out) if is_sweep_dir(out) else {}
        manifest = {"version": SWEEP_VERSION, "source": g.source, "base": g.base, "grid": g.grid,
                    "options": g.options.model_dump(mode="json"), "group_out": list(GROUP_OUT),
                    "created": old.get("created", datetime.now(UTC).isoformat(timespec="seconds")),
                    "cells": [c.manifest() for c in g.cells],
                    "failures": {k: v for k, v in old.get("failures", {}).items()
                                 if k not in ours and k in {c.name for c in g.cells}}}
        _write_manifest(out, manifest)
    todo = [c for c in chosen if states[c.name] != "complete"]
    if any(states[c.name] != "new" for c in chosen):
        say(f"{len(chosen) - len(todo)} of {len(chosen)} cells are complete; "
            f"{sum(states[c.name] == 'resume' for c in todo)} to resume, "
            f"{sum(states[c.name] == 'new' for c in todo)} to start")
    failures: dict[str, str] = {}
    if todo:
        if backend == "ray":
            shown = replace(g, cells=chosen)  # the progress line counts the cells asked for
            failures = _run_ray(shown, todo, out, address, max_parallel, ray_init, say, poll_seconds)
        else:
            if not ray_available():
                say(f"Ray is not installed: running the {len(todo)} cells one after another in this process "
                    f"({RAY_HINT} runs them in parallel)")
            failures = _run_local(g, todo, out, progress, say)
    with RunLock(out):  # this sweep's cells' failures; another sweep's (of its cells) are kept
        manifest = read_manifest(out)
        manifest["failures"] = {**{k: v for k, v in manifest.get("failures", {}).items() if k not in ours},
                                **failures}
        _write_manifest(out, manifest)
    statuses = [cell_status(out, c.name, c.config.edits, failures) for c in chosen]
    say(status_line(statuses))
    return SweepResult(out, backend, statuses)


def select_cells(g: Grid, names: Sequence[str]) -> list[Cell]:
    """The grid's cells of these names, in the grid's order; an unknown name is a one-line ``ConfigError``
    listing the cells there are."""
    unknown = [n for n in names if n not in {c.name for c in g.cells}]
    if unknown or not names:
        raise ConfigError(f"no cell {', '.join(map(repr, unknown)) or 'named'} in {g.source}; its cells: "
                          f"{', '.join(c.name for c in g.cells)}")
    return [c for c in g.cells if c.name in set(names)]


def _run_local(g: Grid, todo: list[Cell], out: Path, progress: bool | None,
               say: Callable[[str], None]) -> dict[str, str]:
    from editscale.experiment.runner import run_experiment
    from editscale.model.loading import torch_threads

    failures = {}
    for i, cell in enumerate(todo, 1):
        say(f"cell {i}/{len(todo)}: {cell.name}")
        for attempt in range(g.options.retries + 1):
            try:
                with torch_threads(cell.threads):
                    run_experiment(cell.config, out / cell.name, progress=progress)
                failures.pop(cell.name, None)
                break
            except RunInUseError as e:
                say(f"cell {cell.name} skipped: {e.fact}")
                break
            except EditscaleError as e:  # a retry would not help
                failures[cell.name] = f"{type(e).__name__}: {e}"
                break
            except Exception as e:  # noqa: BLE001 - a crash: retried from the cell's last checkpoint
                failures[cell.name] = f"{type(e).__name__}: {e}".splitlines()[0]
                if attempt < g.options.retries:
                    say(f"cell {cell.name} failed ({failures[cell.name]}); retrying from its last checkpoint")
        if cell.name in failures:
            say(f"cell {cell.name} failed: {failures[cell.name]}")
    return failures


def _init_ray(address: str | None, ray_init: dict[str, Any] | None) -> bool:
    """Connect to Ray (a cluster at ``address``, else a local one started here); True when we started it."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING, "configure_logging": True}
    if address is None:  # a private Ray for this sweep: quiet, and small (cells pass configs and summaries)
        kwargs.update(object_store_memory=200 * 1024**2, logging_level=logging.ERROR)
    kwargs.update(ray_init or {})
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as e:
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    return True


def _run_ray(g: Grid, todo: list[Cell], out: Path, address: str | None, max_parallel: int | None,
             ray_init: dict[str, Any] | None, say: Callable[[str], None], poll_seconds: float) -> dict[str, str]:
    import ray

    started = _init_ray(address, ray_init)
    try:
        task = ray.remote(run_cell)
        cluster = ray.cluster_resources()
        where = f"the cluster at {address}" if address else "a local Ray started for this sweep"
        say(f"Ray ({where}): {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; {len(todo)} cells"
            + (f", at most {max_parallel} at once" if max_parallel else ""))
        for cell in todo:
            if cell.threads > cluster.get("CPU", 0) or cell.gpus(g.options) > cluster.get("GPU", 0):
                raise ConfigError(f"cell {cell.name} asks for {cell.threads} CPUs and {cell.gpus(g.options):g} GPUs; "
                                  f"the Ray cluster has {cluster.get('CPU', 0):g} and {cluster.get('GPU', 0):g}")
        queue = list(todo)
        running: dict[Any, Cell] = {}
        failures: dict[str, str] = {}
        last_line, last_time = "", 0.0
        while queue or running:
            while queue and (max_parallel is None or len(running) < max_parallel):
                cell = queue.pop(0)
                ref = task.options(num_cpus=cell.threads, num_gpus=cell.gpus(g.options),
                                   max_retries=g.options.retries, retry_exceptions=True,
                                   name=f"editscale-cell:{cell.name}").remote(cell.config.to_dict(),
                                                                             str(out / cell.name))
                running[ref] = cell
            ready, _ = ray.wait(list(running), num_returns=1, timeout=poll_seconds)
            for ref in ready:
                cell = running.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the task failed after its retries
                    result = {"error": f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[-1]}
                if "busy" in result:
                    say(f"cell {cell.name} skipped: {result['busy']}")
                elif "error" in result:
                    failures[cell.name] = result["error"]
                    say(f"cell {cell.name} failed: {result['error']}")
            statuses = [cell_status(out, c.name, c.config.edits, failures) for c in g.cells]
            line = status_line(statuses)
            if (queue or running) and (line != last_line or time.monotonic() - last_time > 60):
                say(line)
                last_line, last_time = line, time.monotonic()
        return failures
    finally:
        if started:
            ray.shutdown()
