"""Fine-tuning one layer's MLP output matrix: FT-L (the scale paper's FT-C) and FT-W.

Both minimise the NLL of the new targets on the bare prompts with Adam (lr 5e-4 in the papers), at most
``steps`` passes, stopping once the mean loss is below ``early_stop``; as the reference code (``ft_main.py``:
``if loss.item() >= 1e-2: loss.backward(); opt.step()``), a batch whose loss is already below it takes no step,
so an edit the model already satisfies leaves the weights as they are. ``scope`` chooses what is tuned: the
layer's MLP output matrix (the ROME paper's FT-L; FT-L's default) or every parameter of the layer's block (the
MEMIT repository's GPT-J FT-W, ``rewrite_module_tmp: transformer.h.{}``; FT-W's default, to compare with it):

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
from editscale.methods.layer_rules import OneLayer
from editscale.methods.targets import as_items, build_layout
from editscale.model.hooks import frozen_eval

if TYPE_CHECKING:
    from editscale.data.records import EditCase, EditRequest
    from editscale.methods.context import EditContext


@register
class FtL(EditMethod):
    """Constrained fine-tuning (L-infinity bound on the change)."""

    name = "ft-l"
    description = "fine-tuning one layer's MLP output matrix, the change bounded in L-infinity norm"
    paper = "Zhu et al. 2020, Modifying Memories in Transformer Models (as run by Meng et al. 2022)"
    Hparams = FtHparams
    layer_rule = OneLayer()  # ROME's layer
    edits_last_layer = True  # the NLL's gradient reaches every layer

    def compute(self, ctx: EditContext, requests: Sequence[EditRequest | EditCase], state: EditState) -> Delta:
        hp: FtHparams = self.hparams
        (layer,) = hp.layers
        items = as_items(requests)
        model, anatomy = ctx.model, ctx.anatomy
        body, head = model.base_model, model.get_output_embeddings()
        prefix = model.base_model_prefix + "."
        if hp.scope == "matrix":
            names = [anatomy.weight_name(layer)]
        else:
            block = anatomy.layer_name(layer) + "."
            names = [n for n, _ in model.named_parameters() if n.startswith(block)]
        params = dict(model.named_parameters())
        originals = {n: params[n].detach() for n in names}
        changes = {n: torch.zeros(w.shape, dtype=torch.float32, device=w.device, requires_grad=True)
                   for n, w in originals.items()}
        opt = torch.optim.Adam(list(changes.values()), lr=hp.lr)
        layouts = [build_layout(ctx, items[i: i + hp.batch_size], [[""]])
                   for i in range(0, len(items), hp.batch_size)]
        losses: list[float] = []
        with frozen_eval(model):
            for _ in range(hp.steps):
                total = 0.0
                for lay in layouts:
                    active = torch.ones(lay.bare.shape[0], dtype=torch.bool, device=lay.bare.device)
                    rsel, remap = lay.rows_of(active)
                    weights = {n.removeprefix(prefix): (w.float() + changes[n]).to(w.dtype)
                               for n, w in originals.items()}
                    hidden = functional_call(body, weights, args=(), kwargs=lay.inputs(rsel))
                    loss = lay.nll(head, hidden.last_hidden_state, active, remap).mean()
                    if loss.item() >= hp.early_stop:  # the reference skips the step of a converged batch
                        opt.zero_grad()
                        loss.backward()
                        if hp.weight_decay:
                            for n, change in changes.items():
                                if change.grad is not None:
                                    change.grad += hp.weight_decay * (originals[n].float() + change.detach())
                        opt.step()
                        if hp.norm_constraint is not None:
                            with torch.no_grad():
                                for change in changes.values():
                                    change.clamp_(-hp.norm_constraint, hp.norm_constraint)
                    total += loss.item() * lay.bare.shape[0]
                losses.append(total / len(items))
                if losses[-1] < hp.early_stop:
                    break
        updates = {}
        for n, change in changes.items():
            dense = change.detach()
            if hp.scope == "matrix":  # described as (out, in)
                dense = dense.T if anatomy.transposed else dense
                updates[n] = Update(n, anatomy.transposed, dense=dense.contiguous())
            else:  # any parameter, in its stored layout
                updates[n] = Update(n, False, dense=dense.contiguous())
        return Delta(updates, {"method": self.name, "layers": [layer], "scope": hp.scope, "ft_losses": losses})


@register
class FtW(FtL):
    """Fine-tuning with weight decay instead of a bound (the MEMIT paper's FT-W)."""

    name = "ft-w"
    description = "fine-tuning one layer's block with weight decay instead of a bound"
    paper = "Meng et al. 2023, Mass-Editing Memory in a Transformer (its FT-W baseline)"
    Hparams = FtWHparams
