"""Which hyperparameter values a method gets on a model: its class defaults < the model's preset < the caller's
overrides (``resolve_hparams``).

1. the class defaults, which are the GPT-J values of the reference implementations;
2. a preset for the model when it is recognised (GPT-2 XL, GPT-J 6B, GPT-NeoX 20B, Llama-family, SmolLM2, a
   testbed model with its ``editscale_testbed.json`` manifest): one YAML file per model kind in
   ``methods/presets``, see ``presets()`` and ``model_kind``;
3. the caller's overrides (a dict, a YAML file or an Hparams object).

What differs between methods is read from the method's class (``EditMethod``): the preset sections it reads,
its default layers where neither the preset nor the caller gives them (``layer_rule``, from the testbed
manifest or the model's depth) and whether it may edit the last layer. Every problem is a one-line
``ConfigError`` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from editscale.errors import ConfigError
from editscale.methods.base import get_method_class
from editscale.methods.hparams import HparamsBase, LayersHparams, read_hparams_file
from editscale.model.anatomy import Anatomy
from editscale.model.loading import model_dir, read_testbed_manifest

# --------------------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------------------
# One YAML file per model kind in ``methods/presets`` (package data): how the kind is recognised from the
# model's config (``match``), then per method the values that differ from the class defaults, each with its
# reason in a comment. Layers are 0-indexed; module names are the anatomy's and never appear there.
PRESET_DIR = "presets"
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


SHARED = "shared"  # a preset's section of values for every method that has the field (statistics, stops)


def preset_values(kind: str, method: str) -> dict[str, Any]:
    """The preset's values for ``method`` on a model of ``kind`` (empty when there are none): the ``shared``
    section's fields the method has, then its sections (``EditMethod.preset_sections``) in order, so a method
    that reads another's first (r-ROME ROME's) takes that section, then its own where the file has one."""
    preset = presets().get(kind)
    if not preset:
        return {}
    cls = get_method_class(method)
    fields = cls.Hparams.model_fields
    values = {k: v for k, v in preset.methods.get(SHARED, {}).items() if k in fields}
    for section in cls.preset_sections():
        values.update(preset.methods.get(section, {}))
    return values


def default_layers(method: str, n_layers: int, manifest: dict[str, Any] | None = None) -> list[int]:
    """Edited layers when none are given: the method's ``layer_rule`` (``layer_rules``) on the testbed
    manifest or the model's depth."""
    return get_method_class(method).default_layers(n_layers, manifest)


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
    method_cls = get_method_class(method)
    if "layers" in type(hp).model_fields:
        if hp.layers is None:
            default = method_cls.default_layers(n_layers, manifest)
            most = hp.max_layers if isinstance(hp, LayersHparams) else None
            hp = hp.updated(layers=default[-most:] if most else default)
        edits_at, field = list(hp.layers), "layers"
    else:  # Hparams that keep the former single ``layer`` field (a method defined outside editscale)
        if hp.layer is None:
            hp = hp.updated(layer=method_cls.default_layers(n_layers, manifest)[-1])
        edits_at, field = [hp.layer], "layer"
    bad = [x for x in edits_at if x >= n_layers]
    if bad:
        raise ConfigError(f"{cls.__name__}: field '{field}': layer {bad[0]} does not exist; the model has "
                          f"layers 0-{n_layers - 1}")
    # gradient-based methods (FT, MEND) read every position's gradient, so the last layer is theirs too
    if not method_cls.edits_last_layer and n_layers - 1 in edits_at:
        raise ConfigError(
            f"{cls.__name__}: field '{field}': layer {n_layers - 1} is the model's last, where nothing after the "
            "edited position reads the subject (the target has no gradient there); choose layers below "
            f"{n_layers - 1}")
    return hp
