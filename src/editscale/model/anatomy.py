"""Where each architecture keeps its parts. The only module that knows module names.

Methods ask for "the MLP output matrix of layer 5 as (out, in)" and never spell ``c_proj`` or
``down_proj`` themselves. Adding a model family is one entry in ``FAMILIES`` plus a test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editscale.errors import UnsupportedModelError


@dataclass(frozen=True)
class Anatomy:
    """Module paths of one architecture family, relative to the model (layers) or a layer (MLP parts).

    ``transposed`` is True where the MLP matrices are stored (in, out) as in GPT-2's Conv1D; every public
    accessor here speaks (out, in) regardless.
    """

    family: str
    layers: str  # path of the ModuleList of decoder layers
    mlp_in: str  # relative to a layer: the matrix whose output feeds the nonlinearity
    mlp_out: str  # relative to a layer: the MLP output matrix (the one ROME/MEMIT edit)
    mlp_norm: str  # relative to a layer: the norm whose output enters the MLP
    final_norm: str  # path of the norm before the unembedding
    transposed: bool = False
    mlp_gate: str | None = None  # gated MLPs (Llama): the gate projection
    attn: str | None = None  # relative to a layer: the self-attention module (its output: causal tracing)
    mlp_post_norm: str | None = None  # relative to a layer: a norm on the MLP's output before the residual add

    # --- names -------------------------------------------------------------------------------------
    def layer_name(self, i: int) -> str:
        return f"{self.layers}.{i}"

    def mlp_out_name(self, i: int) -> str:
        return f"{self.layers}.{i}.{self.mlp_out}"

    def mlp_post_norm_name(self, i: int) -> str | None:
        """Layer i's norm on the MLP output before the residual add (Gemma 3), or None where the MLP output is
        added to the residual as it is."""
        return None if self.mlp_post_norm is None else f"{self.layers}.{i}.{self.mlp_post_norm}"

    def mlp_matrix_name(self, i: int, which: str) -> str:
        """Layer i's MLP matrix module: ``"in"`` (its output feeds the nonlinearity), ``"out"`` (the one ROME
        edits) or ``"gate"`` (gated MLPs only). All of a family's MLP matrices face the same way."""
        rel = {"in": self.mlp_in, "out": self.mlp_out, "gate": self.mlp_gate}.get(which)
        if rel is None:
            raise UnsupportedModelError(f"the {self.family} anatomy has no MLP matrix {which!r}")
        return f"{self.layers}.{i}.{rel}"

    def mlp_name(self, i: int) -> str:
        """Layer i's whole MLP module (its output is what the MLP adds to the residual stream)."""
        return f"{self.layers}.{i}.{self.mlp_out.rsplit('.', 1)[0]}"

    def attn_name(self, i: int) -> str:
        """Layer i's self-attention module (its main output is what attention adds to the residual stream)."""
        if self.attn is None:
            raise UnsupportedModelError(f"the {self.family} anatomy names no attention module")
        return f"{self.layers}.{i}.{self.attn}"

    @staticmethod
    def embed_name(model: nn.Module) -> str:
        """Path of the input token embedding module (causal tracing adds its noise to this output)."""
        emb = model.get_input_embeddings()
        return next(name for name, m in model.named_modules() if m is emb)

    def weight_name(self, i: int) -> str:
        """Parameter name of layer i's MLP output matrix (as in ``model.state_dict()``)."""
        return f"{self.mlp_out_name(i)}.weight"

    # --- modules -----------------------------------------------------------------------------------
    def n_layers(self, model: nn.Module) -> int:
        return len(model.get_submodule(self.layers))

    def layer(self, model: nn.Module, i: int) -> nn.Module:
        self._check_layer(model, i)
        return model.get_submodule(self.layer_name(i))

    def mlp_out_module(self, model: nn.Module, i: int) -> nn.Module:
        self._check_layer(model, i)
        return model.get_submodule(self.mlp_out_name(i))

    # --- the edited matrix, always (out, in) ------------------------------------------------------
    def weight_param(self, model: nn.Module, i: int) -> nn.Parameter:
        """The raw parameter of layer i's MLP output matrix, in its stored layout."""
        return self.mlp_out_module(model, i).weight

    def weight(self, model: nn.Module, i: int) -> torch.Tensor:
        """Layer i's MLP output matrix as an (out, in) view (no copy)."""
        w = self.weight_param(model, i)
        return w.T if self.transposed else w

    def to_stored(self, mat_out_in: torch.Tensor) -> torch.Tensor:
        """Turn an (out, in) matrix into this family's stored layout."""
        return mat_out_in.T if self.transposed else mat_out_in

    def key_dim(self, model: nn.Module, i: int = 0) -> int:
        """Width of the keys (inputs of the MLP output matrix)."""
        return self.weight(model, i).shape[1]

    def hidden_dim(self, model: nn.Module, i: int = 0) -> int:
        return self.weight(model, i).shape[0]

    def _check_layer(self, model: nn.Module, i: int) -> None:
        n = self.n_layers(model)
        if not 0 <= i < n:
            raise UnsupportedModelError(f"layer {i} does not exist: this {self.family} model has layers 0-{n - 1}")


GPT2 = Anatomy("gpt2", "transformer.h", "mlp.c_fc", "mlp.c_proj", "ln_2", "transformer.ln_f", transposed=True,
               attn="attn")
GPTJ = Anatomy("gptj", "transformer.h", "mlp.fc_in", "mlp.fc_out", "ln_1", "transformer.ln_f", attn="attn")
GPT_NEOX = Anatomy("gpt_neox", "gpt_neox.layers", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h",
                   "post_attention_layernorm", "gpt_neox.final_layer_norm", attn="attention")
LLAMA = Anatomy("llama", "model.layers", "mlp.up_proj", "mlp.down_proj", "post_attention_layernorm",
                "model.norm", mlp_gate="mlp.gate_proj", attn="self_attn")
# Gemma 3 (text): Llama's gated MLP between its own pair of norms (pre_feedforward_layernorm before it,
# post_feedforward_layernorm on its output, before the residual add). Its embeddings are scaled inside the
# embedding module; logits always come from the model's own forward (its LM head and any soft-capping).
GEMMA3 = Anatomy("gemma3", "model.layers", "mlp.up_proj", "mlp.down_proj", "pre_feedforward_layernorm",
                 "model.norm", mlp_gate="mlp.gate_proj", attn="self_attn",
                 mlp_post_norm="post_feedforward_layernorm")

# model_type (from the HF config) -> anatomy. Mistral and Qwen2 share Llama's layout.
FAMILIES: dict[str, Anatomy] = {
    "gpt2": GPT2,
    "gptj": GPTJ,
    "gpt_neox": GPT_NEOX,
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "gemma3_text": GEMMA3,
}


def get_anatomy(model: nn.Module) -> Anatomy:
    """The anatomy of a Hugging Face causal LM, from its config's ``model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"no anatomy for model_type {model_type!r}; supported: {', '.join(sorted(FAMILIES))} "
            "(add an entry to editscale.model.anatomy.FAMILIES)"
        )
    return FAMILIES[model_type]
