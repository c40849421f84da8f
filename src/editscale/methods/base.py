"""The editing contract: a method computes a ``Delta``; the caller applies, reverts, measures or stores it.

- ``Delta``: weight updates keyed by parameter name, each dense or low-rank, always described as an
  (out, in) matrix; ``apply`` keeps the original tensors so ``revert`` restores them bit-exactly.
- ``EditMethod``: what every method declares (its hyperparameters, description, paper, default layers, preset
  sections, what it prepares) and implements (``compute``), registered by name.
- ``EditState``: what a method remembers between edits (AlphaEdit's keys, ...), as named tensors so a
  checkpoint can store it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from editscale.errors import ConfigError
from editscale.methods.catalog import method_modules
from editscale.methods.layer_rules import LayerRule, OneLayer

if TYPE_CHECKING:
    from editscale.data.records import EditRequest
    from editscale.methods.context import EditContext


@dataclass
class Update:
    """One matrix's update, (out, in): dense, or ``left @ right`` with left (out, r), right (r, in)."""

    param: str  # parameter name in model.state_dict()
    transposed: bool  # whether the parameter is stored (in, out), as GPT-2's Conv1D
    dense: torch.Tensor | None = None
    left: torch.Tensor | None = None
    right: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.dense is None) == (self.left is None or self.right is None):
            raise ValueError("an Update is either dense or (left, right)")

    def matrix(self) -> torch.Tensor:
        """The (out, in) update as a dense matrix."""
        return self.dense if self.dense is not None else self.left @ self.right

    def stored(self) -> torch.Tensor:
        m = self.matrix()
        return m.T if self.transposed else m

    @property
    def rank(self) -> int | None:
        return None if self.dense is not None else self.left.shape[1]

    def norm(self) -> float:
        return float(self.matrix().double().norm())


@dataclass
class Delta:
    """A weight update of a model. Methods return one and never touch the model's weights themselves."""

    updates: dict[str, Update] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # per-call diagnostics (losses, norms, ...)
    _originals: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def applied(self) -> bool:
        return bool(self._originals)

    def params(self) -> list[str]:
        return list(self.updates)

    def apply(self, model: nn.Module) -> Delta:
        """Add the update to the model's weights in place, remembering the originals. Returns self."""
        if self.applied:
            raise RuntimeError("this Delta is already applied; revert it first")
        params = dict(model.named_parameters())
        missing = [n for n in self.updates if n not in params]
        if missing:
            raise KeyError(f"model has no parameter(s) {missing}")
        with torch.no_grad():
            for name, upd in self.updates.items():
                p = params[name]
                self._originals[name] = p.detach().clone()
                p.add_(upd.stored().to(device=p.device, dtype=p.dtype))
        return self

    def revert(self, model: nn.Module) -> None:
        """Restore the weights this Delta changed, bit-exactly."""
        if not self.applied:
            raise RuntimeError("this Delta is not applied")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, orig in self._originals.items():
                params[name].copy_(orig)
        self._originals.clear()

    def forget_originals(self) -> None:
        """Drop the saved originals (frees memory); the update stays applied and can no longer be reverted."""
        self._originals.clear()

    def norms(self) -> dict[str, float]:
        return {n: u.norm() for n, u in self.updates.items()}

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor mapping (for safetensors): dense as ``NAME``, low-rank as ``NAME::left/right``."""
        flat = {}
        for name, u in self.updates.items():
            tag = "T" if u.transposed else "N"
            if u.dense is not None:
                flat[f"{name}::dense::{tag}"] = u.dense.detach().contiguous().cpu()
            else:
                flat[f"{name}::left::{tag}"] = u.left.detach().contiguous().cpu()
                flat[f"{name}::right::{tag}"] = u.right.detach().contiguous().cpu()
        return flat

    @classmethod
    def from_tensors(cls, flat: dict[str, torch.Tensor]) -> Delta:
        parts: dict[str, dict[str, Any]] = {}
        for key, t in flat.items():
            name, kind, tag = key.rsplit("::", 2)
            parts.setdefault(name, {"transposed": tag == "T"})[kind] = t
        return cls({n: Update(n, **p) for n, p in parts.items()})


class EditState:
    """Named tensors a method carries from one edit call to the next (serializable for checkpoints)."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None) -> None:
        self.tensors: dict[str, torch.Tensor] = dict(tensors or {})

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.tensors[key] = value

    def get(self, key: str, default=None):
        return self.tensors.get(key, default)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor]) -> EditState:
        return cls(d)


# what a method may need prepared from the unedited model before its first edit (``EditMethod.needs``)
NEEDS: dict[str, str] = {
    "statistics": "second-moment statistics of the edited layers' keys (computed once, cached on disk)",
    "prefixes": "context prefixes sampled from the model",
    "anchor": "a norm anchor from calibration edits, when norm_anchor is on",
    "projectors": "null-space projectors of the statistics",
    "editor": "a trained editor network",
}


class EditMethod:
    """Base class of every editing method. A subclass declares itself and implements ``compute``:

    - ``name`` (its registry name), ``Hparams`` (its hyperparameters), ``description`` (one line) and
      ``paper`` (a short citation);
    - ``layer_rule``: its default layers on a model whose preset gives none (``layer_rules``);
    - ``preset_section``: another method's preset section read before its own (r-ROME reads ROME's);
    - ``needs``: what ``prepare`` computes from the unedited model, in order (``NEEDS``), each by its
      ``prepare_<need>`` method;
    - ``edits_last_layer``: whether the model's last layer may be edited (gradient-based methods read every
      position's gradient; a target at the subject position has none there);
    - ``is_default``: the method used when none is named (one method declares it; not inherited).

    Hyperparameter resolution, the editor and the CLI read these declarations; no other module names a method.
    ``compute`` must not leave the model changed: it may apply temporary updates (MEMIT, layer by layer) but
    restores the weights before returning the ``Delta``.
    """

    name: ClassVar[str]
    Hparams: ClassVar[type]
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    layer_rule: ClassVar[LayerRule] = OneLayer()
    preset_section: ClassVar[str | None] = None
    needs: ClassVar[tuple[str, ...]] = ()
    edits_last_layer: ClassVar[bool] = False
    is_default: ClassVar[bool] = False

    def __init__(self, hparams: Any) -> None:
        self.hparams = hparams

    def compute(self, ctx: EditContext, requests: Sequence[EditRequest], state: EditState) -> Delta:
        raise NotImplementedError

    def prepare(self, ctx: EditContext) -> None:
        """Compute, on the unedited model, what the method needs (``needs``, in the order declared: e.g.
        statistics, prefixes, a norm anchor, AlphaEdit's projectors; MEND's editor); ``Editor.prepare`` calls it
        before the first edit. What is not prepared is computed on first use."""
        for need in self.needs:
            getattr(self, f"prepare_{need}")(ctx)

    def prepare_statistics(self, ctx: EditContext) -> None:
        """The second moments of the edited layers' keys."""
        ctx.second_moments(list(self.hparams.layers), self.hparams)

    def prepare_prefixes(self, ctx: EditContext) -> None:
        """The context prefixes the targets are optimised over."""
        from editscale.methods.prefixes import PrefixSpec

        ctx.prefixes(PrefixSpec.from_hparams(self.hparams))

    @classmethod
    def preset_sections(cls) -> tuple[str, ...]:
        """The preset sections the method reads, in order (later values win)."""
        return tuple(dict.fromkeys(s for s in (cls.preset_section, cls.name) if s))

    @classmethod
    def default_layers(cls, n_layers: int, manifest: dict[str, Any] | None = None) -> list[int]:
        """The edited layers on a model of ``n_layers`` layers whose preset gives none (``layer_rule``)."""
        return cls.layer_rule.layers(n_layers, manifest)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The method's declarations, as plain data (``editscale methods``)."""
        return {"name": cls.name, "description": cls.description, "paper": cls.paper,
                "hparams": cls.Hparams.__name__, "preset_sections": list(cls.preset_sections()),
                "needs": list(cls.needs), "default_layers": cls.layer_rule.describe(),
                "edits_last_layer": cls.edits_last_layer, "default": bool(cls.__dict__.get("is_default"))}

    @classmethod
    def holds_out(cls, data: str) -> bool:
        """Whether some records of ``data`` (a records spec) are the method's own training data, to be left
        out of its edits (MEND's editor trains on part of a testbed world). False by default."""
        return False

    @classmethod
    def held_out_cases(cls, cases: list) -> list:
        """The cases the method may edit when ``holds_out``: all by default."""
        return cases


_REGISTRY: dict[str, type[EditMethod]] = {}


def register(cls: type[EditMethod]) -> type[EditMethod]:
    """Class decorator: make a method available by ``cls.name`` (its ``needs`` checked against ``NEEDS``)."""
    unknown = [n for n in cls.needs if n not in NEEDS or not hasattr(cls, f"prepare_{n}")]
    if unknown:
        raise TypeError(f"method {cls.name!r} needs {unknown[0]!r}: not one of {sorted(NEEDS)} with a "
                        f"prepare_{unknown[0]} method")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    _load_builtin_methods()
    return sorted(_REGISTRY)


def get_method_class(name: str) -> type[EditMethod]:
    _load_builtin_methods()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_listing() -> list[dict[str, Any]]:
    """Every registered method's declarations (``EditMethod.describe``), by name."""
    return [get_method_class(n).describe() for n in method_names()]


def default_method() -> str:
    """The name of the method used when none is named (the one that declares ``is_default``)."""
    _load_builtin_methods()
    (name,) = [n for n, c in _REGISTRY.items() if c.__dict__.get("is_default")]
    return name


def usable_cases(method: str, data: str, cases: list) -> list:
    """The cases of ``data`` that ``method`` may edit (runs, eval and edit leave out a method's training
    records: ``EditMethod.holds_out``)."""
    cls = get_method_class(method)
    return cls.held_out_cases(cases) if cls.holds_out(str(data)) else cases


def _load_builtin_methods() -> None:
    """Import the modules that register the built-in methods (``catalog.method_modules``)."""
    import importlib

    for mod in method_modules():
        importlib.import_module(mod)
