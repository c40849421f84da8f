"""Disabling edits: spot the single update that breaks a model (Gupta et al. 2024, section 3.4).

After every update the runner hands the guard what it measured; the guard flags the update when

- ``update_norm``: its Frobenius norm exceeds ``norm_factor`` x the running median of earlier updates';
- ``distance_jump``: the largest increase it caused in an edited matrix's distance from the original exceeds
  ``distance_factor`` x the running median of earlier updates' jumps;
- ``entropy``: generation entropy (ROME's n-gram entropy of sampled continuations of a few fixed prompts)
  fell below ``entropy_ratio`` x the median of its last ``entropy_window`` values (a sudden collapse, not
  the gradual decline sequential editing brings anyway), measured every ``entropy_every`` updates and
  whenever another rule fires;
- ``neighborhood``: the neighborhood score of a fixed probe set fell by more than ``neighborhood_drop`` in
  this one update (a fixed probe, since one edit's own few neighbourhood prompts are too noisy to judge by).

The median rules wait for ``min_history`` earlier applied updates. Refused (reverted) updates do not enter
the history, since the model never kept them.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editscale.data.records import EditCase
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
    """What the runner measured for one update (None: not measured)."""

    update_norm: float
    distance_jump: float
    entropy: float | None = None
    neighborhood: float | None = None  # of the fixed probe set


class Guard:
    """Detector of disabling updates; its history is part of a run's checkpoint.

    ``start(entropy, neighborhood)`` gives it the unedited model's values; ``neighborhood`` then follows the
    probe score after every kept update, and ``entropies`` collects the generation entropies.
    """

    def __init__(self, cfg: GuardConfig) -> None:
        self.cfg = cfg
        self.neighborhood: float | None = None
        self.entropies: list[float] = []
        self.norms: list[float] = []
        self.jumps: list[float] = []

    def start(self, entropy: float | None, neighborhood: float | None) -> None:
        self.entropies = [] if entropy is None else [entropy]
        self.neighborhood = neighborhood

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
        if s.entropy is not None and self.entropies:
            threshold = self.cfg.entropy_ratio * statistics.median(self.entropies[-self.cfg.entropy_window:])
            if s.entropy < threshold:
                flags.append(Flag("entropy", s.entropy, threshold))
        if s.neighborhood is not None and self.neighborhood is not None:
            threshold = self.neighborhood - self.cfg.neighborhood_drop
            if s.neighborhood < threshold:
                flags.append(Flag("neighborhood", s.neighborhood, threshold))
        return [f for f in flags if f is not None]

    def accept(self, s: UpdateSignals) -> None:
        """Add a kept update to the history."""
        self.norms.append(s.update_norm)
        self.jumps.append(s.distance_jump)
        if s.entropy is not None:
            self.entropies.append(s.entropy)
        if s.neighborhood is not None:
            self.neighborhood = s.neighborhood

    def state_dict(self) -> dict[str, Any]:
        return {"neighborhood": self.neighborhood, "entropies": list(self.entropies), "norms": list(self.norms),
                "jumps": list(self.jumps)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.neighborhood = d["neighborhood"]
        self.entropies = list(d["entropies"])
        self.norms = list(d["norms"])
        self.jumps = list(d["jumps"])


def entropy_prompts(cases: Sequence[EditCase], n: int) -> list[str]:
    """Fixed prompts for the guard's generation entropy: generation prompts (else edit prompts) of the cases
    at the end of the plan, which are edited last or not at all."""
    late = list(reversed(cases))
    prompts = [p for c in late for p in c.generation_prompts] or [c.request.text for c in late]
    return list(dict.fromkeys(prompts))[:n]


def generation_entropy(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                       seed: int = 0) -> float:
    """Mean n-gram entropy of seeded top-k samples of ``prompts``, prompt included (as ROME's generation
    test), with the same draws every time for a seed."""
    return mean_ngram_entropy(generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed))


def weight_distance(current: torch.Tensor, original: torch.Tensor) -> dict[str, float | int]:
    """How far a matrix has moved from its original: ``frobenius`` = ||current - original||_F, that norm over
    the number of elements (``distance_per_element``: the scale paper's code, ``get_model_distance`` of the
    follow-up repositories, and so its Table 2: 3.3e-4 for disabling edits against 8.2e-7) and over the layer's
    neurons (``distance_per_neuron``: the paper's text; for an MLP matrix the MLP width, its larger side),
    with ``n_elements`` and ``n_neurons``."""
    with torch.no_grad():
        frob = float((current.detach().float() - original.detach().float()).norm())
    n_neurons, n_elements = max(current.shape), current.numel()
    return {"frobenius": frob, "distance_per_element": frob / n_elements, "distance_per_neuron": frob / n_neurons,
            "n_neurons": n_neurons, "n_elements": n_elements}


DISTANCES = ("frobenius", "distance_per_element", "distance_per_neuron")


def single_edit_test(run_dir: str | Path, n_normal: int = 10) -> dict[str, Any]:
    """Re-apply each flagged update of a run, alone, to the unedited model, and a seeded sample of normal
    (unflagged) updates likewise; report each one's distance from the original weights (per element as the
    paper's Table 2, and per neuron), efficacy, neighborhood and generation entropy, and the means of both
    groups; ``ratio`` is flagged over normal distance (the same for either normalisation of one matrix).

    The distance of an update is that of its most-moved matrix. Every edit starts from a fresh method state
    and is reverted exactly before the next.
    """
    from editscale.eval.counterfact import evaluate_cases
    from editscale.experiment.config import parse_config
    from editscale.experiment.store import RunStore
    from editscale.methods.base import EditState
    from editscale.methods.editor import Editor
    from editscale.names import load_model

    with RunStore.in_dir(run_dir, readonly=True) as store:
        meta = store.meta()
        cases = [EditCase.from_dict(d) for d in store.plan()]
        by_update = store.plan_updates()
        flagged = store.event_updates("flagged")
        done = set(store.done_updates())
    cfg = parse_config(meta["config"], source=f"stored config of {run_dir}")
    normal_pool = sorted(done - set(flagged))
    normal = sorted(random.Random(cfg.seed).sample(normal_pool, min(n_normal, len(normal_pool))))
    model, tok, _ = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    editor = Editor(model, tok, cfg.method.name, cfg.method.hparams or None, seed=cfg.seed).prepare()
    prompts = entropy_prompts(cases, cfg.guard.entropy_prompts)
    params = dict(model.named_parameters())
    rows = []
    for kind, updates in (("flagged", flagged), ("normal", normal)):
        for u in updates:
            batch = [cases[i - 1] for i in by_update[u]]
            editor.state = EditState()
            delta = editor.compute(batch)
            originals = {n: params[n].detach().clone() for n in delta.updates}
            delta.apply(model)
            dist = max((weight_distance(params[n], originals[n]) for n in delta.updates),
                       key=lambda d: d["distance_per_element"])
            scores = evaluate_cases(model, tok, batch, metrics=("efficacy", "neighborhood"),
                                    batch_size=cfg.eval_batch_size).summary()
            entropy = (generation_entropy(model, tok, prompts, cfg.guard.entropy_tokens, seed=cfg.seed)
                       if prompts else None)
            delta.revert(model)
            rows.append({"edit_idx": by_update[u][-1], "update_idx": u, "kind": kind,
                         **{k: dist[k] for k in DISTANCES}, "efficacy": scores["efficacy"],
                         "neighborhood": scores["neighborhood"], "entropy": entropy})

    def group(kind: str) -> dict[str, Any]:
        sel = [r for r in rows if r["kind"] == kind]
        return {"n": len(sel), **{k: sum(r[k] for r in sel) / len(sel) if sel else None for k in DISTANCES}}

    out = {"flagged": group("flagged"), "normal": group("normal"), "edits": rows}
    f, n = out["flagged"]["distance_per_element"], out["normal"]["distance_per_element"]
    out["ratio"] = f / n if f is not None and n else None
    return out
