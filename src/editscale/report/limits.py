"""Where a run leaves the bounds of editing without damage: the first measurement at which each bound fails.

The bounds (``Bounds``; defaults: the lifelong-editing claims this tool's real-model grid tests) are

- efficacy: the mean per-edit efficacy over a trailing window of ``window`` edits at least ``efficacy``;
- forgetting: the scale paper's forgotten fraction below ``forgotten`` at every re-check;
- perplexity: at most ``perplexity`` (relative) above the unedited model's, at every panel;
- known facts: retention at most ``known_facts`` (a share, "points") below the unedited model's.

Each is read from the run's own measurements, so a crossing is bracketed by the schedule: "crossed at 150 (held
at 100)" means the panel at 100 edits was within the bound and the one at 150 was not. The report shows one row
per run; ``editscale report --markdown`` prints it after the summary table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from editscale.eval.panel import KNOWN_FACTS, PERPLEXITY
from editscale.report.plots import RunData, trailing_mean


@dataclass(frozen=True)
class Bounds:
    efficacy: float = 0.95
    window: int = 100
    forgotten: float = 0.05
    perplexity: float = 0.05
    known_facts: float = 0.02

    def headers(self) -> tuple[str, ...]:
        return (f"efficacy >= {100 * self.efficacy:g}% (last {self.window})",
                f"forgotten < {100 * self.forgotten:g}%",
                f"perplexity <= +{100 * self.perplexity:g}%",
                f"known facts >= -{100 * self.known_facts:g} points")


def _first_failure(points: np.ndarray, values: np.ndarray, ok) -> str:
    """"crossed at N (held at M)" for the first point whose value fails ``ok``, else "held to N"; "-": none."""
    held = None
    for n, v in zip(points, values):
        if math.isnan(v):
            continue
        if not ok(v):
            return f"crossed at {int(n)}" + (f" (held at {held})" if held is not None else "")
        held = int(n)
    return "-" if held is None else f"held to {held}"


def _efficacy(run: RunData, bounds: Bounds) -> str:
    eff = run.scores.get("efficacy")
    if eff is None:
        return "-"
    if len(eff) < bounds.window:
        return f"- (fewer than {bounds.window} edits)"
    trailing = trailing_mean(eff, bounds.window)[bounds.window - 1:]  # full windows only
    return _first_failure(run.edit_idx[bounds.window - 1:], trailing, lambda v: v >= bounds.efficacy - 1e-12)


def _panel(run: RunData, task: str, ok) -> str:
    """``ok(value, unedited value)`` at each panel after the unedited model's."""
    series = run.downstream.get(task)
    if series is None or len(series[1]) < 2 or series[0][0] != 0:
        return "-"  # no unedited measurement to compare with
    n, v = series
    return _first_failure(n[1:], v[1:], lambda x: ok(x, v[0]))


def limit_row(run: RunData, bounds: Bounds = Bounds()) -> dict[str, str]:
    """One run's row: for each bound, where it was first crossed (bracketed by the measurements) or how far it
    held."""
    eff_h, forg_h, ppl_h, known_h = bounds.headers()
    return {
        "run": run.label,
        eff_h: _efficacy(run, bounds),
        forg_h: _first_failure(run.recheck_edits, run.forgotten, lambda v: v < bounds.forgotten),
        ppl_h: _panel(run, PERPLEXITY, lambda v, v0: v <= v0 * (1 + bounds.perplexity) + 1e-12),
        known_h: _panel(run, KNOWN_FACTS, lambda v, v0: v >= v0 - bounds.known_facts - 1e-12),
    }
