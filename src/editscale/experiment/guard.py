"""Disabling edits: spot the single update that breaks a model (Gupta et al. 2024, section 3.4).

After every update the runner hands the guard what it measured; the guard flags the update when

- ``update_norm``: its Frobenius norm exceeds ``norm_factor`` x the running median of earlier updates';
- ``distance_jump``: the largest increase it caused in an edited matrix's distance from the original exceeds
  ``distance_factor`` x the running median of earlier updates' jumps;
- ``entropy``: generation entropy (ROME's n-gram entropy of sampled continuations of a few fixed prompts)
  fell below ``entropy_ratio`` x the unedited model's;
- ``neighborhood``: the neighborhood score of its edits fell below ``neighborhood_ratio`` x the running
  median of earlier updates'.

The median rules wait for ``min_history`` earlier applied updates. Refused (reverted) updates do not enter
the history, since the model never kept them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from editscale.eval.scoring import generate, mean_ngram_entropy
from editscale.experiment.config import GuardConfig


@dataclass(frozen=True)
class Flag:
    """One rule that fired for an update."""

    rule: str
    value: float
    threshold: float

    @property
    def detail(self) -> str:
        return f"{self.rule} {self.value:.4g} crossed threshold {self.threshold:.4g}"


@dataclass(frozen=True)
class UpdateSignals:
    """What the runner measured for one update."""

    update_norm: float
    distance_jump: float
    neighborhood: float  # NaN where the update's cases have no neighbourhood prompts
    entropy: float | None  # None where not measured


class Guard:
    """Running-median detector of disabling updates; its history is part of a run's checkpoint."""

    def __init__(self, cfg: GuardConfig, baseline_entropy: float | None = None) -> None:
        self.cfg = cfg
        self.baseline_entropy = baseline_entropy
        self.norms: list[float] = []
        self.jumps: list[float] = []
        self.neighborhoods: list[float] = []

    def _median_rule(self, rule: str, value: float, history: list[float], factor: float) -> Flag | None:
        if len(history) < self.cfg.min_history or math.isnan(value):
            return None
        threshold = factor * statistics.median(history)
        return Flag(rule, value, threshold) if value > threshold else None

    def check(self, s: UpdateSignals) -> list[Flag]:
        """The rules this update breaks (empty: a normal update)."""
        if not self.cfg.enabled:
            return []
        flags = [
            self._median_rule("update_norm", s.update_norm, self.norms, self.cfg.norm_factor),
            self._median_rule("distance_jump", s.distance_jump, self.jumps, self.cfg.distance_factor),
        ]
        if s.entropy is not None and self.baseline_entropy is not None:
            threshold = self.cfg.entropy_ratio * self.baseline_entropy
            if s.entropy < threshold:
                flags.append(Flag("entropy", s.entropy, threshold))
        clean = [v for v in self.neighborhoods if not math.isnan(v)]
        if not math.isnan(s.neighborhood) and len(clean) >= self.cfg.min_history:
            threshold = self.cfg.neighborhood_ratio * statistics.median(clean)
            if s.neighborhood < threshold:
                flags.append(Flag("neighborhood", s.neighborhood, threshold))
        return [f for f in flags if f is not None]

    def accept(self, s: UpdateSignals) -> None:
        """Add an applied (kept) update to the history."""
        self.norms.append(s.update_norm)
        self.jumps.append(s.distance_jump)
        self.neighborhoods.append(s.neighborhood)

    def state_dict(self) -> dict[str, list[float] | float | None]:
        return {"baseline_entropy": self.baseline_entropy, "norms": list(self.norms),
                "jumps": list(self.jumps), "neighborhoods": list(self.neighborhoods)}

    def load_state_dict(self, d: dict) -> None:
        self.baseline_entropy = d["baseline_entropy"]
        self.norms = list(d["norms"])
        self.jumps = list(d["jumps"])
        self.neighborhoods = list(d["neighborhoods"])


def generation_entropy(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                       seed: int = 0) -> float:
    """Mean n-gram entropy of seeded top-k samples of ``prompts`` (the same draws every time for a seed)."""
    texts = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed)
    return mean_ngram_entropy([t[len(p):] if t.startswith(p) else t for t, p in zip(texts, prompts)])
