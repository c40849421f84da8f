"""Which layer should ROME edit on a real model? The single-edit protocol (each record edited into the
unedited model, scored, reverted) per layer: efficacy, paraphrase, neighborhood (CounterFact's comparisons and
magnitudes), with the unedited model's scores beside them (issue 13 part 3, the sweep behind a preset).

    python bench/bench_rome_layers.py [--model smollm2-135m | DIR] [--layers 2,4,5,6,8,10,12,15] [--records 30]
        [--set KEY=VALUE ...] [--threads 1]

The statistics of all layers come from one pass over the corpus (cached). Prints one row per layer as it
finishes, then the table.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("EDITSCALE_PROGRESS", "0")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
METRICS = ("efficacy", "paraphrase", "neighborhood")
SCORED = (*METRICS, *(f"{m}_magnitude" for m in METRICS))


def row(name: str, s: dict, extra: str = "") -> str:
    return (f"{name:<10}{s['efficacy']:>6.1%}{s['paraphrase']:>7.1%}{s['neighborhood']:>7.1%}"
            f"{s['efficacy_magnitude']:>9.3f}{s['paraphrase_magnitude']:>9.3f}{s['neighborhood_magnitude']:>10.3f}"
            f"{extra}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=str(SHARED / "counterfact" / "counterfact-val.json"))
    ap.add_argument("--corpus", default=str(SHARED / "wikitext" / "wikitext-2-raw.test.hfjoined.txt"))
    ap.add_argument("--layers", default="2,4,5,6,8,10,12,15")
    ap.add_argument("--records", type=int, default=30)
    ap.add_argument("--method", default="rome")
    ap.add_argument("--set", action="append", default=[], help="hyperparameter override KEY=VALUE (YAML value)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stats-dir", default=None)
    args = ap.parse_args()

    import yaml

    from editscale.api import Editor
    from editscale.eval.counterfact import CounterFactResult, evaluate_cases
    from editscale.methods.context import EditContext
    from editscale.names import load_cases, load_model

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok, _ = load_model(args.model)
    cases = load_cases(args.data, limit=args.records)
    layers = [int(x) for x in args.layers.split(",")]
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    ctx = EditContext(model, tok, corpus=args.corpus, stats_cache=args.stats_dir if args.stats_dir else "default")
    editors = {layer: Editor(model, tok, args.method, {**overrides, "layers": [layer]}, context=ctx) for layer in layers}
    hp = editors[layers[0]].hparams
    ctx.second_moments(layers, hp)  # every layer's statistics in one pass
    pre = evaluate_cases(model, tok, cases, metrics=SCORED).summary()
    head = f"{'layer':<10}{'eff':>6}{'para':>7}{'neigh':>7}{'eff mag':>9}{'para mag':>9}{'neigh mag':>10}"
    lines = [row("unedited", pre)]
    print(head + "\n" + lines[0], flush=True)
    for layer in layers:
        editor, scored, steps, c0 = editors[layer], [], 0, time.process_time()
        for case in cases:
            delta = editor.edit([case])
            try:
                scored += evaluate_cases(model, tok, [case], metrics=SCORED).cases
            finally:
                delta.revert(model)
            steps += delta.info["target_steps"][0]
        s = CounterFactResult(scored).summary()
        lines.append(row(str(layer), s, f"{steps / len(cases):>7.1f}{(time.process_time() - c0) / len(cases):>7.1f}"))
        print(lines[-1], flush=True)
    print(f"\n{args.method} on {args.model}, {len(cases)} records of {Path(args.data).name} (single-edit protocol), "
          f"overrides {overrides or 'none'}, v_stop_on={hp.v_stop_on}, statistics {hp.mom2_n_texts} texts / "
          f"{hp.mom2_n_tokens} tokens ({hp.mom2_sampling}) of {Path(args.corpus).name}; torch threads "
          f"{torch.get_num_threads()}; {time.perf_counter() - t0:.0f} s wall")
    print(head + f"{'steps':>7}{'CPU s':>7}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
