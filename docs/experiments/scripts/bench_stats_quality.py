"""ROME's quality on a real model against the number of key vectors its statistics C = E[k k^T] are estimated
from (issue 13 part 2): which default keeps the papers' quality at a fraction of their 100,000 texts?

For each sample size (multiples of the key width; texts drawn at random from the corpus, two seeds) and a
large-sample reference (the whole corpus): the relative error of C and of ROME's u = C^-1 k* (unit vectors,
for the records' keys), and the single-edit protocol on a handful of CounterFact records (efficacy,
paraphrase, neighborhood and their magnitudes). v* does not depend on C, so each record's target is optimised
once and every C then gives its own rank-one update (edit, score, revert).

    python bench/bench_stats_quality.py [--model smollm2-135m | DIR] [--records 8] [--multiples 1,3,5,10,30]
        [--threads 1]

Published work (Gupta et al. 2025) finds about 10x the key width keeps about 95% of the quality.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=str(SHARED / "counterfact" / "counterfact-val.json"))
    ap.add_argument("--corpus", default=str(SHARED / "wikitext" / "wikitext-2-raw.test.hfjoined.txt"))
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--multiples", default="1,3,5,10,30", help="sample sizes in key widths")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--layer", type=int, default=None, help="default: the preset's ROME layer")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stats-dir", default=None)
    args = ap.parse_args()

    from editscale.api import Editor
    from editscale.eval.counterfact import evaluate_cases
    from editscale.methods import rome
    from editscale.methods.base import Delta, Update
    from editscale.methods.context import key_sample
    from editscale.methods.prefixes import PrefixSpec
    from editscale.methods.targets import as_items
    from editscale.names import load_cases, load_model
    from editscale.stats.second_moment import second_moments

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok, anatomy = load_model(args.model)
    cases = load_cases(args.data, limit=args.records)
    editor = Editor(model, tok, "rome", {"layers": [args.layer]} if args.layer is not None else None,
                    corpus=args.corpus, stats_cache=args.stats_dir if args.stats_dir else "default")
    ctx, method, hp = editor.context, editor.method, editor.hparams
    (layer,) = hp.layers
    width = anatomy.key_dim(model, layer)
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = [int(m) * width for m in args.multiples.split(",")]
    variants = [(f"{n // width}x ({n:,}) s{s}", hp.updated(mom2_n_texts=None, mom2_n_tokens=n, mom2_seed=s), s)
                for n in sizes for s in seeds]
    reference = hp.updated(mom2_n_texts=None, mom2_n_tokens=None)  # every text of the corpus
    variants.append(("reference", reference, None))

    memo = {}
    plain_targets = rome.anchored_targets

    def once(ctx_, items, module, hp_, prefixes):  # v* does not depend on C: optimise each record once
        key = items[0].request.case_id
        if key not in memo:
            memo[key] = plain_targets(ctx_, items, module, hp_, prefixes)
        return memo[key]

    rome.anchored_targets = once
    prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
    items = as_items(cases)
    c_ref = ctx.second_moment(layer, reference).double()
    full = second_moments(model, tok, [layer], ctx.corpus(reference.mom2_corpus), sample=key_sample(reference),
                          max_length=reference.mom2_max_length, cache=ctx.stats_cache, fingerprint=ctx.fingerprint,
                          progress=False)[layer]  # a cache hit: for its counts
    results = {}
    u_ref = {}
    weight = anatomy.weight_name(layer)
    for label, vhp, _seed in reversed(variants):  # the reference first (its u is compared with)
        c = ctx.second_moment(layer, vhp).double()
        c_err = float((c - c_ref).norm() / c_ref.norm())
        solve = ctx.second_moment_solver(layer, vhp)
        rows, u_errs = [], []
        for item, case in zip(items, cases):
            r1, _ = method._one(ctx, item, prefixes, solve)
            key = case.case_id
            if label == "reference":
                u_ref[key] = r1.right
            u_errs.append(float((r1.right - u_ref[key]).norm()))  # both unit vectors
            upd = Update(weight, anatomy.transposed, left=r1.left[:, None].float(), right=r1.right[None].float())
            delta = Delta({weight: upd}).apply(model)
            try:
                rows.append(evaluate_cases(model, tok, [case], metrics=SCORED).cases[0])
            finally:
                delta.revert(model)
        results[label] = {"c_err": c_err, "u_err": sum(u_errs) / len(u_errs),
                          **{m: sum(getattr(r, m) for r in rows) / len(rows) for m in METRICS},
                          **{f"{m}_mag": sum(getattr(r, f"{m}_magnitude") for r in rows) / len(rows)
                             for m in METRICS}}
        print(f"done {label} ({time.perf_counter() - t0:.0f} s)", flush=True)
    rome.anchored_targets = plain_targets

    print(f"\nmodel {args.model}, ROME layer {layer}, key width {width}, {len(cases)} CounterFact records, "
          f"corpus {Path(args.corpus).name} (texts drawn at random), seeds {seeds}, "
          f"torch threads {torch.get_num_threads()}, {time.perf_counter() - t0:.0f} s wall; reference: the "
          f"whole corpus, {full.texts:,} texts, {full.count:,} key vectors")
    head = (f"{'key vectors':<18}{'rel.err C':>10}{'|u-u_ref|':>10}{'eff':>6}{'para':>6}{'neigh':>7}"
            f"{'eff mag':>9}{'para mag':>9}{'neigh mag':>10}")
    print(head)
    for label, _vhp, _seed in variants:
        r = results[label]
        print(f"{label:<18}{r['c_err']:>10.3f}{r['u_err']:>10.3f}{r['efficacy']:>6.2f}{r['paraphrase']:>6.2f}"
              f"{r['neighborhood']:>7.2f}{r['efficacy_mag']:>9.3f}{r['paraphrase_mag']:>9.3f}"
              f"{r['neighborhood_mag']:>10.3f}")
    ref = results["reference"]
    for n in sizes:
        got = [results[label] for label, _v, s in variants if s is not None and label.startswith(f"{n // width}x ")]
        diff = {m: sum(r[m] - ref[m] for r in got) / len(got) for m in (*METRICS, *(f"{m}_mag" for m in METRICS))}
        print(f"{n // width:>3}x the key width, minus the reference (mean over seeds): " +
              ", ".join(f"{m} {v:+.3f}" for m, v in diff.items()))


if __name__ == "__main__":
    main()
