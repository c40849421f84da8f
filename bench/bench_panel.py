"""Where the general-ability panel's time goes, and what computing the LM head only where it is read saves.

    python bench/bench_panel.py --model smollm2-135m [--tasks perplexity,known-facts,sst2] [--n 400]
                                [--threads 1] [--repeat 2]

The panel is prepared as the sequential runner prepares it (``prepare_panel`` on the unedited model, ``--n``
examples a task, seed 0). Each task is then timed on its own, ``--repeat`` times (the median is printed).
The few-shot tasks (SST-2, GLUE, a testbed's skills) read one position's logits per example, and the prefix
they share fills a key/value cache whose logits nobody reads: editscale asks the model's forward for those
positions only (``logits_to_keep``). For those tasks the bench also times the same evaluation with the head
applied at every position (as before that change), checks that both give the same log-probabilities, and
prints the ratio. ``--model`` left out: testbed:tiny, whose small vocabulary makes the head cheap; name a real model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_model_options, model_from_options


def _testbed_tiny():
    from editscale.names import load_model

    model, tok, _ = load_model("testbed:tiny")
    return model, tok


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap)
    ap.add_argument("--tasks", default="perplexity,known-facts,sst2", help="the panel's tasks (the runner's names)")
    ap.add_argument("--n", type=int, default=400, help="examples a task (the grid's downstream_n)")
    ap.add_argument("--repeat", type=int, default=2, help="timed evaluations of each task (median printed)")
    args = ap.parse_args()
    from editscale.eval import scoring
    from editscale.eval.downstream import prepare_panel

    model, tok, name = model_from_options(args, _testbed_tiny, "testbed:tiny")
    model.eval()
    model_dir = getattr(tok, "name_or_path", None)
    t0 = time.perf_counter()
    panel = prepare_panel(args.tasks, model, tok, n=args.n, model_dir=model_dir if model_dir else None)
    print(f"{name}: panel {args.tasks}, n={args.n}, prepared in {time.perf_counter() - t0:.1f} s; "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}", flush=True)
    total = 0.0
    for probe in panel.probes:
        sec, _ = timed(lambda probe=probe: probe.evaluate(model), args.repeat)
        total += sec
        print(f"  {probe.name:12s} {sec:7.2f} s", flush=True)
    if panel.suite is not None:
        suite = panel.suite
        sec, kept = timed(lambda: suite.label_logprobs(model), args.repeat)
        original = scoring._takes_logits_to_keep
        scoring._takes_logits_to_keep = lambda m: False  # the head at every position
        try:
            full_sec, full = timed(lambda: suite.label_logprobs(model), args.repeat)
        finally:
            scoring._takes_logits_to_keep = original
        diff = max((kept[t] - full[t]).abs().max().item() for t in kept)
        total += sec
        tasks = ",".join(suite.names)
        print(f"  {tasks}: {sec:.2f} s  (head at every position: {full_sec:.2f} s, {full_sec / sec:.2f}x; "
              f"largest log-probability difference {diff:.1e})", flush=True)
    print(f"panel: {total:.1f} s an evaluation ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
