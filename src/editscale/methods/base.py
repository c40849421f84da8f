"""The editing contract: a method computes a ``Delta``; the caller applies, reverts, measures or stores it.

- ``Delta``: weight updates keyed by parameter name, each dense or low-rank, always described as an
  (out, in) matrix; ``apply`` keeps the original tensors so ``revert`` restores them bit-exactly.
- ``EditMethod``: what every method implements (``compute``), registered by name.
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


class EditMethod:
    """Base class of every editing method. Subclasses set ``name`` and ``Hparams`` and implement ``compute``.

    ``compute`` must not leave the model changed: it may apply temporary updates (MEMIT, layer by layer) but
    restores the weights before returning the ``Delta``.
    """

    name: ClassVar[str]
    Hparams: ClassVar[type]

    def __init__(self, hparams: Any) -> None:
        self.hparams = hparams

    def compute(self, ctx: EditContext, requests: Sequence[EditRequest], state: EditState) -> Delta:
        raise NotImplementedError

    def prepare(self, ctx: EditContext) -> None:
        """Compute, on the unedited model, what the method derives from it once (AlphaEdit's projectors, a
        norm anchor); ``Editor.prepare`` calls it before the first edit. Nothing by default."""

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
    """Class decorator: make a method available by ``cls.name``."""
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


def usable_cases(method: str, data: str, cases: list) -> list:
    """The cases of ``data`` that ``method`` may edit (runs, eval and edit leave out a method's training
    records: ``EditMethod.holds_out``)."""
    cls = get_method_class(method)
    return cls.held_out_cases(cases) if cls.holds_out(str(data)) else cases


def _load_builtin_methods() -> None:
    import importlib

    for mod in BUILTIN_METHOD_MODULES:
        importlib.import_module(mod)


# modules that register the built-in methods when imported
BUILTIN_METHOD_MODULES: list[str] = ["editscale.methods.rome", "editscale.methods.memit", "editscale.methods.ft",
                                     "editscale.methods.emmet", "editscale.methods.alphaedit",
                                     "editscale.methods.encore", "editscale.methods.mend"]

