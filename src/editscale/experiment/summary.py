"""A run's headline, read from its results store: what ``editscale run`` prints at the end and the report's
summary table starts from."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from editscale.eval.metrics import metrics_at
from editscale.eval.scoring import harmonic_mean
from editscale.experiment.store import RunStore


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """The run's headline: edits made, each summarised per-edit metric's mean over the last 50 edits (None: not
    measured), the Score, the forgotten fractions at the last re-check (the paper's and ``forgotten_prob``),
    flagged and refused edits, the CPU threads it ran on, the edited weights' final distance per element (all
    edited matrices together) and the method's compute seconds per edit."""
    names = [m.name for m in metrics_at("edit") if m.summary]
    with RunStore.in_dir(run_dir, readonly=True) as store:
        threads = store.meta().get("threads")
        n = store.n_edits_done()
        means = store.last_edit_means(names)
        last = store.last_recheck()
        flagged, refused = store.event_edits("flagged"), store.event_edits("refused")
        distance, compute = store.final_distance(), store.update_totals()["compute_seconds"]
    parts = [means.get(m, float("nan")) for m in ("efficacy", "paraphrase", "neighborhood")]
    score = float("nan") if any(math.isnan(p) for p in parts) else harmonic_mean(parts)
    out: dict[str, Any] = {"edits": n, **means, "score": score}
    out = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}  # unmeasured
    for key in ("forgotten", "forgotten_prob"):
        out[key] = None if last is None else (last[key] if last[key] is not None else 0.0)
    return {**out, "flagged": flagged, "refused": refused, "threads": threads,
            "distance_per_element": None if math.isnan(distance) else distance,
            "method_seconds_per_edit": compute / n if n else None}
