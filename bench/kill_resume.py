"""SIGKILL at random moments of a run, its setup and its report included: each killed run, started again with
the same commands, must end with per-edit results identical to an uninterrupted run's.

    python bench/kill_resume.py [--kills 10] [--edits 20] [--method rome] [--model testbed:tiny] [--seed N]
                                [--dir DIR]

The pipeline is the one a user runs: ``editscale run CONFIG --out RUN`` then ``editscale report RUN``. An
uninterrupted run gives the reference and the length of each phase: setup (until the first update is stored),
editing (until the run ends) and report. Each kill falls at a random moment of one phase (the phases in turn,
so setup and report are hit too); the whole process group is killed with SIGKILL. Then the same two commands
run again, unchanged: ``run --out`` onto the killed run continues it (same config), onto nothing starts it.
Compared: every per-edit, per-update, per-matrix, re-check, downstream and event row (timings left out), and
that the report was written. The last line is the figure: how many of the kills resumed identically.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
        raise SystemExit(f"editscale run failed: {proc.stderr.read()}")
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
        raise SystemExit(f"editscale report failed: {proc.stderr.read()}")
    times["report"] = time.monotonic() - t1
    return {"killed": killed, "times": times}


REF: dict[str, float] = {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--method", default="rome")
    ap.add_argument("--model", default="testbed:tiny")
    ap.add_argument("--seed", type=int, default=None, help="seed of the kill moments (default: random)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = args.dir or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "run.yaml"
    data = args.model if args.model.startswith("testbed:") else "testbed:tiny"
    config.write_text(f"model: {args.model}\nmethod: {args.method}\ndata: {data}\nedits: {args.edits}\n"
                      "forget_every: 5\ndownstream_every: 10\ndownstream_n: 20\nthreads: 1\nseed: 0\n")
    print(f"work folder {work}; kill seed {seed}; load average {os.getloadavg()}", flush=True)
    t0 = time.monotonic()
    ref = pipeline(config, work / "reference")
    REF.update(ref["times"])
    expected = results(work / "reference")
    print(f"reference: {time.monotonic() - t0:.0f} s (setup {REF['setup']:.1f} s, editing {REF['editing']:.1f} s, "
          f"report {REF['report']:.1f} s), {len(expected['edits'])} edits", flush=True)
    same = 0
    for k in range(args.kills):
        phase, fraction = PHASES[k % len(PHASES)], rng.random()
        run_dir = work / f"kill{k:02d}"
        got = pipeline(config, run_dir, kill=(phase, fraction))
        state = "run directory" if (run_dir / "results.sqlite").is_file() else "no run directory"
        pipeline(config, run_dir)  # the same commands again
        ok = results(run_dir) == expected and (run_dir / "report" / "report.html").is_file()
        same += ok
        print(f"kill {k + 1}: {phase} at {got.get('at', float('nan')):.2f} s ({fraction:.0%} of the phase), left "
              f"{state}; resumed {'identical' if ok else 'DIFFERENT'}", flush=True)
    print(f"{same}/{args.kills} killed runs resumed to per-edit results identical to the uninterrupted run "
          f"({args.method} on {args.model}, {args.edits} edits, 1 thread; load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
