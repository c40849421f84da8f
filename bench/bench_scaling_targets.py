"""The scaling curve (``editscale scaling``) with the target-vector cache against without it, in one run.

With the cache each record's target vector is optimised once for all sizes; without it, again for every size
that holds the record. Target optimisation dominates an edit, so the curve's cost tends to max(sizes) target
optimisations instead of sum(sizes): for sizes 1,10,30 about 41 / 30 = 1.37x faster (1,10,100,1000: 1.11x;
the cache matters more for dense sizes such as 1,2,...,30). The statistics are computed once before either
timed run (both read them from the same folder), so the figure compares the curves' own work.
Measured on testbed:tiny, memit, 1 thread, 2 cores busy with other jobs (load 6-9): 1.30-1.39x.

    python bench/bench_scaling_targets.py [--model testbed:tiny | DIR] [--data RECORDS] [--sizes 1,10,30]
        [--methods memit] [--threads N]

Prints both curves' seconds, the target optimisations each made, whether their scores agree, and the ratio last.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

os.environ.setdefault("EDITSCALE_PROGRESS", "0")


def main() -> None:
    from editscale.experiment.scaling import parse_sizes, scaling_curve
    from editscale.methods import targets
    from editscale.methods.context import EditContext
    from editscale.methods.editor import Editor
    from editscale.names import load_cases, load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="testbed:tiny", help="testbed:NAME or a model directory")
    ap.add_argument("--data", default=None, help="records (default: the model's world.jsonl, or --model's testbed)")
    ap.add_argument("--sizes", default="1,10,30")
    ap.add_argument("--methods", default="memit", help="comma-separated methods")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = parse_sizes(args.sizes)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    model, tok, _ = load_model(args.model)
    data = args.data or (args.model if args.model.startswith("testbed:") else os.path.join(args.model, "world.jsonl"))
    cases = load_cases(data)

    optimised = [0]
    real = targets._optimize_chunk

    def counting(ctx, items, *rest):
        optimised[0] += len(items)
        return real(ctx, items, *rest)

    targets._optimize_chunk = counting
    with tempfile.TemporaryDirectory(prefix="bench-scaling-stats-") as stats:
        ctx = EditContext(model, tok, stats_cache=stats, seed=args.seed, progress=False)
        for m in methods:  # statistics (and anything else prepared) on disk before either timed run
            Editor(model, tok, m, context=ctx).prepare()
        runs = {}
        for cached in (False, True):
            optimised[0] = 0
            t = time.perf_counter()
            result = scaling_curve(model, tok, cases, sizes, methods, seed=args.seed, cache_targets=cached,
                                   stats_cache=stats, progress=False)
            runs[cached] = (time.perf_counter() - t, optimised[0], result)
    targets._optimize_chunk = real

    (t_plain, n_plain, plain), (t_cached, n_cached, cached) = runs[False], runs[True]
    diff = max(abs(a.metrics[k].mean - b.metrics[k].mean) for a, b in zip(plain.points, cached.points)
               for k in a.metrics if a.metrics[k].mean == a.metrics[k].mean)
    print(f"model: {args.model}; data: {data}; methods: {', '.join(methods)}; sizes: {sizes}; "
          f"threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"without the cache: {t_plain:.2f} s, {n_plain} target optimisations")
    print(f"with the cache:    {t_cached:.2f} s, {n_cached} target optimisations "
          f"(the optimisations' ratio: {n_plain / n_cached:.2f}x)")
    print(f"largest difference of a mean score between the runs: {diff:.3g}")
    print(f"curve speed-up, cache vs no cache: {t_plain / t_cached:.2f}x")


if __name__ == "__main__":
    main()
