"""Which of the known facts a sequential SmolLM2 run has lost, by relation, beside how many of its edits were of
that relation: is the loss of known facts (the panel's ``known-facts``) tied to the relations edited? And by how
sure the unedited model was of each: are the facts lost the near-ties, or is every fact's margin falling?

    python docs/results/known_fact_bleed.py RUN_DIR

RUN_DIR is a run directory of examples/smollm2_1000.yaml with its checkpoints (the stores committed beside the
results pages have none). The known facts are the panel's (the known_1000 facts the unedited model gets right,
the run's downstream_n and seed); the model is restored to the latest checkpoint. Relations come from
known_1000's relation ids; an edit's relation from the known_1000 template its prompt matches ('?' for none:
CounterFact-val's records carry no relation ids). A fact's margin is, over its object's tokens, the smallest
log-probability of the right token minus the largest of any other (nats; > 0 where the fact is right), as
the panel's mean margin.
"""

from __future__ import annotations

import collections
import itertools
import json
import sys
from pathlib import Path


def main() -> None:
    import torch

    from editscale.data.sources import data_home
    from editscale.eval.panel import prepare_probe
    from editscale.experiment.checkpoint import load_checkpoint, restore_weights
    from editscale.experiment.store import RunStore
    from editscale.names import load_model

    torch.set_num_threads(1)
    run = Path(sys.argv[1])
    with RunStore.in_dir(run, readonly=True) as store:
        cfg = store.meta()["config"]
        plan = [json.loads(c) for (c,) in store.rows("SELECT case_json FROM plan ORDER BY edit_idx")]
    model, tok, _ = load_model(cfg["model"])
    probe = prepare_probe("known-facts", model, tok, data_dir=cfg.get("downstream_data_dir"), testbed_dir=None,
                          n=cfg["downstream_n"], seed=cfg["seed"])
    known = json.loads((data_home() / "known_1000" / "known_1000.json").read_text())
    relation_of_prompt = {r["prompt"].strip(): r["relation_id"] for r in known}
    relation_of_template = {r["template"].strip(): r["relation_id"] for r in known}
    before = margins(model, tok, probe.facts)
    latest = max((run / "checkpoints").iterdir())
    ckpt = load_checkpoint(latest)
    params = dict(model.named_parameters())
    restore_weights(model, {n: params[n].detach().clone() for n in ckpt.delta}, ckpt)
    kept = probe.right(model)
    edited = collections.Counter(c["request"].get("relation_id") or relation_of_template.get(
        c["request"]["prompt"].strip(), "?") for c in plan[:ckpt.n_edits])
    by = collections.defaultdict(lambda: [0, 0])
    for (prompt, _), ok in zip(probe.facts, kept):
        row = by[relation_of_prompt.get(prompt, "?")]
        row[0] += 1
        row[1] += not ok
    print(f"{run} at {ckpt.n_edits} edits ({latest.name}): known facts kept {sum(kept)} of {len(kept)}; "
          f"edits whose relation is unknown: {edited['?']}")
    print("| relation | known facts | lost | lost % | edits of the relation |\n|---|---|---|---|---|")
    for rel, (n, lost) in sorted(by.items(), key=lambda kv: (-kv[1][0], kv[0])):
        print(f"| {rel} | {n} | {lost} | {100 * lost / n:.0f} | {edited.get(rel, 0)} |")
    after = margins(model, tok, probe.facts)
    change = [a - b for a, b in zip(after, before)]
    ranked = sorted(change)
    print(f"\nBy the unedited model's margin (nats): the mean margin moved {sum(change) / len(change):+.2f}, the "
          f"middle 80% of facts' margins by {ranked[len(ranked) // 10]:+.2f} to {ranked[-1 - len(ranked) // 10]:+.2f}")
    print("| unedited margin | known facts | lost | lost % | median margin change |\n|---|---|---|---|---|")
    for lo, hi in itertools.pairwise(MARGIN_BINS):
        idx = [i for i, b in enumerate(before) if lo < b <= hi]
        if idx:
            lost = sum(not kept[i] for i in idx)
            mid = sorted(change[i] for i in idx)[len(idx) // 2]
            print(f"| {lo} to {hi if hi < 1e9 else 'more'} | {len(idx)} | {lost} | {100 * lost / len(idx):.0f} | {mid:+.2f} |")


MARGIN_BINS = (0, 0.5, 1, 2, 4, float("inf"))


def margins(model, tok, facts) -> list[float]:
    """Each fact's margin (``ContinuationScores.margin``, what the panel's mean margin averages)."""
    from editscale.eval.scoring import score_continuations

    return score_continuations(model, tok, [p for p, _ in facts], [o for _, o in facts]).margin.tolist()


if __name__ == "__main__":
    main()
