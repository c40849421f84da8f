"""Threads on a shared CPU: a testbed build step and a ROME edit, alone and beside one busy process, for 1 and 2
threads, with OpenMP's default (spinning) wait policy and with OMP_WAIT_POLICY=PASSIVE.

    python bench/bench_threads.py [--steps 8] [--edits 3] [--busy 1] [--spec demo] [--budget 40]
    python bench/bench_threads.py --demo [--demo-edits 20]   # editscale demo's wall time, alone and busy

Every figure comes from a fresh subprocess, because the wait policy must be in the environment before torch
starts its thread pool. The busy process is a pure-Python loop (``--busy N`` of them). The build step is one
training step (forward, backward, AdamW) of the ``--spec`` testbed model on a full batch; the edit is ROME's
``compute`` on testbed:tiny (built if needed), statistics and prefixes prepared before timing. Each figure is
the median over the timed repetitions (at most ``--budget`` seconds each).

The machine's load (``os.getloadavg``) is printed before each figure: on a machine other people use, "alone"
means "without our busy loop". The last lines are the figures: seconds per step / per edit for each setting,
and each setting's ratio busy / alone, and against 1 thread alone. ``--demo`` times ``editscale demo`` (with
the testbed already built: the edits, re-checks, downstream and report) under the CLI's default threads,
alone and beside the busy process (after one uncounted warm-up demo: cold file caches), with the threads
each chose and the longest silence in its output (as in a log file), and prints the ratio (the issue asks
for at most 2.5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (label, threads, OMP_WAIT_POLICY); threads 0: what the editscale command chooses (editscale.threads: the free
# cores, passive waiting), decided in the subprocess as the CLI decides it
SETTINGS = (("1 thread", 1, None), ("2 threads", 2, None), ("2 threads, passive", 2, "PASSIVE"),
            ("editscale default", 0, None))
BUSY = "while True: pass"


def child(task: str, steps: int, budget: float, spec_name: str) -> None:
    """In the subprocess: time ``task`` and print one JSON line."""
    if "OMP_NUM_THREADS" not in os.environ:  # the editscale command's own choice, before torch starts
        from editscale.threads import prepare_environment

        prepare_environment([])
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    times: list[float] = []
    if task == "build":
        import torch.nn.functional as F

        from editscale.testbed.specs import get_spec
        from editscale.testbed.train import make_model

        spec = get_spec(spec_name)
        model = make_model(spec, 0).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, spec.vocab_size, (spec.batch_size, spec.seq_len), generator=g)

        def one() -> None:
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        from editscale.methods.editor import Editor
        from editscale.names import load_cases, load_model

        model, tok, _ = load_model("testbed:tiny")
        editor = Editor(model, tok, "rome", seed=0, progress=False).prepare()
        seen, cases = set(), []
        for c in load_cases("testbed:tiny"):
            if c.request.subject not in seen:
                seen.add(c.request.subject)
                cases.append(c)
        it = iter(cases)

        def one() -> None:
            editor.compute([next(it)])

    one()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    print(json.dumps({"median": statistics.median(times), "n": len(times), "threads": torch.get_num_threads(),
                      "policy": os.environ.get("OMP_WAIT_POLICY", "default")}))


def measure(task: str, threads: int, policy: str | None, busy: int, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "EDITSCALE_PROGRESS": "0"}
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("EDITSCALE_THREADS", None)
    if threads == 0:
        del env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, __file__, "--child", task, "--steps", str(args.steps if task == "build"
                              else args.edits), "--budget", str(args.budget), "--spec", args.spec],
                             env=env, capture_output=True, text=True, check=True).stdout
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "load": load}


def demo_seconds(busy: int, edits: int) -> tuple[float, float, str]:
    """Wall seconds of ``editscale demo`` (output to a pipe, as to a log file), the longest gap between its
    output lines (progress lines included), and the threads it says it used."""
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            proc = subprocess.Popen(["editscale", "demo", "--edits", str(edits), "--out", str(Path(tmp) / "demo")],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            last, gap, threads = t0, 0.0, "?"
            for line in proc.stdout:
                now = time.perf_counter()
                gap, last = max(gap, now - last), now
                if "CPU threads" in line:
                    threads = line.rsplit("on ", 1)[-1].split(" CPU")[0]
            if proc.wait() != 0:
                raise SystemExit(f"editscale demo failed with exit code {proc.returncode}")
            return time.perf_counter() - t0, gap, threads
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed build steps per figure")
    ap.add_argument("--edits", type=int, default=3, help="timed ROME edits per figure")
    ap.add_argument("--busy", type=int, default=1, help="busy processes beside the measured one")
    ap.add_argument("--spec", default="demo", help="testbed spec whose training step is timed")
    ap.add_argument("--budget", type=float, default=40.0, help="at most this many seconds of timing per figure")
    ap.add_argument("--tasks", default="build,edit")
    ap.add_argument("--demo", action="store_true", help="time `editscale demo` alone and busy instead")
    ap.add_argument("--demo-edits", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=1, help="with --demo: one uncounted demo first (1) or not (0)")
    ap.add_argument("--settings", default=None, help="comma-separated labels of SETTINGS to measure (default all)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.steps, args.budget, args.spec)
        return
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()}")
    if args.demo:
        if args.warmup:  # the first demo after other work pays for cold file caches: not counted
            demo_seconds(0, args.demo_edits)
        alone, gap_a, th_a = demo_seconds(0, args.demo_edits)
        print(f"demo alone: {alone:.0f} s on {th_a} threads, longest silence in the log {gap_a:.0f} s "
              f"(load {os.getloadavg()[0]:.2f})")
        busy, gap_b, th_b = demo_seconds(args.busy, args.demo_edits)
        print(f"demo beside {args.busy} busy: {busy:.0f} s on {th_b} threads, longest silence in the log "
              f"{gap_b:.0f} s (load {os.getloadavg()[0]:.2f})")
        print(f"demo --edits {args.demo_edits}: alone {alone:.0f} s, busy {busy:.0f} s, ratio {busy / alone:.2f}")
        return
    results: dict[tuple[str, str, int], dict] = {}
    settings = [s for s in SETTINGS if args.settings is None or s[0] in args.settings.split(",")]
    for task in args.tasks.split(","):
        for label, threads, policy in settings:
            for busy in (0, args.busy):
                r = measure(task, threads, policy, busy, args)
                results[(task, label, busy)] = r
                print(f"{task:5s} {label:20s} {'busy' if busy else 'alone':5s}: {r['median']:.3f} s "
                      f"(median of {r['n']}, {r['threads']} thread(s), wait policy {r['policy']}, load "
                      f"{r['load']:.2f})", flush=True)
    print()
    for task in args.tasks.split(","):
        base = results.get((task, "1 thread", 0), results[(task, settings[0][0], 0)])["median"]
        cells = []
        for label, _, _ in settings:
            a, b = results[(task, label, 0)]["median"], results[(task, label, args.busy)]["median"]
            cells.append(f"{label}: alone {a:.3f} s, busy {b:.3f} s (busy/alone {b / a:.2f}x, "
                         f"busy / 1 thread alone {b / base:.2f}x)")
        print(f"{task} ({'seconds per step' if task == 'build' else 'seconds per ROME edit'}): " + "; ".join(cells))


if __name__ == "__main__":
    main()
