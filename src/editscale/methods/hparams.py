"""Hyperparameters of the editing methods: validated pydantic models with the papers' defaults.

A method's hyperparameters are resolved in three steps (``resolve_hparams``):

1. the class defaults, which are the GPT-J values of the reference implementations;
2. a preset for the model when it is recognised (GPT-2 XL, GPT-J 6B, GPT-NeoX 20B, Llama-family, SmolLM2, a
   testbed model with its ``editscale_testbed.json`` manifest): one YAML file per model kind in
   ``methods/presets``, see ``presets()`` and ``model_kind``;
3. the caller's overrides (a dict, a YAML file or an Hparams object).

Layers left unset default from the manifest or from the model's depth (``default_layers``). Every problem is a
one-line ``ConfigError`` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
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
from torch import nn

from editscale.errors import ConfigError, config_error
from editscale.model.anatomy import Anatomy
from editscale.model.loading import model_dir, read_testbed_manifest


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


class RomeHparams(TargetHparams, StatsHparams):
    """ROME and r-ROME (Meng et al. 2022; Gupta et al. 2024): one layer, rank one per request."""

    layer: int | None = Field(None, ge=0)
    mom2_adjustment: bool = True  # u = C^-1 k*; False: u = k*
    norm_anchor_skip: PositiveFloat | None = 5.0  # the NAS reference's ROME threshold (2 for the z methods)


class SpreadHparams(TargetHparams, StatsHparams):
    """The MEMIT family (MEMIT, EMMET, AlphaEdit, ENCORE): z at the last edited layer, residuals spread over
    the layers, each layer's update from its own closed-form solve."""

    layers: list[int] | None = None
    v_steps: PositiveInt = 25
    clamp_norm_factor: PositiveFloat = 0.75
    context_lengths: list[tuple[PositiveInt, PositiveInt]] = [(10, 5)]
    context_starts: list[str] | None = ["The", "Therefore", "Because", "I", "You"]
    key_average: Literal["uniform", "grouped"] = "grouped"

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
        return sorted(v)


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


class FtHparams(HparamsBase):
    """Fine-tuning one layer's MLP output matrix: FT-L (L-inf bound) or FT-W (weight decay)."""

    layer: int | None = Field(None, ge=0)
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


# --------------------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------------------
# One YAML file per model kind in ``methods/presets`` (package data): how the kind is recognised from the
# model's config (``match``), then per method the values that differ from the class defaults, each with its
# reason in a comment. Layers are 0-indexed; module names are the anatomy's and never appear there.
PRESET_DIR = "presets"
PRESET_ALIASES = {"r-rome": "rome"}
_MATCH_KEYS = {"model_type", "layers", "width", "min_layers", "testbed_manifest"}


@dataclass(frozen=True)
class Preset:
    """One model kind's preset file: its name (the file's stem), how it is matched, its values per method."""

    name: str
    match: dict[str, Any]
    methods: dict[str, dict[str, Any]]

    def matches(self, model_type: str | None, n_layers: int | None, width: int | None, testbed: bool) -> int:
        """0 if the preset does not apply, else how specific it is (the most specific match wins)."""
        m = self.match
        if m.get("testbed_manifest") or testbed:
            return 10 if m.get("testbed_manifest") and testbed else 0
        if model_type not in m.get("model_type", []):
            return 0
        if "layers" in m and n_layers != m["layers"] or "width" in m and width != m["width"]:
            return 0
        if "min_layers" in m and (n_layers is None or n_layers < m["min_layers"]):
            return 0
        return 1 + ("layers" in m) + ("width" in m)


@cache
def presets() -> dict[str, Preset]:
    """Every preset file of the package, by name. A file with ``base: OTHER`` starts from OTHER's values,
    method by method and field by field, and overrides or adds its own."""
    import yaml

    out, bases = {}, {}
    for entry in sorted(resources.files("editscale.methods").joinpath(PRESET_DIR).iterdir(),
                        key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        name = entry.name.removesuffix(".yaml")
        data = yaml.safe_load(entry.read_text()) or {}
        match = data.pop("match", None)
        if not isinstance(match, dict) or not match or set(match) - _MATCH_KEYS:
            raise ConfigError(f"preset {entry.name}: 'match' must be a mapping of {sorted(_MATCH_KEYS)}")
        bases[name] = data.pop("base", None)
        out[name] = Preset(name, match, {k: dict(v or {}) for k, v in data.items()})
    for name, base in bases.items():
        if base is not None:
            if base not in out or bases[base] is not None:
                raise ConfigError(f"preset {name}.yaml: base {base!r} must be a preset without a base of its own")
            own = out[name].methods
            merged = {m: {**out[base].methods.get(m, {}), **own.get(m, {})} for m in {*out[base].methods, *own}}
            out[name] = Preset(name, out[name].match, merged)
    return out


def model_kind(model: nn.Module, manifest: dict[str, Any] | None = None) -> str:
    """Which preset applies (the name of its file in ``methods/presets``), or ``generic``: the most specific
    preset whose ``match`` fits the model's config (model_type, number of layers, width) or testbed manifest."""
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    n_layer = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    width = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    scores = {name: p.matches(mtype, n_layer, width, manifest is not None) for name, p in presets().items()}
    best = max(scores, key=lambda name: scores[name], default=None)
    return best if best is not None and scores[best] > 0 else "generic"


def preset_values(kind: str, method: str) -> dict[str, Any]:
    """The preset's values for ``method`` on a model of ``kind`` (empty when there are none). A method that
    shares another's section (r-ROME ROME's) takes that section, then its own where the file has one."""
    preset = presets().get(kind)
    if not preset:
        return {}
    values = dict(preset.methods.get(PRESET_ALIASES.get(method, method), {}))
    return {**values, **preset.methods.get(method, {})} if method in PRESET_ALIASES else values


SPREAD_METHODS = ("memit", "alphaedit", "encore")  # default to the MEMIT layers (EMMET: the ROME layer)


def default_layers(method: str, n_layers: int, manifest: dict[str, Any] | None = None) -> list[int]:
    """Edited layers when none are given: the testbed manifest's, else GPT-J's choice scaled to the depth
    (ROME at 5/28 of the depth, MEMIT over 3/28 to 8/28)."""
    if method == "mend":  # the reference's inner_params: the last 3 blocks (GPT-2 XL 45-47, GPT-J 25-27); on a
        # testbed model the 3 below its last, which writes the relation's object for every subject (testbed.yaml)
        top = n_layers - (manifest is not None and n_layers > 1)
        return list(range(max(0, top - 3), top))
    memit_like = method.startswith(SPREAD_METHODS)
    top = max(0, n_layers - 2)  # the last block's output at the subject position reaches nothing
    if manifest is not None:
        key = "memit_layers" if memit_like else "rome_layer"
        if key in manifest:
            value = manifest[key]
            return sorted(int(x) for x in value) if isinstance(value, list) else [int(value)]
    if memit_like:
        first = min(top, round(n_layers * 3 / 28))
        last = max(first, min(top, round(n_layers * 8 / 28)))
        return list(range(first, last + 1))
    return [min(top, round(n_layers * 5 / 28))]


GPTJ_KEY_DIM = 16_384


STATS_KEY_MULTIPLE = 10  # statistics from 10x the key width in key vectors (bench/bench_stats_quality.py)


def scaled_defaults(cls: type[HparamsBase], kind: str, model: nn.Module, anatomy: Anatomy) -> dict[str, Any]:
    """For models without a preset (generic): MEMIT's lambda scaled to the key width, and statistics from
    ``STATS_KEY_MULTIPLE`` x the key width in key vectors (texts drawn at random).

    lambda weighs the preserved keys (lambda C) against the new ones (K^T K); a typical key has
    k^T C^-1 k = key width, so GPT-J's balance (15,000 at width 16,384) is kept by scaling lambda with the width.
    On SmolLM2-135M, ROME's single edits from 2x the key width on scored as from 300,000 key vectors (and 10x
    put u = C^-1 k within 0.44 of its large-sample direction), where the papers' 100,000 texts would take hours.
    """
    if kind != "generic":
        return {}
    out: dict[str, Any] = {}
    if "mom2_n_tokens" in cls.model_fields:
        out.update(mom2_n_texts=None, mom2_n_tokens=STATS_KEY_MULTIPLE * anatomy.key_dim(model))
    if "mom2_update_weight" in cls.model_fields and getattr(cls, "width_scaled_lambda", True):
        out["mom2_update_weight"] = round(15_000 * anatomy.key_dim(model) / GPTJ_KEY_DIM, 1)
    return out


def resolve_hparams(
    method: str,
    cls: type[HparamsBase],
    model: nn.Module,
    anatomy: Anatomy,
    given: HparamsBase | dict[str, Any] | str | Path | None = None,
) -> HparamsBase:
    """The method's hyperparameters for this model: class defaults < model preset < ``given``.

    ``given`` is an Hparams object (used as is, except for unset layers), a mapping of overrides, or a YAML
    file of overrides. Unset layers are filled in (``default_layers``) and all layers are checked against the
    model's depth.
    """
    manifest = read_testbed_manifest(model_dir(model))
    if isinstance(given, HparamsBase):
        if not isinstance(given, cls):
            raise ConfigError(f"method {method!r} takes {cls.__name__}, got {type(given).__name__}")
        hp = given
    else:
        overrides = read_hparams_file(given) if isinstance(given, (str, Path)) else dict(given or {})
        named = overrides.pop("method", None)
        if named is not None and named != method:
            raise ConfigError(f"the hyperparameters are for method {named!r}, not {method!r}")
        kind = model_kind(model, manifest)
        preset = preset_values(kind, method)
        hp = cls.validated({**scaled_defaults(cls, kind, model, anatomy), **preset, **overrides})
    n_layers = anatomy.n_layers(model)
    if "layers" in type(hp).model_fields:
        if hp.layers is None:
            hp = hp.updated(layers=default_layers(method, n_layers, manifest))
        bad = [x for x in hp.layers if x >= n_layers]
        field = "layers"
    else:
        if hp.layer is None:
            hp = hp.updated(layer=default_layers(method, n_layers, manifest)[-1])
        bad = [hp.layer] if hp.layer >= n_layers else []
        field = "layer"
    if bad:
        raise ConfigError(f"{cls.__name__}: field '{field}': layer {bad[0]} does not exist; the model has "
                          f"layers 0-{n_layers - 1}")
    edits_at = hp.layers if "layers" in type(hp).model_fields else [hp.layer]
    # gradient-based methods (FT, MEND) read every position's gradient, so the last layer is theirs too
    if not method.startswith(("ft-", "mend")) and n_layers - 1 in edits_at:
        raise ConfigError(
            f"{cls.__name__}: field '{field}': layer {n_layers - 1} is the model's last, where nothing after the "
            "edited position reads the subject (the target has no gradient there); choose layers below "
            f"{n_layers - 1}")
    return hp
