"""MEMIT (Meng et al. 2023): many edits at once, spread over several MLP output matrices.

1. z_i = h_i^L + delta_i at the last edited layer L, for all requests in one batched optimisation
   (``targets.optimize_targets`` on the residual stream after layer L).
2. For each edited layer l in order, on the current weights (earlier layers' updates applied):
   K = prefix-averaged keys at l, R = (z - h^L) / (number of layers left, l included), and
   Delta_l = R^T K (lambda C_l + K^T K)^-1 in float64 (``memit_solve``), applied before the next layer.
3. All temporary updates are reverted; the per-layer updates are returned as one Delta.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from editscale.methods.base import Delta, EditMethod, EditState, Update, register
from editscale.methods.hparams import MemitHparams
from editscale.methods.targets import PrefixSpec, as_items, optimize_targets, subject_activations

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


@register
class Memit(EditMethod):
    name = "memit"
    Hparams = MemitHparams

    def compute(self, ctx: EditContext, requests: Sequence[EditRequest | EditCase], state: EditState) -> Delta:
        hp: MemitHparams = self.hparams
        items = as_items(requests)
        anatomy, model = ctx.anatomy, ctx.model
        layers = list(hp.layers)
        z_module = anatomy.layer_name(layers[-1])
        covs = ctx.second_moments(layers, hp)
        prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
        res = optimize_targets(ctx, items, z_module, hp, prefixes)
        updates: dict[str, Update] = {}
        applied: list[Delta] = []
        info: dict = {"method": self.name, "layers": layers, **res.info(), "z_error": [], "update_norm": []}
        try:
            for i, layer in enumerate(layers):
                key_module = anatomy.mlp_out_name(layer)
                reads = subject_activations(ctx, items, prefixes, [(key_module, True), (z_module, False)],
                                            average=hp.key_average, stop_after=z_module)
                keys = reads[(key_module, True)].mean
                h = reads[(z_module, False)].bare.float()
                resid = (res.target - h) / (len(layers) - i)
                info["z_error"].append(float((res.target - h).norm(dim=1).mean()))
                left, right = memit_solve(keys, resid, covs[layer], hp.mom2_update_weight)
                name = anatomy.weight_name(layer)
                d, k = left.shape[0], right.shape[1]
                if left.shape[1] < min(d, k) // 2:
                    upd = Update(name, anatomy.transposed, left=left.float(), right=right.float())
                else:
                    upd = Update(name, anatomy.transposed, dense=(left @ right).float())
                updates[name] = upd
                info["update_norm"].append(upd.norm())
                if i < len(layers) - 1:
                    applied.append(Delta({name: upd}).apply(model))
        finally:
            for delta in reversed(applied):
                delta.revert(model)
        return Delta(updates, info)
