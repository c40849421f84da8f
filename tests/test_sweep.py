"""Sweeps: grid files expand into validated cells, the cells run (in-process, or as Ray tasks), a crashed cell
is retried from its last checkpoint, and a sweep killed part-way and run again ends with the per-edit results
of an uninterrupted one. Tiny runs on testbed:tiny: 2 methods x 2 seeds x 6 edits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from edit_helpers import small
from test_experiment_runner import COMPARED

from editscale.errors import ConfigError, RunInUseError, RunStateError
from editscale.experiment.grid import parse_grid
from editscale.experiment.rundir import check_free, config_hash
from editscale.experiment.store import RunStore
from editscale.experiment.sweep import run_sweep
from editscale.experiment.sweep_status import SWEEP_FILE, read_manifest, status_line, sweep_status

CELLS = ["rome_seed-0", "rome_seed-1", "ft-l_seed-0", "ft-l_seed-1"]


def grid_dict(**base) -> dict:
    return {"model": "testbed:tiny", "data": "testbed:tiny", "edits": 6, "forget_every": 2,
            "guard": {"entropy_prompts": 1, "entropy_tokens": 5, "probe_cases": 2}, **base,
            "grid": {"method": [{"name": "rome", "hparams": small("rome", context_lengths=[[3, 2]])},
                                {"name": "ft-l", "hparams": small("ft-l")}],
                     "seed": [0, 1]}}


def dump(run_dir: Path) -> dict[str, list]:
    with RunStore.in_dir(run_dir, readonly=True) as store:
        return {k: store.rows(q) for k, q in COMPARED.items()}


def dumps(out: Path) -> dict[str, dict[str, list]]:
    return {c: dump(out / c) for c in CELLS}


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory, tiny_testbed) -> Path:
    path = tmp_path_factory.mktemp("grid") / "grid.yaml"
    path.write_text(yaml.safe_dump(grid_dict()))
    return path


@pytest.fixture(scope="module")
def reference_dir(grid_file, tmp_path_factory) -> Path:
    """The uninterrupted sweep, in-process."""
    out = tmp_path_factory.mktemp("reference") / "sweep"
    result = run_sweep(grid_file, out, backend="local", progress=False, say=None)
    assert [s.state for s in result.statuses] == ["done"] * 4 and not result.failed
    return out


@pytest.fixture(scope="module")
def reference(reference_dir) -> dict[str, dict[str, list]]:
    return dumps(reference_dir)


def test_grid_expands_into_cells_validated_as_run_configs():
    g = parse_grid(grid_dict(), "g.yaml")
    assert [c.name for c in g.cells] == CELLS
    assert [c.group for c in g.cells] == ["rome", "rome", "ft-l", "ft-l"]
    assert {c.config.threads for c in g.cells} == {1} and [c.config.seed for c in g.cells] == [0, 1, 0, 1]
    assert g.cells[2].config.method.hparams == small("ft-l")
    # dotted keys reach inside a field; a method given by name becomes {name: ...}
    g = parse_grid({"model": "m", "data": "d", "edits": 3, "method": "rome", "threads": 2,
                    "grid": {"method.hparams.layer": [0, 1], "guard.revert": [True]}}, "g.yaml")
    assert [c.name for c in g.cells] == ["layer-0_revert-true", "layer-1_revert-true"]
    assert g.cells[1].config.method.hparams == {"layer": 1} and g.cells[0].config.guard.revert
    assert g.cells[0].threads == 2
    # two entries of one method: the hparams' hash tells them apart
    g = parse_grid({"model": "m", "data": "d", "edits": 3, "grid": {"method": [
        {"name": "rome", "hparams": {"layer": 0}}, {"name": "rome", "hparams": {"layer": 1}}]}}, "g.yaml")
    names = [c.name for c in g.cells]
    assert len(set(names)) == 2 and all(n.startswith("rome-") for n in names)


@pytest.mark.parametrize("grid,message", [
    ({}, "has no 'grid:'"),
    ({"grid": {"sed": [1]}}, "grid key 'sed': 'sed' is not a run config field"),
    ({"grid": {"seed": 3}}, "grid key 'seed' must be a non-empty list"),
    ({"grid": {"seed": []}}, "grid key 'seed' must be a non-empty list"),
    ({"grid": {"seed": [1, 1]}}, "grid key 'seed' lists 1 twice"),
    ({"seed": 0, "grid": {"seed": [1]}}, "grid key 'seed' is also set outside 'grid:'"),
    ({"grid": {"forget_every": [2, 0]}}, "cell forget_every-0 field 'forget_every': Input should be greater"),
    ({"grid": {"method": ["rome", "nope"]}}, "cell nope field 'method.name': unknown method 'nope'"),
    ({"grid": {"seed": [0]}, "sweep": {"retries": -1}}, "sweep field 'retries'"),
    ({"grid": {"seed": [0]}, "sweep": {"cpus": 2}}, "sweep has an unknown field 'cpus'"),
])
def test_bad_grid_is_one_line_before_anything_runs(grid, message, tmp_path, cli):
    data = {"model": "testbed:tiny", "data": "testbed:tiny", "edits": 4, **grid}
    if "method" not in data.get("grid", {}):
        data["method"] = "rome"
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="^" + str(path)):
        parse_grid(yaml.safe_load(path.read_text()), str(path))
    code, _out, err = cli("sweep", path, "--out", tmp_path / "sweep", "--local")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "sweep").exists()


def test_local_sweep_retries_a_crashed_cell_from_its_checkpoint_and_reruns_skip(grid_file, reference, tmp_path,
                                                                                 monkeypatch, cli):
    """Without Ray: the cells one after another in-process. A cell that crashes at update 5 is retried from
    its checkpoint at update 4; a sweep interrupted in a cell resumes it; a complete sweep runs nothing."""
    from editscale.experiment import runner

    step, crashes = runner._Run.step, []

    def crash_once(self, u):
        if u == 5 and self.cfg.method.name == "ft-l" and self.cfg.seed == 0 and not crashes:
            crashes.append(u)
            raise RuntimeError("simulated crash")
        return step(self, u)

    def interrupt(self, u):
        if u == 3 and self.cfg.method.name == "ft-l" and self.cfg.seed == 1:
            raise KeyboardInterrupt
        return crash_once(self, u)

    from editscale.experiment import sweep

    lines: list[str] = []
    out = tmp_path / "sweep"
    monkeypatch.setattr(runner._Run, "step", interrupt)
    monkeypatch.setattr(sweep, "ray_available", lambda: False)  # as without the ray extra
    with pytest.raises(ConfigError, match="--address needs Ray"):
        run_sweep(grid_file, out, address="head:6379", say=None)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid_file, out, backend="auto", progress=False, say=lines.append)
    assert lines[0] == ("Ray is not installed: running the 4 cells one after another in this process "
                        "(pip install 'editscale[ray]' runs them in parallel)")
    monkeypatch.undo()  # the real step, and Ray as installed
    assert crashes == [5] and any("ft-l_seed-0 failed (RuntimeError: simulated crash); retrying" in x for x in lines)
    states = {s.name: (s.state, s.edits) for s in sweep_status(out)}
    assert states == {"rome_seed-0": ("done", 6), "rome_seed-1": ("done", 6), "ft-l_seed-0": ("done", 6),
                      "ft-l_seed-1": ("interrupted", 2)}
    code, _, err = cli("sweep", grid_file, "--out", out, "--local")
    assert code == 0, err
    assert "3 of 4 cells are complete; 1 to resume, 0 to start" in err and "cells: 4/4 done" in err
    assert dumps(out) == reference
    manifest = read_manifest(out)
    assert [c["name"] for c in manifest["cells"]] == CELLS and manifest["failures"] == {}
    code, _stdout, err = cli("sweep", grid_file, "--out", out, "--local")  # complete: nothing runs
    assert code == 0 and "4 of 4 cells are complete" in err
    # a manifest written before a config field existed (its default then applies) names the same cells
    manifest = json.loads((out / "sweep.json").read_text())
    for c in manifest["cells"]:
        del c["config"]["guard"]["entropy_every"]
        c["config_sha256"] = config_hash(c["config"])
    (out / "sweep.json").write_text(json.dumps(manifest))
    code, _stdout, err = cli("sweep", grid_file, "--out", out, "--local")
    assert code == 0 and "4 of 4 cells are complete" in err, err
    # another grid whose cell has another config under the same name is refused before anything runs
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(grid_dict(edits=7)))
    with pytest.raises(RunStateError, match="cell rome_seed-0 has another config"):
        run_sweep(other, out, backend="local", say=None)


def test_sweep_runs_only_the_cells_named(grid_file, reference, tmp_path, cli):
    """--cells runs the cells named (the manifest lists the whole grid); a later sweep runs the rest; an
    unknown name is one line naming the grid's cells, before anything runs."""
    out = tmp_path / "sweep"
    code, _, err = cli("sweep", grid_file, "--out", out, "--local", "--cells", "rome_seed-1")
    assert code == 0 and "cells: 1/1 done" in err, err
    assert {s.name: s.state for s in sweep_status(out)} == {"rome_seed-0": "pending", "rome_seed-1": "done",
                                                           "ft-l_seed-0": "pending", "ft-l_seed-1": "pending"}
    assert [c["name"] for c in read_manifest(out)["cells"]] == CELLS
    assert dump(out / "rome_seed-1") == reference["rome_seed-1"]
    code, _, err = cli("sweep", grid_file, "--out", out, "--local", "--cells", "rom_seed-1")
    assert code == 2 and err.strip() == (f"error: no cell 'rom_seed-1' in {grid_file}; its cells: rome_seed-0, "
                                         "rome_seed-1, ft-l_seed-0, ft-l_seed-1"), err
    code, _, err = cli("sweep", grid_file, "--out", out, "--local")
    assert code == 0 and "1 of 4 cells are complete; 0 to resume, 3 to start" in err, err
    assert dumps(out) == reference


def test_two_sweeps_share_an_out_dir(grid_file, reference, tmp_path, monkeypatch, cli):
    """Two sweeps of one grid on one --out at once, each with its cells (a core each): the second starts while
    the first runs a cell, skips that cell as running elsewhere (not failed, exit 0) and runs its other one;
    each sweep records its own cells' failures and keeps the other's."""
    from editscale.experiment import runner

    out = tmp_path / "sweep"
    step, second = runner._Run.step, []

    def start_a_second_sweep(self, u):
        if u == 3 and self.cfg.method.name == "rome" and self.cfg.seed == 1 and not second:
            second.append(cli("sweep", grid_file, "--out", out, "--local", "--cells", "rome_seed-1,ft-l_seed-0"))
            manifest = read_manifest(out)
            manifest["failures"] = {"ft-l_seed-1": "RuntimeError: an earlier sweep's"}
            (out / SWEEP_FILE).write_text(json.dumps(manifest))
        return step(self, u)

    monkeypatch.setattr(runner._Run, "step", start_a_second_sweep)
    first = run_sweep(grid_file, out, backend="local", progress=False, say=None, cells=["rome_seed-1"])
    assert [(s.name, s.state) for s in first.statuses] == [("rome_seed-1", "done")]
    code, _, err = second[0]
    assert code == 0, err
    assert f"cell rome_seed-1 skipped: {out / 'rome_seed-1'} is in use by another editscale process" in err
    assert "cells: 1/2 done, 1 running (rome_seed-1 at edit 2/6)" in err
    assert "1 cell(s) are running in another process: rome_seed-1" in err and "did not finish" not in err
    assert read_manifest(out)["failures"] == {"ft-l_seed-1": "RuntimeError: an earlier sweep's"}
    assert {c: dump(out / c) for c in ("rome_seed-1", "ft-l_seed-0")} == {
        c: reference[c] for c in ("rome_seed-1", "ft-l_seed-0")}


def test_status_line():
    from editscale.experiment.sweep_status import CellStatus

    line = status_line([CellStatus("a", "done", 6, 6), CellStatus("b", "running", 3, 6),
                        CellStatus("c", "failed", 2, 6, "RuntimeError: x"), CellStatus("d", "pending", 0, 6)])
    assert line == "cells: 1/4 done, 1 running (b at edit 3/6), 1 failed, 1 pending"


def _sweep_process(grid_file: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "EDITSCALE_PROGRESS": "0", "OMP_NUM_THREADS": "1", "EDITSCALE_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "editscale", "sweep", str(grid_file), "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own session: Ray's processes join it


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the session (Ray's workers have process groups of their own)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the state, ppid, pgrp: the session
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)


def _edits(run_dir: Path) -> int:
    try:
        with RunStore.in_dir(run_dir, readonly=True) as store:
            return 0 if store.meta().get("status") == "complete" else store.n_edits_done()
    except Exception:  # noqa: BLE001 - not there yet, or being set up
        return 0


def test_ray_sweep_killed_part_way_and_rerun_matches_uninterrupted(grid_file, reference, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    proc = _sweep_process(grid_file, out)
    deadline = time.monotonic() + 300
    while not any(_edits(out / c) >= 3 for c in CELLS):  # some cell part-way through (6 edits each)
        assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out waiting for a cell's edits"
        time.sleep(0.05)
    _kill_session(proc.pid)  # the driver, Ray's processes and the workers running cells
    proc.wait()
    for cell in CELLS:  # the killed workers' locks are gone with them
        for _ in range(100):
            try:
                check_free(out / cell)
                break
            except RunInUseError:
                time.sleep(0.1)
        check_free(out / cell)
    assert any(s.state != "done" for s in sweep_status(out))
    again = _sweep_process(grid_file, out)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "Ray (a local Ray started for this sweep)" in err and "cells: 4/4 done" in err
    assert "to resume" in err and " 0 to resume" not in err  # the killed cells continue from their checkpoints
    assert dumps(out) == reference
    assert json.loads((out / SWEEP_FILE).read_text())["failures"] == {}


def test_band_is_mean_min_max_over_the_series_measured_at_each_x():
    from editscale.report.sweep import band

    x, mean, lo, hi, n = band([(np.array([1, 2, 3]), np.array([0.0, 1.0, 2.0])),
                               (np.array([1, 2]), np.array([2.0, np.nan]))])
    assert x.tolist() == [1, 2, 3] and mean.tolist() == [1.0, 1.0, 2.0]
    assert lo.tolist() == [0.0, 1.0, 2.0] and hi.tolist() == [2.0, 1.0, 2.0] and n.tolist() == [2, 1, 1]


def test_report_of_a_sweep_averages_seeds_with_a_band_and_links_the_cells(reference_dir, tmp_path, cli):
    code, out, err = cli("report", reference_dir, "--out", tmp_path / "report", "--json")
    assert code == 0, err
    result = json.loads(out)
    page = Path(result["report"])
    assert {Path(p).name for p in result["plots"]} >= {"sweep_proficiency.png", "sweep_forgetting.png"}
    text = page.read_text()
    assert "band from their minimum to their maximum (min-max over seeds)" in text
    assert "<h3>rome</h3>" in text and "<h3>ft-l</h3>" in text and "<th>sd</th>" in text
    for cell in CELLS:  # every cell's own report, linked
        assert f'<a href="cells/{cell}/report.html">{cell}</a>' in text
        assert (tmp_path / "report" / "cells" / cell / "report.html").is_file()
    code, _, err = cli("report", reference_dir, reference_dir / "rome_seed-0", "--out", tmp_path / "r2")
    assert code == 2 and "a sweep directory is reported alone" in err
