"""Which of the known facts a sequential SmolLM2 run has lost, by relation, beside how many of its edits were of
that relation: is the loss of known facts (the panel's ``known-facts``) tied to the relations edited?

    python docs/results/known_fact_bleed.py RUN_DIR

RUN_DIR is a run directory of examples/smollm2_1000.yaml with its checkpoints (the stores committed beside the
results pages have none). The known facts are the panel's (the known_1000 facts the unedited model gets right,
the run's downstream_n and seed); the model is restored to the latest checkpoint. Relations come from
known_1000's relation ids; an edit's relation from the known_1000 template its prompt matches ('?' for none:
CounterFact-val's records carry no relation ids).
"""

from __future__ import annotations

import collections
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


if __name__ == "__main__":
    main()
