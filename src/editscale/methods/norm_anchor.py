"""Norm anchoring (NAS: "Norm Anchors Make Model Edits Last", arXiv 2602.02543; SasyaTitech/NAS), a switch
(``norm_anchor: true``) of every locate-then-edit method: ROME, r-ROME, MEMIT, EMMET, AlphaEdit, ENCORE.

Each solved value vector v* is rescaled to one fixed norm of the unedited model before it is written, so that
v* norms (and with them the edited weights) cannot grow edit after edit. A method that offers it solves its
targets with ``anchored_targets`` (``targets.optimize_targets``, then the anchor when ``norm_anchor`` is on)
and measures the anchor in ``prepare`` (``anchor_for``); the ``EditContext`` keeps the anchor in its memo
without knowing what it is.

What the reference code does (``util/vstar_stats.py``, ``*/compute_z.py``, ``rome/compute_v.py``), which the
paper's text leaves out:

- v* is the MLP output of the edited layer at the last subject token plus the optimised delta: for ROME the
  target itself (its init is the MLP output); for the MEMIT family, whose delta sits in the residual stream
  after the last edited layer, v* = v0 + delta with v0 the unedited MLP output of that layer at the last
  subject token of the bare prompt, and the target becomes z = (h - v0) + v*.
- The anchor is ONE number per layer: the mean of ||v*|| over ``nas_restart`` = 1,000 CounterFact edits drawn
  with ``random.Random(0)``, each solved alone on the unedited model, the largest 5% left out (an
  upper-trimmed mean); computed once per model and layer and cached.
- Each edit's v* is rescaled to the anchor. A v* longer than 2 anchors (ROME: 5, though its message says 2) is
  dropped: v* = v0, the request is not edited.

Where editscale differs, and why:

- The calibration edits are solved with the method's own hyperparameters and vector position (ROME's v* at
  the MLP output with ROME's clamp; MEMIT's z in the residual stream), where the reference always solves them
  with MEMIT's configuration, also for ROME: the anchor is then the norm of the vectors the method itself
  writes into the unedited model.
- The calibration records are ``norm_anchor_data`` (default: the model directory's ``world.jsonl``, which
  testbed models ship; CounterFact for a real model), or the anchor is given as ``norm_anchor_value``. The
  anchor is measured in ``Editor.prepare`` (through ``anchor_for``), i.e. on the unedited model, also when a
  run resumes, so resume stays exact.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from editscale.errors import ConfigError
from editscale.methods.prefixes import PrefixSpec
from editscale.methods.targets import EditItem, TargetResult, as_items, optimize_targets, subject_activations
from editscale.progress import progress_bar

if TYPE_CHECKING:
    from editscale.methods.context import EditContext
    from editscale.methods.hparams import TargetHparams

CALIBRATION_SEED = 0  # the reference's random.Random(0)
KEEP_QUANTILE = 0.95  # the reference leaves out the largest 5% of the calibration norms
WORLD_FILE = "world.jsonl"  # a testbed model's own records


def anchor_vectors(v0: torch.Tensor, v_star: torch.Tensor, anchor: float,
                   skip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchored v*, dropped): each row of ``v_star`` rescaled to norm ``anchor``; rows longer than
    ``skip`` x anchor are dropped (replaced by their ``v0``: no edit). ``skip`` None drops nothing."""
    norms = v_star.norm(dim=1, keepdim=True)
    scaled = v_star * (anchor / norms.clamp_min(1e-10))
    dropped = torch.zeros(len(v_star), dtype=torch.bool, device=v_star.device)
    if skip is not None:
        dropped = norms[:, 0] > skip * anchor
    return torch.where(dropped[:, None], v0, scaled), dropped


def trimmed_mean(norms: torch.Tensor, keep: float = KEEP_QUANTILE) -> float:
    """The mean without the largest floor((1 - keep) x n) values (the reference's upper-trimmed mean)."""
    values = norms.double().sort().values
    drop = int((1.0 - keep) * len(values))
    return float(values[: len(values) - drop].mean()) if drop else float(values.mean())


def _layer_of(ctx: EditContext, module: str) -> tuple[int, bool]:
    """(layer, whether ``module`` is that layer's MLP output matrix rather than the layer itself)."""
    anatomy = ctx.anatomy
    for layer in range(anatomy.n_layers(ctx.model)):
        if module == anatomy.mlp_out_name(layer):
            return layer, True
        if module == anatomy.layer_name(layer):
            return layer, False
    raise ConfigError(f"norm anchoring: {module!r} is neither a decoder layer nor an MLP output matrix")


def unedited_values(ctx: EditContext, items: Sequence[EditItem], module: str,
                    res: TargetResult) -> torch.Tensor:
    """v0 (B, d): the MLP output of ``module``'s layer at the last subject token of each bare prompt, as the
    model is now (for a target at the MLP output, its init)."""
    layer, at_mlp = _layer_of(ctx, module)
    if at_mlp:
        return res.init
    mlp = ctx.anatomy.mlp_out_name(layer)
    return subject_activations(ctx, items, [[""]], [(mlp, False)], stop_after=mlp)[(mlp, False)].bare


def anchor_targets(ctx: EditContext, items: Sequence[EditItem], module: str, hp: TargetHparams,
                   res: TargetResult) -> TargetResult:
    """``res`` with every v* = v0 + delta rescaled to the anchor (or dropped, see ``anchor_vectors``)."""
    anchor = anchor_for(ctx, module, hp)
    v0 = unedited_values(ctx, items, module, res)
    anchored, _ = anchor_vectors(v0, v0 + res.delta, anchor, hp.norm_anchor_skip)
    delta = anchored - v0
    return TargetResult(res.init + delta, res.init, delta, res.loss, res.nll, res.steps)


def calibration_items(ctx: EditContext, hp: TargetHparams) -> list[EditItem]:
    """The calibration edits: ``norm_anchor_samples`` records of ``norm_anchor_data`` (default: the model
    directory's world.jsonl), drawn with the reference's seed."""
    from editscale.data.readers import read_records

    path = Path(hp.norm_anchor_data).expanduser() if hp.norm_anchor_data else None
    if path is None and ctx.model_dir is not None and (ctx.model_dir / WORLD_FILE).is_file():
        path = ctx.model_dir / WORLD_FILE
    if path is None:
        raise ConfigError("norm anchoring measures its anchor on calibration edits of the unedited model: set "
                          "norm_anchor_data to a CounterFact-style records file, or norm_anchor_value to the anchor")
    cases = read_records(path)
    n = hp.norm_anchor_samples
    sample = cases if n >= len(cases) else random.Random(CALIBRATION_SEED).sample(cases, n)
    return as_items(sample)


def measure_anchor(ctx: EditContext, module: str, hp: TargetHparams) -> float:
    """The anchor for targets at ``module``: the upper-trimmed mean ||v*|| of the calibration edits, each
    solved on the model as it is now (``anchor_for`` calls this once per context, on the unedited model)."""
    items = calibration_items(ctx, hp)
    plain = hp.updated(norm_anchor=False)
    with progress_bar(f"norm anchor: calibration edits at {module}", len(items), ctx.progress) as advance:
        res = optimize_targets(ctx, items, module, plain, ctx.prefixes(PrefixSpec.from_hparams(hp)), advance)
    return trimmed_mean((unedited_values(ctx, items, module, res) + res.delta).norm(dim=1))


def anchor_key(module: str, hp: TargetHparams) -> tuple[str, str]:
    """What the anchor depends on: the module and the hyperparameters (but the anchoring switches)."""
    fields = {k: v for k, v in hp.to_dict().items() if k not in ("norm_anchor", "norm_anchor_skip")}
    return module, json.dumps(fields, sort_keys=True)


def anchor_for(ctx: EditContext, module: str, hp: TargetHparams) -> float:
    """The norm every value vector at ``module`` is rescaled to: ``norm_anchor_value``, else measured on
    calibration edits (``measure_anchor``) once per context and kept in its memo. Measure it before editing
    (``Editor.prepare`` does), so it is the unedited model's."""
    if hp.norm_anchor_value is not None:
        return float(hp.norm_anchor_value)
    return ctx.memo(("norm_anchor", *anchor_key(module, hp)), lambda: measure_anchor(ctx, module, hp))


def anchored_targets(ctx: EditContext, items: Sequence[EditItem], module: str, hp: TargetHparams,
                     prefixes: Sequence[Sequence[str]]) -> TargetResult:
    """``targets.optimize_targets``, then each v* rescaled to the anchor when ``hp.norm_anchor`` is on."""
    res = optimize_targets(ctx, items, module, hp, prefixes)
    return anchor_targets(ctx, items, module, hp, res) if hp.norm_anchor else res
