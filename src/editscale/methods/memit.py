"""MEMIT (Meng et al. 2023): many edits at once, spread over several MLP output matrices.

1. z_i = h_i^L + delta_i at the last edited layer L, for all requests in one batched optimisation
   (``targets.optimize_targets`` on the residual stream after layer L; ``norm_anchor`` rescales them when on).
2. For each edited layer l in order, on the current weights (earlier layers' updates applied):
   K = prefix-averaged keys at l, R = (z - h^L) / (number of layers left, l included), and
   Delta_l = R^T K (lambda C_l + K^T K)^-1 in float64 (``memit_solve``), applied before the next layer.
3. All temporary updates are reverted; the per-layer updates are returned as one Delta.

Steps 1-3 are ``spread_over_layers``, shared by the whole family: EMMET, AlphaEdit and ENCORE (their own
modules) are ``Memit`` subclasses that change only the closed-form solve of step 2 (``solver``) and what they
remember of each call's keys for the next (``remember``, into the ``EditState``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from editscale.methods.base import Delta, EditMethod, EditState, Update, register
from editscale.methods.hparams import MemitHparams, SpreadHparams
from editscale.methods.layer_rules import LayerSpan
from editscale.methods.norm_anchor import anchor_for, anchored_targets
from editscale.methods.prefixes import PrefixSpec
from editscale.methods.targets import EditItem, as_items, subject_activations

if TYPE_CHECKING:
    from editscale.data.records import EditCase, EditRequest
    from editscale.methods.context import EditContext


def memit_solve(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, weight: float) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """The least-squares update with a covariance prior, as (left, right) with Delta = left @ right.

    keys (n, k), resid (n, d), cov (k, k). Delta (d, k) minimises
    ||Delta K^T - R^T||^2 + weight * tr(Delta C Delta^T), i.e. solves Delta (weight C + K^T K) = R^T K;
    left = R^T (d, n), right = ((weight C + K^T K)^-1 K^T)^T (n, k). Computed in float64.
    """
    k = keys.double()
    a = weight * cov.double() + k.T @ k
    adj = torch.linalg.solve(a, k.T)  # (k, n)
    return resid.double().T, adj.T


def through_post_norm(norm: nn.Module, mlp_out: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
    """The change of the MLP's output that moves the residual stream by ``resid`` where the output passes
    through an RMS norm before the residual add (Gemma 3's post_feedforward_layernorm): y = norm(m) =
    m / rms(m) * g. Wanted y + resid; the preimage that keeps m's own rms is m' = (y + resid) / g * rms(m),
    exact when (y + resid) / g has unit rms, as y / g has. Coordinates whose gain is under a tenth of the median
    gain's size cannot be moved at a bounded cost (Gemma 3 270M: 0.2-3% of them at layers 2-7): their residual
    is left out, so the others keep that unit rms. Without this, MEMIT's residuals written as MLP outputs are
    scaled by g / rms(m) (on Gemma 3 270M one batch of 100 edits then made none of the new objects the argmax).

    ``mlp_out`` and ``resid`` are (n, d); the gain g is the norm's output for a vector of ones."""
    with torch.no_grad():
        m = mlp_out.float()
        eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
        ones = torch.ones(1, m.shape[-1], dtype=next(norm.parameters()).dtype, device=m.device)
        gain = norm(ones).float()[0] * (1 + eps) ** 0.5
        movable = gain.abs() >= 0.1 * gain.abs().median()
        rms = (m.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        y = norm(mlp_out.to(ones.dtype)).float()
        wanted = y + resid.float() * movable
        return torch.where(movable, wanted / gain, m / rms) * rms - m


# (layer, keys (n, k), residuals (n, d)) -> (left (d, r), right (r, k)): the layer's update left @ right
LayerSolve = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def spread_over_layers(ctx: EditContext, items: Sequence[EditItem], hp: SpreadHparams, solve: LayerSolve,
                       method: str) -> tuple[Delta, dict[int, torch.Tensor]]:
    """MEMIT's loop (steps 1-3 above) with ``solve`` as each layer's closed form. Returns the Delta (the model
    left as it was) and, per layer, the keys (n, k) the update was solved for."""
    anatomy, model = ctx.anatomy, ctx.model
    layers = list(hp.layers)
    z_module = anatomy.layer_name(layers[-1])
    prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
    res = anchored_targets(ctx, items, z_module, hp, prefixes)
    updates: dict[str, Update] = {}
    written: dict[int, torch.Tensor] = {}
    applied: list[Delta] = []
    info: dict = {"method": method, "layers": layers, **res.info(), "z_error": [], "update_norm": []}
    try:
        for i, layer in enumerate(layers):
            key_module = anatomy.mlp_out_name(layer)
            post_norm = anatomy.mlp_post_norm_name(layer)
            wanted = [(key_module, True), (z_module, False)] + ([(key_module, False)] if post_norm else [])
            reads = subject_activations(ctx, items, prefixes, wanted, average=hp.key_average, stop_after=z_module)
            keys = reads[(key_module, True)].mean
            h = reads[(z_module, False)].bare.float()
            resid = (res.target - h) / (len(layers) - i)
            info["z_error"].append(float((res.target - h).norm(dim=1).mean()))
            if post_norm:  # the MLP output that moves the residual by resid once normed
                resid = through_post_norm(model.get_submodule(post_norm), reads[(key_module, False)].bare, resid)
            left, right = solve(layer, keys, resid)
            name = anatomy.weight_name(layer)
            d, k = left.shape[0], right.shape[1]
            if left.shape[1] < min(d, k) // 2:
                upd = Update(name, anatomy.transposed, left=left.float(), right=right.float())
            else:
                upd = Update(name, anatomy.transposed, dense=(left @ right).float())
            updates[name] = upd
            written[layer] = keys
            info["update_norm"].append(upd.norm())
            if i < len(layers) - 1:
                applied.append(Delta({name: upd}).apply(model))
    finally:
        for delta in reversed(applied):
            delta.revert(model)
    return Delta(updates, info), written


def key_moment_name(layer: int) -> str:
    """The ``EditState`` entry holding sum k k^T (float64) over the keys earlier edits wrote into ``layer``."""
    return f"edited_keys_moment.{layer}"


def remember_keys(state: EditState, written: dict[int, torch.Tensor]) -> None:
    """Add this call's keys to the earlier edits' second moments (new tensors: a snapshot stays valid)."""
    for layer, keys in written.items():
        k = keys.double()
        name = key_moment_name(layer)
        prev = state.get(name)
        state[name] = k.T @ k if prev is None else prev.to(k.device) + k.T @ k


def remembered_keys(state: EditState, layer: int, like: torch.Tensor) -> torch.Tensor:
    """sum k k^T over earlier edits' keys at ``layer`` (zeros before the first), float64 on ``like``'s device."""
    prev = state.get(key_moment_name(layer))
    k = like.shape[-1]
    if prev is None:
        return torch.zeros(k, k, dtype=torch.float64, device=like.device)
    return prev.to(device=like.device, dtype=torch.float64)


@register
class Memit(EditMethod):
    name = "memit"
    description = "many edits at once, residuals spread over several layers' MLP output matrices"
    paper = "Meng et al. 2023, Mass-Editing Memory in a Transformer"
    Hparams = MemitHparams
    layer_rule = LayerSpan()
    needs = ("statistics", "prefixes", "anchor")
    is_default = True

    def compute(self, ctx: EditContext, requests: Sequence[EditRequest | EditCase], state: EditState) -> Delta:
        delta, written = spread_over_layers(ctx, as_items(requests), self.hparams, self.solver(ctx, state),
                                            self.name)
        self.remember(state, written)
        return delta

    def solver(self, ctx: EditContext, state: EditState) -> LayerSolve:
        """Each layer's closed form: MEMIT's ``memit_solve`` with the layer's C."""
        hp: MemitHparams = self.hparams
        covs = ctx.second_moments(list(hp.layers), hp)
        return lambda layer, keys, resid: memit_solve(keys, resid, covs[layer], hp.mom2_update_weight)

    def remember(self, state: EditState, written: dict[int, torch.Tensor]) -> None:
        """What the method keeps of this call's keys for later calls: nothing for MEMIT. ``compute`` records
        it, as a sequential run wants (the runner applies every computed Delta, or puts back its snapshot of
        the state when the guard refuses one)."""

    def prepare_anchor(self, ctx: EditContext) -> None:
        """The norm anchor of the value vectors under z, when it is on."""
        hp: SpreadHparams = self.hparams
        if hp.norm_anchor:
            anchor_for(ctx, ctx.anatomy.layer_name(hp.layers[-1]), hp)
