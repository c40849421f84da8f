"""Seconds per edit of each editing method (ROME, MEMIT, EMMET, AlphaEdit, ENCORE, FT-L, MEND) on the testbed
models, one edit per call, each applied before the next (a sequential run's work), with each method's ratio
to ROME measured in the same run.

    python bench/bench_methods.py [--edits 10] [--models testbed:tiny,testbed:demo] [--methods rome,memit,...]
                                  [--threads 1]

Statistics, context prefixes and what a method derives once (AlphaEdit's projectors) are computed before
timing (``Editor.prepare``; statistics from the on-disk cache after the first run); only ``compute`` is timed.
testbed:demo is used only if it is already built (``editscale testbed build demo``). The testbed's world
records are edited in order, one per subject (MEND: of the subjects its editor did not train on). MEND needs
its trained editor (``editscale mend train --model M --data M``; training is not timed); a model without one
is skipped for MEND with a line saying so. The last line is the figure: per model, seconds per edit and the
ratio to ROME of each method.
"""

from __future__ import annotations

import argparse
import time

import torch

METHODS = ("rome", "memit", "emmet", "alphaedit", "encore", "ft-l", "mend")


def one_per_subject(cases: list, n: int) -> list:
    seen, out = set(), []
    for c in cases:
        if c.request.subject not in seen:
            seen.add(c.request.subject)
            out.append(c)
        if len(out) == n:
            break
    return out


def time_method(model, tok, method: str, cases: list) -> float:
    """Mean seconds of ``compute`` per edit over ``cases``, edited one after another (then all reverted)."""
    from editscale.methods.base import EditState
    from editscale.methods.editor import Editor

    ed = Editor(model, tok, method, progress=False).prepare()
    ed.compute(cases[:1])  # warm-up, untimed (first forward passes); its remembered keys are dropped
    ed.state = EditState()
    applied, seconds = [], 0.0
    try:
        for case in cases:
            t0 = time.perf_counter()
            delta = ed.compute([case])
            seconds += time.perf_counter() - t0
            applied.append(delta.apply(model))
    finally:
        for delta in reversed(applied):
            delta.revert(model)
    return seconds / len(cases)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=10, help="edits timed per method and model")
    ap.add_argument("--models", default="testbed:tiny,testbed:demo")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from editscale.errors import ConfigError
    from editscale.methods.base import usable_cases
    from editscale.names import load_cases, load_model
    from editscale.testbed.registry import is_built, model_path

    methods = [m for m in args.methods.split(",") if m]
    if "rome" not in methods:
        methods.insert(0, "rome")  # the baseline of the ratios
    figures = []
    for name in args.models.split(","):
        if name.startswith("testbed:") and name != "testbed:tiny" and not is_built(model_path(name[8:])):
            print(f"{name}: not built, skipped (editscale testbed build {name[8:]})")
            continue
        model, tok, _ = load_model(name)
        records = load_cases(name)
        per_edit = {}
        for method in methods:
            cases = one_per_subject(usable_cases(method, name, records), args.edits)
            try:
                per_edit[method] = time_method(model, tok, method, cases)
            except ConfigError as e:  # MEND without a trained editor
                print(f"{name:14s} {method:10s} skipped: {e}", flush=True)
                continue
            print(f"{name:14s} {method:10s} {per_edit[method]:8.3f} s per edit  "
                  f"({per_edit[method] / per_edit['rome']:.2f} x ROME)", flush=True)
        figures.append(f"{name}: " + ", ".join(f"{m} {per_edit[m]:.3f} s ({per_edit[m] / per_edit['rome']:.2f}x)"
                                                for m in methods if m in per_edit))
    print(f"seconds per edit ({args.edits} sequential edits, {torch.get_num_threads()} thread(s)), ratio to ROME: "
          + "; ".join(figures))


if __name__ == "__main__":
    main()
