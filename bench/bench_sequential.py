"""1,000 sequential ROME edits on testbed:demo with re-checks every 10 updates (and downstream skills every
50, as the issue's smallest config): how long the whole run takes, against the issue's 20-minute target.

    python bench/bench_sequential.py [--edits 1000] [--method rome] [--out DIR] [--downstream-every 50]
                                     [--model testbed:demo --data testbed:demo] [--threads N]

Prints a breakdown (the method's computing, scoring each new edit with distances and the guard, re-checks,
the rest: downstream, checkpoints, loading), the run's summary, and last the figure: minutes for the run and
its ratio to 20.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from editscale.experiment.runner import run_experiment
from editscale.experiment.store import RunStore
from editscale.names import resolve_model_path

TARGET_MINUTES = 20.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--method", default="rome")
    ap.add_argument("--forget-every", type=int, default=10)
    ap.add_argument("--downstream-every", type=int, default=50)
    ap.add_argument("--model", default="testbed:demo")
    ap.add_argument("--data", default="testbed:demo")
    ap.add_argument("--unique", choices=("subject", "fact"), default="subject",
                    help="never edit a subject twice (the paper), or only never a fact twice")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    args = ap.parse_args()

    resolve_model_path(args.model)  # a testbed is built outside the timed part
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-sequential-")) / "run"
    cfg = {"model": args.model, "method": args.method, "data": args.data, "edits": args.edits, "batch": 1,
           "forget_every": args.forget_every, "downstream_every": args.downstream_every, "seed": 0,
           "unique": args.unique, "threads": args.threads}
    t0 = time.perf_counter()
    summary = run_experiment(cfg, out)
    wall = time.perf_counter() - t0
    with RunStore.in_dir(out) as store:
        editing, method = store.rows("SELECT SUM(seconds), SUM(compute_seconds) FROM updates")[0]
        rechecks, n_rechecks = store.rows("SELECT SUM(seconds), COUNT(*) FROM rechecks")[0]
    print(f"run directory: {out} (torch threads: {torch.get_num_threads()})")
    print(f"summary: {json.dumps(summary)}")
    print(f"the method computing the edits:      {method:7.1f} s  ({1000 * method / args.edits:.0f} ms per edit)")
    print(f"scoring new edits, distances, guard: {editing - method:7.1f} s")
    print(f"re-checks ({n_rechecks}):               {rechecks:7.1f} s")
    print(f"downstream, checkpoints, loading:    {wall - editing - rechecks:7.1f} s")
    minutes = wall / 60
    print(f"{args.edits} sequential {args.method} edits, re-checks every {args.forget_every}: "
          f"{minutes:.1f} min ({1000 * wall / args.edits:.0f} ms per edit); "
          f"ratio to the {TARGET_MINUTES:.0f}-minute target: {minutes / TARGET_MINUTES:.2f}")


if __name__ == "__main__":
    main()
