"""Fine-tuning one layer's MLP output matrix: FT-L (the scale paper's FT-C) and FT-W.

Both minimise the NLL of the new targets on the bare prompts with Adam (lr 5e-4 in the papers), at most
``steps`` passes, stopping once the mean loss is below ``early_stop``:

- ``ft-l``: after every step the change is clipped to an L-infinity ball, ||W' - W||_inf <= norm_constraint
  (5e-4 for GPT-2 XL, 5e-5 for GPT-J);
- ``ft-w``: no bound; Adam's L2 weight decay instead (as the reference code: on the whole weight).

The model is never written to: the change D is a separate tensor and the forward pass runs with W + D
substituted for the weight (``torch.func.functional_call``). The Delta is D, dense.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch.func import functional_call

from editscale.methods.base import Delta, EditMethod, EditState, Update, register
from editscale.methods.hparams import FtHparams, FtWHparams
from editscale.methods.targets import as_items, build_layout, frozen_eval

if TYPE_CHECKING:
    from editscale.data.records import EditCase, EditRequest
    from editscale.methods.context import EditContext


@register
class FtL(EditMethod):
    """Constrained fine-tuning (L-infinity bound on the change)."""

    name = "ft-l"
    Hparams = FtHparams

    def compute(self, ctx: EditContext, requests: Sequence[EditRequest | EditCase], state: EditState) -> Delta:
        hp: FtHparams = self.hparams
        items = as_items(requests)
        model, anatomy = ctx.model, ctx.anatomy
        body, head = model.base_model, model.get_output_embeddings()
        name = anatomy.weight_name(hp.layer)
        prefix = model.base_model_prefix + "."
        local = name.removeprefix(prefix)  # the name inside ``body``
        w0 = anatomy.weight_param(model, hp.layer).detach()
        change = torch.zeros(w0.shape, dtype=torch.float32, device=w0.device, requires_grad=True)
        opt = torch.optim.Adam([change], lr=hp.lr)
        layouts = [build_layout(ctx, items[i: i + hp.batch_size], [[""]])
                   for i in range(0, len(items), hp.batch_size)]
        losses: list[float] = []
        with frozen_eval(model):
            for _ in range(hp.steps):
                total = 0.0
                for lay in layouts:
                    active = torch.ones(lay.bare.shape[0], dtype=torch.bool, device=w0.device)
                    rsel, remap = lay.rows_of(active)
                    weight = (w0.float() + change).to(w0.dtype)
                    hidden = functional_call(body, {local: weight}, args=(), kwargs=lay.inputs(rsel))
                    loss = lay.nll(head, hidden.last_hidden_state, active, remap).mean()
                    opt.zero_grad()
                    loss.backward()
                    if hp.weight_decay:
                        change.grad += hp.weight_decay * (w0.float() + change.detach())
                    opt.step()
                    if hp.norm_constraint is not None:
                        with torch.no_grad():
                            change.clamp_(-hp.norm_constraint, hp.norm_constraint)
                    total += loss.item() * lay.bare.shape[0]
                losses.append(total / len(items))
                if losses[-1] < hp.early_stop:
                    break
        dense = change.detach()
        dense = dense.T if anatomy.transposed else dense  # (out, in)
        upd = Update(name, anatomy.transposed, dense=dense.contiguous())
        return Delta({name: upd}, {"method": self.name, "layer": hp.layer, "ft_losses": losses})


@register
class FtW(FtL):
    """Fine-tuning with weight decay instead of a bound (the MEMIT paper's FT-W)."""

    name = "ft-w"
    Hparams = FtWHparams
