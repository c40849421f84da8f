"""ENCORE (Gupta et al. 2025, "Lifelong Sequential Knowledge Editing without Model Degradation";
scalable-model-editing/knowledge-editing-regularization): MEMIT's loop (``memit.spread_over_layers``) with

- a Frobenius-norm penalty on the update, l_u ||Delta||^2, and the keys of earlier edits in the preserved set:
      Delta (w C + l_u I + K_p^T K_p + K^T K) = R^T K          (keys K (n, k) as rows)
  i.e. ``memit_solve`` with C replaced by w C + l_u I + K_p^T K_p (K_p accumulated in the ``EditState``);
- most-probable early stopping (MPES) of the target optimisation: a request stops once every token of its new
  target is the argmax in every one of its prefixed prompts (``v_stop_on: argmax`` in ``targets.py``, the
  default here), for the ``v_argmax_hits``-th time, so z is no larger than it needs to be.

What the reference code does that the paper leaves out (``encore/encore_main.py``, ``encore/compute_z.py``,
``hparams/ENCORE/*.json``): l_u (``update_norm_lambda``) = 10 for GPT-2 XL and Llama-2-7B, 20 for Llama-3-8B,
with MEMIT's w (20,000 / 15,000), layers and clamp (0.75); the earlier keys' K K^T are added unscaled by w
(``add_prev_edits``), summed per layer in a module-level cache of the keys each update was solved for.
Its MPES (``prob_cutoff`` < 0) stops at the |prob_cutoff|-th step at which all prompts are right (4 for GPT-2
XL, 3 for Llama-2, 2 for Llama-3; the counter is never reset), checks every prompt but the bare one (its
``log_probs[1:]`` drops the first rewriting prompt under a comment that says it drops the KL prompt), and keeps
the loss < 5e-2 stop as well.

Where editscale differs: ``v_argmax_hits`` is the reference's |prob_cutoff| (counted the same way), 1 by
default (the paper's "stop once the target is the most probable") and the reference's count in the GPT-2 XL
and Llama presets; every prompt is checked, the bare one included, and the loss stop is not added; the
earlier keys live in the ``EditState``, which the runner checkpoints, instead of a module-level cache that a
restart loses; the solve is in float64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from editscale.methods.base import EditState, register
from editscale.methods.hparams import EncoreHparams
from editscale.methods.memit import LayerSolve, Memit, memit_solve, remember_keys, remembered_keys

if TYPE_CHECKING:
    from editscale.methods.context import EditContext


def encore_solve(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, weight: float, norm_lambda: float,
                 prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """ENCORE's update as (left, right): ``memit_solve`` with the preserved term w C + l_u I (+ prev, the
    earlier edits' K_p^T K_p), in float64."""
    c = weight * cov.double() + norm_lambda * torch.eye(cov.shape[0], dtype=torch.float64, device=cov.device)
    if prev is not None:
        c = c + prev.double()
    return memit_solve(keys, resid, c, 1.0)


@register
class Encore(Memit):
    name = "encore"
    description = "MEMIT with a norm penalty, earlier edits' keys preserved, most-probable early stopping"
    paper = "Gupta et al. 2025, Lifelong Sequential Knowledge Editing without Model Degradation"
    Hparams = EncoreHparams

    def solver(self, ctx: EditContext, state: EditState) -> LayerSolve:
        hp: EncoreHparams = self.hparams
        covs = ctx.second_moments(list(hp.layers), hp)
        return lambda layer, keys, resid: encore_solve(
            keys, resid, covs[layer], hp.mom2_update_weight, hp.update_norm_lambda,
            hp.prev_edits_weight * remembered_keys(state, layer, covs[layer]) if hp.add_prev_edits else None)

    def remember(self, state: EditState, written: dict[int, torch.Tensor]) -> None:
        remember_keys(state, written)
