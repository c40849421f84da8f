"""ROME (Meng et al. 2022) and r-ROME (Gupta et al. 2024, "Rebuilding ROME"): a rank-one update of one MLP
output matrix per request.

    W' = W + Lambda u^T,   u = C^-1 k* (normalised),   Lambda = (v* - W k - b) / <u, k>

with k* the key averaged over the context prefixes and v* from ``targets.optimize_targets`` at the MLP output
(rescaled by ``norm_anchor`` when it is on).
ROME, as the original code, uses the key of the bare prompt for k in Lambda (so W' k = v* exactly for the
bare prompt, not for k*); this asymmetry is what Gupta et al. found behind ROME's disabling edits. r-ROME uses
k* there too (W' k* = v*, with ``W k* + b`` the prefix-averaged MLP output).

Several requests are edited one after another, as the original ``apply_rome_to_model``: each computed on the
model carrying the earlier ones (applied temporarily), giving one Delta of rank n.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from editscale.methods.base import Delta, EditMethod, EditState, Update, register
from editscale.methods.hparams import RomeHparams
from editscale.methods.layer_rules import OneLayer
from editscale.methods.norm_anchor import anchor_for, anchored_targets
from editscale.methods.prefixes import PrefixSpec
from editscale.methods.targets import EditItem, as_items, subject_activations

if TYPE_CHECKING:
    from editscale.data.records import EditCase, EditRequest
    from editscale.methods.context import EditContext


@dataclass
class RankOne:
    """One request's rank-one update, (out, in) = left (d,) outer right (k,), and the vectors behind it."""

    left: torch.Tensor  # Lambda
    right: torch.Tensor  # u
    key: torch.Tensor  # the key the equality holds for (k for ROME, k* for r-ROME)
    key_mean: torch.Tensor  # k*
    value: torch.Tensor  # v*


def rank_one_solve(c_inv: Callable[[torch.Tensor], torch.Tensor] | None, key_mean: torch.Tensor,
                   key: torch.Tensor, value: torch.Tensor, out_at_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Lambda, u): u = C^-1 k* / ||C^-1 k*|| (or k*/||k*|| without C), Lambda = (v - out) / <u, key>, in float64.

    ``c_inv`` computes C^-1 x (``EditContext.second_moment_solver``)."""
    k_mean = key_mean.double()
    u = c_inv(k_mean) if c_inv is not None else k_mean
    u = u / u.norm()
    lam = (value.double() - out_at_key.double()) / torch.dot(u, key.double())
    return lam, u


@register
class Rome(EditMethod):
    """ROME as the original code (Lambda from the bare-prompt key)."""

    name = "rome"
    description = "a rank-one update of one MLP output matrix per request (the original code's bare-prompt key)"
    paper = "Meng et al. 2022, Locating and Editing Factual Associations in GPT"
    Hparams = RomeHparams
    layer_rule = OneLayer()
    needs = ("statistics", "prefixes", "anchor")
    use_mean_key = False  # r-ROME: True

    def compute(self, ctx: EditContext, requests: Sequence[EditRequest | EditCase], state: EditState) -> Delta:
        hp: RomeHparams = self.hparams
        items = as_items(requests)
        (layer,) = hp.layers
        anatomy = ctx.anatomy
        c_inv = ctx.second_moment_solver(layer, hp) if hp.mom2_adjustment else None
        prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
        weight_name = anatomy.weight_name(layer)
        applied: list[Delta] = []
        lefts, rights, info = [], [], {"target_loss": [], "target_nll": [], "target_steps": [], "delta_norm": []}
        try:
            for item in items:
                r1, res = self._one(ctx, item, prefixes, c_inv)
                lefts.append(r1.left)
                rights.append(r1.right)
                for k in info:
                    info[k] += res.info()[k]
                if len(items) > 1:  # the next request sees this one, as in the original
                    step = Update(weight_name, anatomy.transposed, left=r1.left[:, None], right=r1.right[None])
                    applied.append(Delta({weight_name: step}).apply(ctx.model))
        finally:
            for d in reversed(applied):
                d.revert(ctx.model)
        left = torch.stack(lefts, 1).float()
        right = torch.stack(rights, 0).float()
        upd = Update(weight_name, anatomy.transposed, left=left, right=right)
        return Delta({weight_name: upd}, {"method": self.name, "layers": [layer], **info})

    def prepare_statistics(self, ctx: EditContext) -> None:
        """The edited layer's second moment, unless u = k* (``mom2_adjustment`` off)."""
        if self.hparams.mom2_adjustment:
            super().prepare_statistics(ctx)

    def prepare_anchor(self, ctx: EditContext) -> None:
        """The norm anchor of the edited layer's value vectors, when it is on."""
        if self.hparams.norm_anchor:
            anchor_for(ctx, ctx.anatomy.mlp_out_name(self.hparams.layers[0]), self.hparams)

    def rank_one(self, ctx: EditContext, request: EditRequest | EditCase | EditItem) -> RankOne:
        """The rank-one update of one request on the model as it is (for tests and analysis)."""
        hp: RomeHparams = self.hparams
        c_inv = ctx.second_moment_solver(hp.layers[0], hp) if hp.mom2_adjustment else None
        return self._one(ctx, as_items([request])[0], ctx.prefixes(PrefixSpec.from_hparams(hp)), c_inv)[0]

    def _one(self, ctx: EditContext, item: EditItem, prefixes, c_inv):
        hp: RomeHparams = self.hparams
        module = ctx.anatomy.mlp_out_name(hp.layers[0])
        reads = subject_activations(ctx, [item], prefixes, [(module, True), (module, False)],
                                    average=hp.key_average, stop_after=module)
        keys, outs = reads[(module, True)], reads[(module, False)]
        res = anchored_targets(ctx, [item], module, hp, prefixes)
        if self.use_mean_key:
            key, out = keys.mean[0], outs.mean[0]
        else:
            key, out = keys.bare[0], outs.bare[0]
        lam, u = rank_one_solve(c_inv, keys.mean[0], key, res.target[0], out)
        return RankOne(lam, u, key, keys.mean[0], res.target[0]), res


@register
class RRome(Rome):
    """r-ROME: the prefix-averaged key k* in Lambda too, so the update satisfies W' k* = v*."""

    name = "r-rome"
    description = "ROME with the prefix-averaged key k* in Lambda too (W' k* = v*), against disabling edits"
    paper = "Gupta et al. 2024, Rebuilding ROME: Resolving Model Collapse during Sequential Model Editing"
    preset_section = Rome.name  # ROME's values, then its own
    use_mean_key = True
