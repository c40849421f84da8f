"""Causal tracing: seconds and forward passes per traced fact, batched against the reference's computation
(one full forward pass of samples + 1 rows per restored (kind, layer, token), plus 2 per kind).

    python bench/bench_trace.py [--model testbed:demo] [--data testbed:demo] [--n 10] [--samples 10]
    python bench/bench_trace.py --smollm2 [NAME_OR_DIR] [--n 3] [--samples 3]

Both computations run here on the same facts with the same noise draws (the plain one on --plain facts, as it
is slow); the figures are per fact. "Full-pass equivalents" are the batched run's (row, block) evaluations in
units of one reference pass (samples + 1 rows through every block). On 2 CPU cores the run is compute-bound,
so seconds follow the block evaluations; on an accelerator the few large batches gain more.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import add_model_options, model_from_options

os.environ.setdefault("EDITSCALE_PROGRESS", "0")
KNOWN = Path(__file__).resolve().parents[2] / "shared" / "data" / "known_1000" / "known_1000.json"


def main() -> None:
    from editscale.data.readers import read_facts
    from editscale.names import resolve_data_path
    from editscale.trace import embedding_noise, known_mask, trace_fact

    ap = argparse.ArgumentParser()
    add_model_options(ap)
    ap.add_argument(
        "--smollm2",
        nargs="?",
        const="smollm2-135m",
        default=None,
        help="trace SmolLM2-135M (a name or its converted directory) on ROME's known facts",
    )
    ap.add_argument(
        "--data", default=None, help="facts (default: testbed:demo, or known_1000 with --smollm2)"
    )
    ap.add_argument("--n", type=int, default=10, help="known facts traced batched")
    ap.add_argument("--plain", type=int, default=1, help="of those, traced the reference's way too")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--kinds", default="hidden,mlp,attn")
    args = ap.parse_args()
    if args.smollm2:
        args.model = args.model or args.smollm2
    args.model = args.model or "testbed:demo"
    data = args.data or (str(KNOWN) if args.smollm2 else "testbed:demo")
    model, tok, name = model_from_options(args, lambda: None, "")
    kinds = args.kinds.split(",")
    facts = read_facts(resolve_data_path(data))
    noise = embedding_noise(model, tok, [f.subject for f in facts])
    known = [f for f, k in zip(facts[: 20 * args.n], known_mask(model, tok, facts[: 20 * args.n])) if k][
        : args.n
    ]

    def timed(plain: bool):
        out = []
        for i, f in enumerate(known[: args.plain] if plain else known):
            cpu = time.process_time()
            tr = trace_fact(
                model, tok, f, noise=noise, kinds=kinds, samples=args.samples, seed=i, plain=plain
            )
            out.append((tr, time.process_time() - cpu))
        return [t for t, _ in out], [c for _, c in out]

    fast, cpu_fast_each = timed(False)
    plain, cpu_plain_each = timed(True)
    cpu_fast = sum(cpu_fast_each) / len(fast)
    same = range(len(plain))  # the facts traced both ways: the ratio is taken on them
    cpu_ratio = sum(cpu_plain_each) / sum(cpu_fast_each[i] for i in same)
    wall_ratio = sum(t.seconds for t in plain) / sum(fast[i].seconds for i in same)
    cpu_plain = sum(cpu_plain_each) / max(1, len(plain))
    diff = max(
        (float(np.abs(a.effects[k] - b.effects[k]).max()) for a, b in zip(fast, plain) for k in kinds),
        default=float("nan"),
    )
    n_layers = fast[0].n_layers

    def per_fact(traces, value) -> float:
        return sum(value(t) for t in traces) / len(traces)

    s_fast, s_plain = per_fact(fast, lambda t: t.seconds), per_fact(plain, lambda t: t.seconds)
    calls, calls_plain = per_fact(fast, lambda t: t.forward_calls), per_fact(plain, lambda t: t.forward_calls)
    ref = per_fact(fast, lambda t: t.reference_passes())
    equiv = per_fact(fast, lambda t: t.row_layers / ((t.samples + 1) * n_layers))
    print(
        f"model: {name} ({n_layers} layers); facts: {len(fast)} known of {data}; mean tokens "
        f"{np.mean([len(t.tokens) for t in fast]):.1f}; kinds {args.kinds}; {args.samples} noise draws; "
        f"window "
        f"{fast[0].window}; threads {torch.get_num_threads()}"
    )
    print(
        f"batched:  {s_fast:.2f} s per fact ({cpu_fast:.2f} s CPU); {calls:.0f} forward calls = {equiv:.0f} "
        "full-pass equivalents"
    )
    print(
        f"plain:    {s_plain:.2f} s per fact ({cpu_plain:.2f} s CPU; {len(plain)} facts); "
        f"{calls_plain:.0f} passes; "
        f"max |difference of indirect effects| {diff:.1e}"
    )
    print(f"reference: {ref:.0f} passes per fact of {args.samples + 1} rows")
    print(
        f"seconds per traced fact: batched {s_fast:.2f} s against one pass per restoration {s_plain:.2f} s "
        f"(on the same facts {wall_ratio:.1f}x, CPU {cpu_ratio:.1f}x); forward passes per fact {calls:.0f} "
        f"({equiv:.0f} full-pass equivalents) against the reference's {ref:.0f}"
    )


if __name__ == "__main__":
    main()
