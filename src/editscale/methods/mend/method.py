"""The registered MEND method: the split of a testbed world between the editor's training and the edits, the
per-token gradient factors of the edited matrices, and ``Mend``, which turns them into a low-rank Delta with a
trained editor (``storage``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from editscale.errors import ConfigError, EditError
from editscale.methods.base import Delta, EditMethod, EditState, Update, register
from editscale.methods.layer_rules import LastBlocks
from editscale.methods.mend.hparams import MendHparams
from editscale.methods.mend.network import MendNetwork
from editscale.methods.mend.storage import find_editor, load_editor
from editscale.methods.targets import EditItem, as_items, build_layout
from editscale.model.hooks import capture, edit_output, frozen_eval
from editscale.model.loading import MANIFEST_FILE as TESTBED_MANIFEST

if TYPE_CHECKING:
    from editscale.data.records import EditCase, EditRequest
    from editscale.methods.context import EditContext

STATE_KEY = "mend_editor_sha256"  # the method state: the sha256 of the editor's weights, as bytes
SPLIT = 5  # 1 in SPLIT subjects of a testbed world trains the editor; runs and evaluation edit the rest


# --------------------------------------------------------------------------------------------------------
# the split of a testbed world
# --------------------------------------------------------------------------------------------------------
def is_training_subject(subject: str) -> bool:
    """Whether a testbed world's subject is one MEND's editor trains on (1 in ``SPLIT``, by a hash)."""
    digest = hashlib.sha256(("editscale-mend-split:" + subject.strip().lower()).encode()).digest()
    return int.from_bytes(digest[:4], "big") % SPLIT == 0


def is_world(data: str | Path) -> bool:
    """Whether a data spec is a testbed world (``testbed:NAME``, or a records file beside a testbed model)."""
    text = str(data)
    return text.startswith("testbed:") or (Path(text).expanduser().parent / TESTBED_MANIFEST).is_file()


# --------------------------------------------------------------------------------------------------------
# gradients: per token, the input u and output gradient delta of every edited matrix
# --------------------------------------------------------------------------------------------------------
def edited_params(model: nn.Module, ctx_anatomy, hp: MendHparams) -> list[tuple[str, str, int, int]]:
    """(module, parameter, out, in) of every matrix MEND edits, through the anatomy."""
    out = []
    for layer in hp.layers:
        for which in hp.matrices:
            module = ctx_anatomy.mlp_matrix_name(layer, which)
            w = model.get_submodule(module).weight
            o, i = (w.shape[1], w.shape[0]) if ctx_anatomy.transposed else tuple(w.shape)
            out.append((module, module + ".weight", int(o), int(i)))
    return out


def _nll(lay, logits: torch.Tensor) -> torch.Tensor:
    """Mean over the layout's requests of their mean target-token NLL, from the model's logits."""
    active = torch.ones(lay.bare.shape[0], dtype=torch.bool, device=lay.bare.device)
    _, remap = lay.rows_of(active)
    return lay.nll(nn.Identity(), logits, active, remap).mean()


def gradient_factors(ctx: EditContext, items: Sequence[EditItem], modules: Sequence[str]
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per module: (u (T, in), delta (T, out)) over the T tokens of the items' prompt + new target (tokens
    whose u or delta is zero left out, as the reference), for the NLL of the new targets on the model as it
    is; grad W = delta^T u. No parameter gradient is written."""
    model, lay = ctx.model, build_layout(ctx, items, [[""]])
    inputs = lay.inputs(torch.arange(lay.batch.input_ids.shape[0], device=lay.batch.input_ids.device))
    mask = inputs["attention_mask"].bool()
    embed = ctx.anatomy.embed_name(model)
    with frozen_eval(model), torch.enable_grad():
        # the embeddings' output is a leaf that needs a gradient, so every later activation has one
        with edit_output(model, embed, lambda h: h.detach().requires_grad_()), \
                capture(model, modules) as ins, capture(model, modules, inputs=False, detach=False) as outs:
            logits = model(**inputs).logits
        loss = _nll(lay, logits)
        grads = torch.autograd.grad(loss, [outs[m] for m in modules])
    out = {}
    for m, g in zip(modules, grads):
        u, d = ins[m][mask].float(), g[mask].float()
        keep = (u != 0).any(-1) & (d != 0).any(-1)
        out[m] = (u[keep], d[keep])
    return out


# --------------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------------
@register
class Mend(EditMethod):
    """MEND with a trained editor (``editscale mend train``)."""

    name = "mend"
    description = "trained editor networks turn an edit's fine-tuning gradient into a low-rank update"
    paper = "Mitchell et al. 2022, Fast Model Editing at Scale"
    Hparams = MendHparams
    # the reference's inner_params: the last 3 blocks (GPT-2 XL 45-47, GPT-J 25-27); on a testbed model the 3
    # below its last, which writes the relation's object for every subject (presets/testbed.yaml)
    layer_rule = LastBlocks(3)
    needs = ("editor",)
    edits_last_layer = True  # the gradient reaches every layer

    def __init__(self, hparams: MendHparams) -> None:
        super().__init__(hparams)
        self._loaded: tuple[str, MendNetwork, dict[str, Any]] | None = None

    @classmethod
    def holds_out(cls, data: str) -> bool:
        return is_world(data)

    @classmethod
    def held_out_cases(cls, cases: list) -> list:
        """The cases of a testbed world whose subject the editor did not train on."""
        return [c for c in cases if not is_training_subject(c.request.subject)]

    def network(self, ctx: EditContext, digest: str | None = None) -> tuple[MendNetwork, dict[str, Any]]:
        """The trained editor for the context's (unedited) model, loaded once; with ``digest``, the one whose
        weights have that sha256 (the editor a run started with)."""
        loaded = self._loaded
        if loaded is None or loaded[0] != ctx.fingerprint or digest not in (None, loaded[2]["weights_sha256"]):
            path = find_editor(ctx, self.hparams, digest)
            net, manifest = load_editor(path, ctx.fingerprint)
            if digest not in (None, manifest["weights_sha256"]):
                raise ConfigError(f"MEND editor {path} is not the one this run started with (weights sha256 "
                                  f"{digest[:12]}...); resume with that one")
            self._loaded = (ctx.fingerprint, net.to(ctx.device), manifest)
        return self._loaded[1], self._loaded[2]

    def prepare_editor(self, ctx: EditContext) -> None:
        """The trained editor, loaded (and checked against the model's fingerprint)."""
        self.network(ctx)

    def compute(self, ctx: EditContext, requests: Sequence[EditRequest | EditCase], state: EditState) -> Delta:
        # the editor is pinned in the method state (checkpointed): a resumed run uses the one it started with,
        # even when another has been trained for the model since
        pinned = state.get(STATE_KEY)
        net, manifest = self.network(ctx, bytes(pinned.tolist()).hex() if pinned is not None else None)
        if pinned is None:
            state[STATE_KEY] = torch.tensor(list(bytes.fromhex(manifest["weights_sha256"])), dtype=torch.uint8)
        items = as_items(requests)
        if manifest.get("split") == "subjects":
            seen = [i.request.subject for i in items if is_training_subject(i.request.subject)]
            if seen:
                raise EditError(f"MEND's editor was trained on the facts of {seen[0]!r} (a testbed world's "
                                f"training subjects, 1 in {SPLIT}); edit another subject")
        params = edited_params(ctx.model, ctx.anatomy, self.hparams)
        factors = gradient_factors(ctx, items, [m for m, *_ in params])
        updates = {}
        with torch.no_grad():
            for module, param, _, _ in params:
                left, right = net.factors(param, *factors[module])
                updates[param] = Update(param, ctx.anatomy.transposed, left=left.contiguous(), right=right.contiguous())
        tokens = int(next(iter(factors.values()))[0].shape[0])
        return Delta(updates, {"method": self.name, "layers": list(self.hparams.layers), "tokens": tokens,
                               "editor": manifest.get("path", "")})
