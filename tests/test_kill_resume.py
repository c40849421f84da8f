"""SIGKILL at a seeded moment of a run, its setup and its report included: each killed run, started again with
the same commands, must end with per-edit results identical to an uninterrupted run's (one kill per phase here;
the check the benchmark folder once held).

The pipeline is the one a user runs: ``editscale run CONFIG --out RUN`` then ``editscale report RUN``. An
uninterrupted run gives the reference and the length of each phase: setup (until the first update is stored),
editing (until the run ends) and report. Each kill falls at a random moment of one phase (the phases in turn,
so setup and report are hit too); the whole process group is killed with SIGKILL. Then the same two commands
run again, unchanged: ``run --out`` onto the killed run continues it (same config), onto nothing starts it.
Compared: every per-edit, per-update, per-matrix, re-check, downstream and event row (timings left out), and
that the report was written. """

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMPARED = {
    "edits": "SELECT * FROM edits ORDER BY edit_idx",
    "distances": "SELECT * FROM distances ORDER BY update_idx, param",
    "rechecks": "SELECT update_idx, n_edits, n_correct, n_forgotten, forgotten, n_checked_prob, n_forgotten_prob, "
                "forgotten_prob FROM rechecks ORDER BY update_idx",
    "recheck_items": "SELECT * FROM recheck_items ORDER BY update_idx, edit_idx",
    "downstream": "SELECT * FROM downstream ORDER BY update_idx, task, metric",
    "events": "SELECT update_idx, edit_idx, kind, rule, value, threshold FROM events ORDER BY id",
    "updates": "SELECT update_idx, n_edits, entropy, probe_neighborhood, refused FROM updates ORDER BY update_idx",
}
PHASES = ("setup", "editing", "report")


def results(run_dir: Path) -> dict[str, list]:
    con = sqlite3.connect(f"{(run_dir / 'results.sqlite').resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {k: con.execute(q).fetchall() for k, q in COMPARED.items()}
    finally:
        con.close()


def n_updates(run_dir: Path) -> int:
    db = run_dir / "results.sqlite"
    if not db.is_file():
        return 0
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=0.1)
        try:
            return con.execute("SELECT COUNT(*) FROM updates").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "editscale.cli", "--threads", "1", *args]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "EDITSCALE_PROGRESS": "0"}
    return subprocess.Popen(command(args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def pipeline(config: Path, run_dir: Path, kill: tuple[str, float] | None = None) -> dict:
    """Run the two commands; with ``kill=(phase, fraction)``, SIGKILL the process group at that fraction of
    the phase's reference length (``REF`` holds them). Returns the phase times and whether a kill happened."""
    t0 = time.monotonic()
    times: dict[str, float] = {}
    killed = False
    proc = start(["run", str(config), "--out", str(run_dir)])
    at = None
    if kill is not None and kill[0] in ("setup", "editing"):
        at = REF["setup"] * kill[1] if kill[0] == "setup" else REF["setup"] + REF["editing"] * kill[1]
    while proc.poll() is None:
        now = time.monotonic() - t0
        if "setup" not in times and n_updates(run_dir) > 0:
            times["setup"] = now
        if at is not None and now >= at:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"killed": True, "at": now}
        time.sleep(0.02)
    if proc.returncode != 0:
        raise AssertionError(f"editscale run failed: {proc.stderr.read()}")
    t_run = time.monotonic() - t0
    times.setdefault("setup", t_run)
    times["editing"] = t_run - times["setup"]
    proc = start(["report", str(run_dir)])
    t1 = time.monotonic()
    at = REF["report"] * kill[1] if kill is not None and kill[0] == "report" else None
    while proc.poll() is None:
        if at is not None and time.monotonic() - t1 >= at:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"killed": True, "at": t_run + time.monotonic() - t1}
        time.sleep(0.02)
    if proc.returncode != 0:
        raise AssertionError(f"editscale report failed: {proc.stderr.read()}")
    times["report"] = time.monotonic() - t1
    return {"killed": killed, "times": times}


REF: dict[str, float] = {}


@pytest.fixture(scope="module")
def reference(tiny_testbed, tmp_path_factory):
    """An uninterrupted run and report of a small config; its phase lengths say where the kills fall."""
    work = tmp_path_factory.mktemp("kill-resume")
    config = work / "run.yaml"
    config.write_text(f"model: {tiny_testbed}\nmethod: rome\ndata: testbed:tiny\nedits: 8\nforget_every: 2\n"
                      "downstream_every: 4\ndownstream_n: 20\nthreads: 1\nseed: 0\n")
    ref = pipeline(config, work / "reference")
    REF.update(ref["times"])
    return config, results(work / "reference")


@pytest.mark.parametrize("phase", PHASES)
def test_a_run_killed_in_any_phase_resumes_identically(phase, reference, tmp_path):
    config, expected = reference
    fraction = random.Random(f"kill-{phase}").random()
    run_dir = tmp_path / "run"
    got = pipeline(config, run_dir, kill=(phase, fraction))
    assert got["killed"] or phase == "report", got
    pipeline(config, run_dir)  # the same commands again
    assert results(run_dir) == expected, f"killed in {phase} at {fraction:.0%} of it"
    assert (run_dir / "report" / "report.html").is_file()
