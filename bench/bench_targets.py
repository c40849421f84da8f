"""MEMIT's target vectors z for 32 requests: one batched optimisation against one request at a time
(goal: >= 5x faster per request). Both runs do the same per-request work (identical trajectories). Then how
close one request's optimisation (a single edit's target) comes to the machine's limit: its floating-point rate
(operations counted by torch's FlopCounterMode, over its wall time) against a plain float32 matrix product's on
the same threads, measured in the same run.
On a CPU that work is compute-bound (measured on 2 cores: 2.2x on testbed:demo, 1.2x on the random model);
the goal assumes an accelerator, where one request leaves most of the device idle.

    python bench/bench_targets.py [--model testbed:demo | DIR] [--data testbed:demo] [--n 32]

Without --model: a random GPT-2-style model of the testbed's shape (4 layers, width 128, MLP 1024) with a
small trained tokenizer and invented requests (early stopping then never triggers: full 25 steps each).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch
from common import add_model_options, model_from_options

os.environ.setdefault("EDITSCALE_PROGRESS", "0")


def default_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import bpe_tokenizer

    tok = bpe_tokenizer(1000)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=4, n_embd=128, n_head=4, n_inner=1024, vocab_size=len(tok), n_positions=256)
    return GPT2LMHeadModel(cfg).eval(), tok


def invented_requests(n: int):
    from editscale.data.records import EditRequest

    rng = random.Random(0)
    syll = ["ka", "lo", "mi", "ra", "ten", "vo", "su", "bel", "dor", "an", "is", "ku"]

    def name(k: int) -> str:
        return "".join(rng.choice(syll) for _ in range(k)).capitalize()

    prompts = ["{} plays the sport of", "The mother tongue of {} is", "{} lives in the city of", "{} works as a"]
    return [EditRequest(rng.choice(prompts), f"{name(2)} {name(3)}", name(2), case_id=str(i)) for i in range(n)]


def main() -> None:
    from editscale.methods.context import EditContext
    from editscale.methods.hparams import MemitHparams
    from editscale.methods.prefixes import PrefixSpec
    from editscale.methods.preset_resolution import resolve_hparams
    from editscale.methods.targets import optimize_targets

    ap = argparse.ArgumentParser()
    add_model_options(ap)
    ap.add_argument("--data", default=None, help="records (default: --model when it is a testbed, else invented)")
    ap.add_argument("--n", type=int, default=32)
    args = ap.parse_args()
    model, tok, name = model_from_options(args, default_model, "random GPT-2 (4 layers, width 128, MLP 1024)")
    data = args.data or (args.model if args.model and args.model.startswith("testbed:") else None)
    if data:
        from editscale.names import load_cases

        reqs = [c.request for c in load_cases(data, limit=args.n)]
    else:
        reqs = invented_requests(args.n)
    ctx = EditContext(model, tok, stats_cache=None)
    hp = resolve_hparams("memit", MemitHparams, model, ctx.anatomy, {"target_batch": max(64, args.n)})
    prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
    module = ctx.anatomy.layer_name(hp.layers[-1])
    optimize_targets(ctx, reqs[:2], module, hp, prefixes)  # warm-up

    t = time.perf_counter()
    batched = optimize_targets(ctx, reqs, module, hp, prefixes)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    alone = [optimize_targets(ctx, [r], module, hp, prefixes) for r in reqs]
    t_alone = time.perf_counter() - t
    diff = max(float((batched.target[i] - a.target[0]).abs().max() / a.target[0].abs().max())
               for i, a in enumerate(alone))
    print(f"model: {name}; {len(reqs)} requests; {sum(len(g) for g in prefixes)} prompts each; "
          f"{hp.v_steps} steps max; threads {torch.get_num_threads()}")
    print(f"steps taken per request: mean {batched.steps.float().mean():.1f}; same in both runs: "
          f"{batched.steps.tolist() == [int(a.steps[0]) for a in alone]}; max relative difference of z {diff:.1e}")
    print(f"one at a time: {t_alone:.2f} s ({1000 * t_alone / len(reqs):.0f} ms per request)")
    print(f"batched:       {t_batched:.2f} s ({1000 * t_batched / len(reqs):.0f} ms per request)")
    print(f"speed-up per request, batched vs one at a time: {t_alone / t_batched:.1f}x (goal >= 5x)")
    achieved, peak = flop_rates(lambda: optimize_targets(ctx, [reqs[0]], module, hp, prefixes))
    print(f"one request's optimisation: {achieved / 1e9:.1f} GFLOP/s; a plain 1024x1024 float32 matrix product on "
          f"{torch.get_num_threads()} thread(s): {peak / 1e9:.1f} GFLOP/s; ratio {achieved / peak:.2f}")


def flop_rates(work, reps: int = 3) -> tuple[float, float]:
    """(FLOP/s of ``work``: its operations counted once, its best wall time of ``reps``; FLOP/s of a plain
    float32 matrix product on the same threads)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        work()
    flops = counter.get_total_flops()
    best = min(_timed(work) for _ in range(reps))
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    n = 20
    t = min(_timed(lambda: [a @ b for _ in range(n)]) for _ in range(reps))
    return flops / best, 2 * 1024 ** 3 * n / t


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
