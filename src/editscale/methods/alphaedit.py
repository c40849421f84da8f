"""AlphaEdit (Fang et al. 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing"; jianghoucheng/AlphaEdit):
MEMIT's loop (``memit.spread_over_layers``) with the update projected onto the null space of the preserved
keys, so that (up to the projection's threshold) it leaves their outputs unchanged:

    P = U U^T,  U = eigenvectors of the layer's key second moment C with eigenvalue < nullspace_threshold
    Delta^T = (P (K^T K + K_p^T K_p) + l2 I)^-1 P K^T R          (keys K (n, k) as rows)

K_p are the keys of all earlier edits at the layer; they accumulate in the method's ``EditState`` (as sum
k k^T per layer, float64), which the runner checkpoints, so a resumed run continues exactly. Since
(P M + l2 I)^-1 P = P (M P + l2 I)^-1, Delta = Y^T P: for a preserved key k0, ||Delta k0|| <= ||Y|| ||P k0||
and the mean of ||Delta k0||^2 over the keys C was estimated on is at most threshold x ||Delta||_F^2.

What the reference code does that the paper leaves out (``AlphaEdit/AlphaEdit_main.py``,
``experiments/evaluate.py: get_project``, ``hparams/AlphaEdit/*.json``): P comes from an SVD of the raw second
moment C (the statistics, not scaled by mom2_update_weight, which AlphaEdit never uses), with the absolute
threshold 2e-2 on its singular values, computed once per layer before editing and saved; L2 = 10; MEMIT's
layers, z and clamp (0.75); the accumulated ``cache_c`` is K K^T of each layer's keys recomputed after the
whole update is applied, kept on the CPU in float32.

Where editscale differs: P from ``torch.linalg.eigh`` of C in float64 (C is symmetric PSD: the same subspace
as the SVD) kept by the ``EditContext`` (``null_space_projector``, once per layer and statistics); the solve in
float64; the remembered keys are the ones each layer's update was solved for, which are the reference's
recomputed keys (a layer's keys are inputs of its own MLP output matrix, so they depend only on the layers
before it, whose updates are already applied when it is solved), summed in float64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from editscale.methods.base import EditState, register
from editscale.methods.hparams import AlphaEditHparams
from editscale.methods.memit import LayerSolve, Memit, remember_keys, remembered_keys

if TYPE_CHECKING:
    from editscale.methods.context import EditContext


def alphaedit_solve(keys: torch.Tensor, resid: torch.Tensor, proj: torch.Tensor, prev: torch.Tensor,
                    l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """AlphaEdit's update as (left, right), Delta = left @ right, in float64.

    keys (n, k), resid (n, d), proj = P (k, k), prev = K_p^T K_p (k, k). Delta^T = A^-1 P K^T R with
    A = P (K^T K + prev) + l2 I; left = R^T (d, n), right = (A^-1 P K^T)^T (n, k).
    """
    k = keys.double()
    p = proj.double()
    a = p @ (k.T @ k + prev.double()) + l2 * torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    adj = torch.linalg.solve(a, p @ k.T)  # (k, n)
    return resid.double().T, adj.T


@register
class AlphaEdit(Memit):
    name = "alphaedit"
    description = "MEMIT's update projected onto the null space of the preserved keys; earlier edits' keys kept"
    paper = "Fang et al. 2025, AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models"
    Hparams = AlphaEditHparams
    needs = ("statistics", "prefixes", "anchor", "projectors")

    def solver(self, ctx: EditContext, state: EditState) -> LayerSolve:
        hp: AlphaEditHparams = self.hparams
        projs = {layer: ctx.null_space_projector(layer, hp, hp.nullspace_threshold) for layer in hp.layers}
        return lambda layer, keys, resid: alphaedit_solve(
            keys, resid, projs[layer], hp.prev_edits_weight * remembered_keys(state, layer, projs[layer]), hp.l2)

    def remember(self, state: EditState, written: dict[int, torch.Tensor]) -> None:
        remember_keys(state, written)

    def prepare_projectors(self, ctx: EditContext) -> None:
        """The projectors, from the unedited model's statistics."""
        hp: AlphaEditHparams = self.hparams
        for layer in hp.layers:
            ctx.null_space_projector(layer, hp, hp.nullspace_threshold)
