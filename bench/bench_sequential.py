"""Where the time of a sequential run goes, and what measuring the guard's generation entropy less often wins.

Runs ``--edits`` sequential edits (re-checks every ``--forget-every`` updates, the downstream panel every
``--downstream-every``, the guard on, checkpoints on) and prints each part's share of the wall time: the
method computing the edits (its target optimisation and solve), scoring each new edit, the guard's generation
entropy (``entropy_tokens`` sampled tokens after a few prompts: that many forward passes, each reading every
weight), the guard's neighbourhood probe, the re-checks, the downstream panel, checkpoints, and the rest
(loading, statistics, distances).

With ``--entropy-every K`` the same run is made a second time with ``guard.entropy_every: K`` (the entropy
measured every K-th update and whenever another guard rule fires) and the figure is the ratio of the two wall
times, measured in one process, one after the other; both runs must give identical edits, re-checks and
distances (checked).

    python bench/bench_sequential.py [--model testbed:demo --data testbed:demo] [--method rome] [--edits 1000]
        [--set KEY=VALUE ...] [--forget-every 10] [--downstream-every 50] [--entropy-every K] [--threads N]

On SmolLM2 (one thread, ENCORE as in examples/smollm2_1000.yaml):

    python bench/bench_sequential.py --model smollm2-135m --data counterfact-val --method encore \\
        --set mom2_corpus=wikitext-2-valid --edits 10 --downstream-every 10 --entropy-every 10 --threads 1 \\
        --metrics efficacy,efficacy_correct,paraphrase,neighborhood,efficacy_magnitude,neighborhood_magnitude
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from editscale.experiment import runner as runner_mod
from editscale.experiment.runner import run_experiment
from editscale.experiment.store import RunStore
from editscale.names import resolve_model_path

COMPARED = ("SELECT * FROM edits ORDER BY edit_idx", "SELECT * FROM distances ORDER BY update_idx, param",
            "SELECT update_idx, n_correct, n_forgotten FROM rechecks ORDER BY update_idx")


class Timers:
    """Seconds spent in some of the runner's pieces, by wrapping them for the duration of the bench."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.in_step = False

    def wrap(self, owner, attr: str, label: str, steps_only: bool = False) -> None:
        """Time ``owner.attr`` under ``label``; ``steps_only``: only its calls inside an update (the
        baseline's measurements of the unedited model belong to the rest)."""
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                if self.in_step or not steps_only:
                    self.seconds[label] += time.perf_counter() - t0

        setattr(owner, attr, timed)

    def install(self) -> None:
        run = runner_mod._Run
        step = run.step

        def in_step(run_self, u):
            self.in_step = True
            try:
                return step(run_self, u)
            finally:
                self.in_step = False

        run.step = in_step
        self.wrap(run, "_entropy", "guard: generation entropy", steps_only=True)
        self.wrap(run, "_probe_neighborhood", "guard: neighbourhood probe", steps_only=True)
        self.wrap(run, "_checkpoint", "checkpoints")
        evaluator = runner_mod._downstream_evaluator

        def timed_evaluator(*args, **kwargs):
            evaluate = evaluator(*args, **kwargs)

            def timed():
                t0 = time.perf_counter()
                try:
                    return evaluate()
                finally:
                    self.seconds["downstream panel"] += time.perf_counter() - t0
            return timed

        runner_mod._downstream_evaluator = timed_evaluator


def one_run(cfg: dict, out: Path) -> tuple[float, dict[str, float], list]:
    timers = Timers()
    saved = (runner_mod._Run.step, runner_mod._Run._entropy, runner_mod._Run._probe_neighborhood,
             runner_mod._Run._checkpoint, runner_mod._downstream_evaluator)
    timers.install()
    try:
        t0 = time.perf_counter()
        run_experiment(cfg, out, progress=False)
        wall = time.perf_counter() - t0
    finally:
        (runner_mod._Run.step, runner_mod._Run._entropy, runner_mod._Run._probe_neighborhood,
         runner_mod._Run._checkpoint, runner_mod._downstream_evaluator) = saved
    with RunStore.in_dir(out) as store:
        steps, method = store.rows("SELECT SUM(seconds), SUM(compute_seconds) FROM updates")[0]
        rechecks = store.rows("SELECT SUM(seconds) FROM rechecks")[0][0] or 0.0
        results = [store.rows(q) for q in COMPARED]
    t = dict(timers.seconds)
    parts = {"the method computing the edits": method}
    guard = t.get("guard: generation entropy", 0.0) + t.get("guard: neighbourhood probe", 0.0)
    parts["scoring each new edit, distances"] = steps - method - guard
    parts.update({k: t.get(k, 0.0) for k in ("guard: generation entropy", "guard: neighbourhood probe")})
    parts["re-checks"] = rechecks
    parts.update({k: t.get(k, 0.0) for k in ("downstream panel", "checkpoints")})
    parts["the rest (loading, statistics, baseline)"] = wall - sum(parts.values())
    return wall, parts, results


def print_parts(title: str, wall: float, parts: dict[str, float], edits: int) -> None:
    print(f"{title}: {wall:.1f} s wall, {wall / edits:.2f} s per edit")
    for name, s in parts.items():
        print(f"  {name:42s} {s:8.1f} s  {100 * s / wall:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--method", default="rome")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a method hyperparameter (VALUE in YAML); repeatable")
    ap.add_argument("--metrics", default=None,
                    help="per-edit metrics, comma-separated (default: the run config's, which sample texts for the "
                         "generation metrics; the SmolLM2 grid scores six: see its file)")
    ap.add_argument("--forget-every", type=int, default=10)
    ap.add_argument("--downstream-every", type=int, default=50)
    ap.add_argument("--entropy-every", type=int, default=None,
                    help="also run with guard.entropy_every K and print the ratio of the wall times")
    ap.add_argument("--model", default="testbed:demo")
    ap.add_argument("--data", default="testbed:demo")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the run directories (default: temporary)")
    args = ap.parse_args()

    hparams = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        hparams[key.strip()] = yaml.safe_load(value)
    resolve_model_path(args.model)  # a testbed is built (a GGUF converted) outside the timed part
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-sequential-"))
    cfg = {"model": args.model, "method": {"name": args.method, "hparams": hparams}, "data": args.data,
           "edits": args.edits, "batch": 1, "forget_every": args.forget_every,
           "downstream_every": args.downstream_every, "seed": 0, "threads": args.threads}
    if args.metrics:
        cfg["metrics"] = [m.strip() for m in args.metrics.split(",") if m.strip()]
    wall, parts, results = one_run(cfg, out / "entropy-every-1")
    print(f"{args.edits} sequential {args.method} edits of {args.model} ({args.data}), re-checks every "
          f"{args.forget_every}, downstream every {args.downstream_every}; torch threads: "
          f"{torch.get_num_threads()}; run directories under {out}")
    print_parts("guard entropy after every update", wall, parts, args.edits)
    if args.entropy_every:
        k = args.entropy_every
        wall_k, parts_k, results_k = one_run({**cfg, "guard": {"entropy_every": k}}, out / f"entropy-every-{k}")
        print_parts(f"guard entropy every {k} updates", wall_k, parts_k, args.edits)
        same = results_k == results
        print(f"edits, distances and re-checks identical: {'yes' if same else 'NO'}")
        rest = "the rest (loading, statistics, baseline)"
        loop, loop_k = wall - parts[rest], wall_k - parts_k[rest]
        print(f"ratio, time of the editing loop (wall less loading) with the entropy every update over every "
              f"{k}: {loop / loop_k:.2f}x  (wall times: {wall / wall_k:.2f}x)")


if __name__ == "__main__":
    main()
