"""Faults in the middle of work (issue 25): storage that fills during a run, a checkpoint damaged on disk, a
report that cannot be written whole, and the leftovers of killed processes. Each ends in one line, leaves
nothing half-written, and a resumed run ends identical to an uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys

import pytest
from test_experiment_runner import config, dump, make_fixture

from editscale.cache import clean_leftovers, leftover_prefix
from editscale.experiment import checkpoint as ckpt_module
from editscale.experiment.rundir import check_free, lock_path
from editscale.experiment.runner import run_experiment
from editscale.experiment.store import RunStore


@pytest.fixture(scope="module")
def fixture_files(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def reference(fixture_files, tmp_path_factory):
    """An uninterrupted run of the config the fault tests interrupt."""
    model_dir, data = fixture_files
    out = tmp_path_factory.mktemp("ref") / "run"
    run_experiment(config(model_dir, data, edits=20), out, progress=False)
    return dump(out)


def _cfg_file(fixture_files, tmp_path):
    model_dir, data = fixture_files
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config(model_dir, data, edits=20)))
    return path


@pytest.mark.parametrize("fault", ["checkpoint-enospc", "checkpoint-efbig", "database-full"])
def test_storage_filling_mid_run_is_one_line_and_resumes_identically(fault, fixture_files, reference, tmp_path,
                                                                       cli, monkeypatch):
    run_dir = tmp_path / "run"
    calls = {"n": 0}
    if fault.startswith("checkpoint"):
        real = ckpt_module.save_file
        code = errno.ENOSPC if fault.endswith("enospc") else errno.EFBIG

        def failing(tensors, path, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4:  # the second checkpoint's first file, half written
                with open(path, "wb") as f:
                    f.write(b"\0" * 100)
                raise OSError(code, os.strerror(code), path)
            return real(tensors, path, *args, **kwargs)

        monkeypatch.setattr(ckpt_module, "save_file", failing)
    else:
        real = RunStore.record_update

        def failing(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 12:
                raise sqlite3.OperationalError("database or disk is full")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(RunStore, "record_update", failing)
    code, _, err = cli("run", str(_cfg_file(fixture_files, tmp_path)), "--out", str(run_dir))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert ("full" in lines[-1]) if fault != "checkpoint-efbig" else ("file-size limit" in lines[-1])
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]  # no half checkpoint
    monkeypatch.undo()  # space freed
    code, _, err = cli("run", "--resume", str(run_dir), "--json")
    assert code == 0, err
    assert dump(run_dir) == reference


class _Killed(BaseException):
    """Stands for a kill: nothing after the point it is raised at is written."""


def test_a_damaged_checkpoint_resumes_from_the_one_before(fixture_files, reference, tmp_path, cli, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = _cfg_file(fixture_files, tmp_path)
    real = RunStore.record_checkpoint

    def record(self, update_idx, *args, **kwargs):
        real(self, update_idx, *args, **kwargs)
        if update_idx == 15:
            raise _Killed

    monkeypatch.setattr(RunStore, "record_checkpoint", record)
    with pytest.raises(_Killed):
        run_experiment(cfg, run_dir, progress=False)
    monkeypatch.undo()
    with RunStore.in_dir(run_dir) as store:
        kept = store.checkpoints()
    assert [c[0] for c in kept] == [10, 15]  # the latest and the one before
    assert {"update_000010", "update_000015"} <= {p.name for p in (run_dir / "checkpoints").iterdir()}
    latest = run_dir / kept[-1][2] / "delta.safetensors"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated on disk
    code, _, err = cli("run", "--resume", str(run_dir), "--json")
    assert code == 0, err
    assert "damaged" in err and "resuming from the checkpoint before it" in err
    assert dump(run_dir) == reference


def test_a_report_that_cannot_be_written_whole_leaves_nothing(fixture_files, tmp_path, cli, monkeypatch):
    model_dir, data = fixture_files
    run_experiment(config(model_dir, data, edits=6), tmp_path / "run", progress=False)
    from editscale.report import html

    def full(*args, **kwargs):
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(html, "_page", full)  # the plots are written, then the page fails
    code, _, err = cli("report", str(tmp_path / "run"), "--out", str(tmp_path / "rep"))
    assert code == 1 and "file-size limit" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no report folder, no temporary one
    monkeypatch.undo()
    code, out, err = cli("report", str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "--markdown")
    assert code == 0, err
    assert (tmp_path / "rep" / "report.html").is_file() and "| run | method |" in out
    code, _, err = cli("report", str(tmp_path / "run"), "--out", str(tmp_path / "rep"))  # its own output again
    assert code == 0, err


def test_leftovers_of_killed_processes_are_cleaned(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".editscale-probe-{dead.pid}-x1", tmp_path / f".model.saving-{dead.pid}-x2",
             tmp_path / f".rep.writing-{dead.pid}-x3"]
    stale[0].write_text("")
    stale[1].mkdir()
    (stale[1] / "model.safetensors").write_text("half")
    stale[2].mkdir()
    live = tmp_path / (leftover_prefix("model", "saving") + "x4")  # this process's own: kept
    live.mkdir()
    mine = tmp_path / ".model.saving-notes"  # not a leftover's name: kept
    mine.write_text("")
    assert sorted(clean_leftovers(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, mine.name])


def test_a_stale_run_lock_is_removed(fixture_files, tmp_path):
    model_dir, data = fixture_files
    run_dir = tmp_path / "run"
    run_experiment(config(model_dir, data, edits=3), run_dir, progress=False)
    lock_path(run_dir).write_text("999999\n")  # a killed run's lock, held by nobody
    check_free(run_dir)  # what resume and the sweep's status ask first
    assert not lock_path(run_dir).exists()
