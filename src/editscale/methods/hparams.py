"""Hyperparameters of the editing methods: validated pydantic models with the papers' defaults.

``HparamsBase`` (one-line ``ConfigError`` naming the bad field, YAML loading), the shared parts (statistics,
target optimisation) and each method family's fields. How a method's values are chosen for a model (class
defaults < the model's preset < the caller's overrides, layers from the method's rule) is
``preset_resolution.py``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from editscale.errors import ConfigError, config_error


class HparamsBase(BaseModel):
    """Validated, YAML-loadable hyperparameters; unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def validated(cls, data: dict[str, Any] | None = None) -> Self:
        """Build from a mapping, raising a one-line ``ConfigError`` that names the bad field."""
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as e:
            raise config_error(cls.__name__, e) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        return cls.validated(read_hparams_file(path))

    def updated(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated)."""
        return type(self).validated({**self.model_dump(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def read_hparams_file(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping of hyperparameters; an optional ``method`` key is returned with the rest."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"hyperparameter file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"hyperparameter file {str(p)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"hyperparameter file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"hyperparameter file {str(p)!r} must hold a mapping of field: value")
    return data


# --------------------------------------------------------------------------------------------------------
# the shared parts
# --------------------------------------------------------------------------------------------------------
class StatsHparams(HparamsBase):
    """Second-moment statistics of the keys (C = E[k k^T])."""

    mom2_corpus: str | None = Field(None, description="text file, testbed:NAME, hub:NAME; None: the model's own")
    # how many keys: texts (the reference implementations' mom2_n_samples counts texts: 100,000 Wikipedia texts
    # of up to mom2_max_length tokens) and/or key vectors (one per token); the first reached ends the pass
    mom2_n_texts: PositiveInt | None = 100_000
    mom2_n_tokens: PositiveInt | None = None
    # texts drawn at random (seeded by mom2_seed) across the whole corpus, as the reference; or its first texts
    mom2_sampling: Literal["random", "in_order"] = "random"
    mom2_seed: NonNegativeInt = 0
    mom2_dtype: Literal["float32", "float64"] = "float32"
    mom2_max_length: PositiveInt = 1024  # tokens per text (clipped to the model's context)
    mom2_batch_size: PositiveInt = 16

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "mom2_n_samples" in data:
            raise ValueError("mom2_n_samples is gone, its unit was unclear: give mom2_n_texts (texts, the reference "
                             "implementations' unit) or mom2_n_tokens (key vectors, editscale's old meaning)")
        return data


class TargetHparams(HparamsBase):
    """The shared target-vector optimisation (ROME's v*, MEMIT's z) and its context prefixes."""

    # context prefixes sampled from the model: (length in tokens, count) per group
    context_lengths: list[tuple[PositiveInt, PositiveInt]] = [(5, 10), (10, 10)]
    context_starts: list[str] | None = None  # words the samples start from; None: the BOS/EOS token
    context_top_k: PositiveInt = 5
    key_average: Literal["uniform", "grouped"] = "uniform"  # ROME: uniform; MEMIT: per group, then groups
    v_lr: PositiveFloat = 0.5
    v_steps: PositiveInt = 20
    v_weight_decay: NonNegativeFloat = 0.5  # x ||delta|| / ||init||^2
    kl_factor: NonNegativeFloat = 0.0625
    kl_prompt: str = "{} is a"
    # editscale's variant, not the reference's: KL also on the case's other facts of the same subject (when the
    # record gives them). The reference code's KL term uses only kl_prompt ("{subject} is a").
    kl_other_facts: bool = False
    clamp_norm_factor: PositiveFloat = 4.0  # ||delta|| <= factor x ||init||
    v_early_stop: NonNegativeFloat = 5e-2  # stop a request once its loss (or NLL, see v_stop_on) is below this
    # what v_early_stop is compared with: the whole loss (the reference code), or the new target's NLL alone
    # (for models whose KL term cannot fall below the threshold, where "loss" always runs all v_steps), or
    # "argmax": once every new-target token is the argmax in every prefixed prompt (ENCORE's most-probable
    # early stopping; v_early_stop is then unused)
    v_stop_on: Literal["loss", "nll", "argmax"] = "loss"
    # with "argmax": stop at the N-th step at which the target is the argmax everywhere (counted, not
    # necessarily in a row: ENCORE's reference, whose prob_cutoff -N gives 4 for GPT-2 XL, 2-3 for Llama)
    v_argmax_hits: PositiveInt = 1
    target_batch: PositiveInt = 64  # requests optimised together (memory bound only; results are the same)
    # norm anchoring (NAS, SasyaTitech/NAS; see methods/norm_anchor.py): each solved value vector v* (the MLP
    # output at the last subject token plus its delta) is rescaled to a fixed norm of the unedited model: the
    # mean ||v*|| of norm_anchor_samples calibration edits (the top 5% left out), or norm_anchor_value
    norm_anchor: bool = False
    norm_anchor_value: PositiveFloat | None = None  # the anchor itself; None: measured on calibration edits
    norm_anchor_data: str | None = None  # records of the calibration edits; None: the model's world.jsonl
    norm_anchor_samples: PositiveInt = 1000  # the reference's nas_restart
    # a v* longer than this many anchors is dropped (v* = the unedited MLP output, no edit), as the reference
    norm_anchor_skip: PositiveFloat | None = 2.0

    @field_validator("kl_prompt")
    @classmethod
    def _kl_slot(cls, v: str) -> str:
        if v.count("{}") != 1:
            raise ValueError("must contain exactly one '{}' where the subject goes")
        return v

    @field_validator("context_lengths")
    @classmethod
    def _lengths(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if any(length < 2 for length, _ in v):
            raise ValueError("prefix lengths count the start token and must be at least 2")
        return v


class LayersHparams(HparamsBase):
    """The edited layers, 0-indexed: ``layers: [4]`` or ``layers: [3, 4, 5]``, sorted; None until resolved (the
    model's preset, else the method's default layers). ``layer: N``, the former name for methods that edit one
    layer, is read as ``layers: [N]``."""

    layers: list[int] | None = None
    max_layers: ClassVar[int | None] = None  # methods that edit one layer: 1

    @model_validator(mode="before")
    @classmethod
    def _former_layer(cls, data: Any) -> Any:
        if isinstance(data, dict) and "layer" in data:
            data = dict(data)
            layer = data.pop("layer")
            if layer is not None:
                if data.get("layers") is not None:
                    raise ValueError("give layers only (layer is its former name)")
                data["layers"] = [layer]
        return data

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must name at least one layer")
        if any(x < 0 for x in v):
            raise ValueError("layers are non-negative indices")
        if len(set(v)) != len(v):
            raise ValueError("layers must be distinct")
        if cls.max_layers is not None and len(v) > cls.max_layers:
            raise ValueError(f"this method edits {cls.max_layers} layer{'s' * (cls.max_layers > 1)}, e.g. "
                             f"layers: [{v[-1]}]")
        return sorted(v)


class RomeHparams(TargetHparams, StatsHparams, LayersHparams):
    """ROME and r-ROME (Meng et al. 2022; Gupta et al. 2024): one layer, rank one per request."""

    max_layers: ClassVar[int | None] = 1
    mom2_adjustment: bool = True  # u = C^-1 k*; False: u = k*
    norm_anchor_skip: PositiveFloat | None = 5.0  # the NAS reference's ROME threshold (2 for the z methods)


class SpreadHparams(TargetHparams, StatsHparams, LayersHparams):
    """The MEMIT family (MEMIT, EMMET, AlphaEdit, ENCORE): z at the last edited layer, residuals spread over
    the layers, each layer's update from its own closed-form solve."""

    v_steps: PositiveInt = 25
    clamp_norm_factor: PositiveFloat = 0.75
    context_lengths: list[tuple[PositiveInt, PositiveInt]] = [(10, 5)]
    context_starts: list[str] | None = ["The", "Therefore", "Because", "I", "You"]
    key_average: Literal["uniform", "grouped"] = "grouped"


class MemitHparams(SpreadHparams):
    """MEMIT (Meng et al. 2023): z at the last edited layer, residuals spread over the layers."""

    mom2_update_weight: PositiveFloat = 15_000  # lambda


class EmmetHparams(MemitHparams):
    """EMMET (Gupta et al. 2024, unified-model-editing): equality constraints on the edited keys.
    C' = w C + l_u I; Delta = R^T (K C'^-1 K^T + ridge I)^-1 K C'^-1; the ridge only for batches of 2+.
    The class defaults are the reference's GPT-J values (hparams/EMMET/EleutherAI_gpt-j-6B.json)."""

    # w does not trade preserved keys against new ones as in MEMIT (the constraints hold for any w): it only
    # sets the ridge's weight, so it is not scaled with the key width for models without a preset
    width_scaled_lambda: ClassVar[bool] = False  # (its layers default to the ROME layer, as the reference's)
    mom2_update_weight: PositiveFloat = 1.0  # w
    update_norm_lambda: NonNegativeFloat = 0.0  # l_u
    emmet_lambda: NonNegativeFloat = 0.1  # the ridge inside (K C'^-1 K^T)^-1 for batches


class AlphaEditHparams(SpreadHparams):
    """AlphaEdit (Fang et al. 2025, jianghoucheng/AlphaEdit): the update projected onto the null space of the
    preserved keys; keys of earlier edits accumulate. Class defaults: the reference's GPT-J values."""

    nullspace_threshold: PositiveFloat = 2e-2  # eigenvalues of C below this span the null space
    l2: PositiveFloat = 10.0  # the reference's L2
    # weight of the earlier edits' K_p^T K_p beside the current keys (the reference: 1). It grows with every
    # edit while the preserved second moment does not: on a small model it soon outweighs everything else
    prev_edits_weight: NonNegativeFloat = 1.0


class EncoreHparams(MemitHparams):
    """ENCORE (Gupta et al. 2025, knowledge-editing-regularization): MEMIT with a Frobenius penalty on the
    update, earlier edits' keys preserved, and most-probable early stopping of the target optimisation."""

    update_norm_lambda: NonNegativeFloat = 10.0  # l_u: the reference's GPT-2 XL and Llama-2 value
    add_prev_edits: bool = True  # earlier edits' keys join the preserved set
    # their weight beside w C (the reference: 1, unscaled by w; with w = 20,000 on GPT-2 XL, 1,000 earlier edits
    # weigh ~0.05 of w C, on testbed:demo at w = 200 ~4.6 of it)
    prev_edits_weight: NonNegativeFloat = 1.0
    v_stop_on: Literal["loss", "nll", "argmax"] = "argmax"  # MPES


class FtHparams(LayersHparams):
    """Fine-tuning one layer's MLP output matrix: FT-L (L-inf bound) or FT-W (weight decay)."""

    max_layers: ClassVar[int | None] = 1
    lr: PositiveFloat = 5e-4
    steps: PositiveInt = 25
    norm_constraint: PositiveFloat | None = 5e-5  # L-inf bound on the change; None: unbounded
    weight_decay: NonNegativeFloat = 0.0  # Adam's L2 term on the whole weight, as the reference code
    # stop once the mean loss is below this; as the reference, a batch whose loss is already below it takes
    # no optimiser step (an edit the model already satisfies does not move the weights)
    early_stop: NonNegativeFloat = 1e-2
    batch_size: PositiveInt = 64  # prompts per optimiser step
    # what is tuned: the layer's MLP output matrix (the ROME paper's FT-L, its rewrite_module mlp.c_proj /
    # fc_out), or every parameter of the layer's block (the MEMIT repository's GPT-J FT-W, rewrite_module
    # transformer.h.{layer})
    scope: Literal["matrix", "block"] = "matrix"


class FtWHparams(FtHparams):
    """FT-W: weight decay instead of the L-inf bound (the MEMIT paper's GPT-J values)."""

    norm_constraint: PositiveFloat | None = None
    weight_decay: NonNegativeFloat = 5e-4
    scope: Literal["matrix", "block"] = "block"  # as the reference's FT-W: the whole block
