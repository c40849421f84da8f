"""EMMET (Gupta et al. 2024, "A Unified Framework for Model Editing"; scalable-model-editing/unified-model-editing):
batched ROME. The edited keys are equality constraints, W' k_i = W k_i + r_i, and the preserved keys a
least-squares term, so each layer's update is

    C' = w C + l_u I,   Delta = R^T (K C'^-1 K^T)^-1 K C'^-1        (keys K (n, k) as rows)

with a ridge ``emmet_lambda`` x I inside the middle inverse for batches of two or more requests (their keys
can be nearly collinear). It is MEMIT's loop (``memit.spread_over_layers``: z at the last edited layer, its
residual spread over the layers) with this solve.

What the reference code does (``emmet/emmet_main.py``, ``hparams/EMMET/*.json``) that the paper leaves out:
one layer, ROME's (GPT-2 XL 17, GPT-J 5, Llama-2 5) with MEMIT's z in the residual stream after it (clamp 0.75;
Llama 4); w = 1000 for GPT-2 XL and 1 for GPT-J and Llama; l_u = 0; the ridge 0.1 only when n > 1; keys are
the prefix-averaged ones, residuals from the bare prompt; a pseudo-inverse when the middle matrix is
singular.

Where editscale differs: the solve is two float64 linear solves (``emmet_solve``) instead of the reference's
explicit inverses of C' and of the middle matrix (the same update, better conditioned), falling back to the
pseudo-inverse as it does. w is not scaled with the key width for models without a preset (it only weighs the
ridge: the equality constraints hold whatever w).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from editscale.methods.base import EditState, register
from editscale.methods.hparams import EmmetHparams
from editscale.methods.layer_rules import OneLayer
from editscale.methods.memit import LayerSolve, Memit

if TYPE_CHECKING:
    from editscale.methods.context import EditContext


def emmet_solve(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, weight: float, norm_lambda: float,
                ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """EMMET's update as (left, right), Delta = left @ right, in float64.

    keys (n, k), resid (n, d), cov (k, k). C' = weight C + norm_lambda I, D = K C'^-1 K^T (+ ridge I when
    n > 1); left = R^T (d, n), right = D^-1 K C'^-1 (n, k). Without the ridge Delta K^T = R^T exactly: the
    edited keys' outputs move by exactly their residuals.
    """
    k = keys.double()
    c = weight * cov.double()
    if norm_lambda:
        c = c + norm_lambda * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    ck = torch.linalg.solve(c, k.T)  # C'^-1 K^T (k, n)
    d = k @ ck
    if d.shape[0] > 1 and ridge:
        d = d + ridge * torch.eye(d.shape[0], dtype=d.dtype, device=d.device)
    try:
        right = torch.linalg.solve(d, ck.T)  # D^-1 K C'^-1 (C' is symmetric)
    except torch.linalg.LinAlgError:  # singular D (repeated keys, no ridge): the reference's pseudo-inverse
        right = torch.linalg.pinv(d) @ ck.T
    return resid.double().T, right


@register
class Emmet(Memit):
    name = "emmet"
    description = "batched ROME: the edited keys as equality constraints, in MEMIT's loop"
    paper = "Gupta et al. 2024, A Unified Framework for Model Editing"
    Hparams = EmmetHparams
    layer_rule = OneLayer()  # the reference edits ROME's layer

    def solver(self, ctx: EditContext, state: EditState) -> LayerSolve:
        hp: EmmetHparams = self.hparams
        covs = ctx.second_moments(list(hp.layers), hp)
        return lambda layer, keys, resid: emmet_solve(keys, resid, covs[layer], hp.mom2_update_weight,
                                                      hp.update_norm_lambda, hp.emmet_lambda)
