"""A sweep directory's state: its manifest (``sweep.json``) and each cell's status (done, running, failed,
interrupted, pending), read without taking anything; what ``editscale sweep`` prints as progress and the report
reads."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editscale.errors import RunInUseError, RunStateError
from editscale.experiment.grid import Grid
from editscale.experiment.rundir import DB_FILE, check_free, config_hash, run_state, stored_config_hash

SWEEP_FILE = "sweep.json"
SWEEP_VERSION = 1


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / SWEEP_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunStateError(f"{out_dir} is not a sweep directory (no {SWEEP_FILE}); start one with "
                            "`editscale sweep GRID --out DIR`") from None
    except (OSError, ValueError) as e:
        raise RunStateError(f"{path} cannot be read ({e}); the sweep directory is damaged") from None
    if manifest.get("version") != SWEEP_VERSION or not isinstance(manifest.get("cells"), list):
        raise RunStateError(f"{path} is not a sweep manifest this editscale version reads")
    return manifest


def _write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = out_dir / f".{SWEEP_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    os.replace(tmp, out_dir / SWEEP_FILE)


def check_cells(grid: Grid, out_dir: str | Path) -> dict[str, str]:
    """Before anything runs: each cell's directory state (``new``, ``resume``, ``complete``); a cell directory
    holding a run of another config (or a sweep manifest naming the cell with another config) is a one-line
    ``RunStateError``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunStateError(f"--out {out} is a file, not a sweep directory")
    if out.is_dir() and not is_sweep_dir(out) and (out / DB_FILE).is_file():
        raise RunStateError(f"{out} is a run directory, not a sweep directory; choose another --out")
    old = {c["name"]: stored_config_hash(c.get("config") or {}, c.get("config_sha256", ""),
                                         f"cell {c['name']} of {out / SWEEP_FILE}")
           for c in read_manifest(out)["cells"]} if is_sweep_dir(out) else {}
    states = {}
    for cell in grid.cells:
        sha = config_hash(cell.config.to_dict())
        if cell.name in old and old[cell.name] != sha:
            raise RunStateError(f"{out} holds a sweep whose cell {cell.name} has another config; choose another "
                                "--out, or give the grid that sweep ran")
        states[cell.name] = run_state(out / cell.name, cell.config.to_dict())
    return states


@dataclass
class CellStatus:
    name: str
    state: str  # done, running, failed, interrupted, pending
    edits: int  # edits stored so far
    total: int
    error: str | None = None


def cell_status(out_dir: str | Path, name: str, total: int, failures: dict[str, str] | None = None) -> CellStatus:
    """A cell's state now, from its directory: ``done`` (complete), ``running`` (a process holds its lock),
    ``failed`` (the sweep gave up on it), ``interrupted`` (results, not complete), ``pending`` (nothing yet)."""
    from editscale.experiment.store import RunStore

    run_dir = Path(out_dir) / name
    edits, status = 0, None
    if (run_dir / DB_FILE).is_file():
        try:
            with RunStore.in_dir(run_dir, readonly=True) as store:
                status, edits = store.meta().get("status"), store.n_edits_done()
        except Exception:  # noqa: BLE001 - a store being set up or written at this moment: ask again later
            status = "running"
    try:
        check_free(run_dir)
        locked = False
    except RunInUseError:
        locked = True
    error = (failures or {}).get(name)
    if status == "complete":
        state = "done"
    elif locked:
        state = "running"
    elif error is not None:
        state = "failed"
    else:
        state = "interrupted" if status is not None else "pending"
    return CellStatus(name, state, edits, total, error)


def sweep_status(out_dir: str | Path) -> list[CellStatus]:
    """Every cell of the sweep in ``out_dir`` with its state and edits done."""
    manifest = read_manifest(out_dir)
    failures = manifest.get("failures", {})
    return [cell_status(out_dir, c["name"], c["config"]["edits"], failures) for c in manifest["cells"]]


def status_line(statuses: list[CellStatus]) -> str:
    """``cells: 3/8 done, 2 running (rome_seed-1 at edit 37/100, ...), 1 failed, 2 pending``."""
    by: dict[str, list[CellStatus]] = {}
    for s in statuses:
        by.setdefault(s.state, []).append(s)
    parts = [f"cells: {len(by.get('done', []))}/{len(statuses)} done"]
    if running := by.get("running"):
        parts.append(f"{len(running)} running (" + ", ".join(f"{s.name} at edit {s.edits}/{s.total}"
                                                               for s in running) + ")")
    for state in ("failed", "interrupted", "pending"):
        if by.get(state):
            parts.append(f"{len(by[state])} {state}")
    return ", ".join(parts)
