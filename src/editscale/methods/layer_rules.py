"""Default edited layers: the rule each method declares (``EditMethod.layer_rule``) for a model without a preset.

A preset (``methods/presets``) or the caller's ``layers`` win; where neither gives layers, the method's rule
picks them from the model's depth, or from a testbed model's manifest, which records the layers causal tracing
recommends for it (``rome_layer``: one layer; ``memit_layers``: a span).

- ``OneLayer``: one layer, GPT-J's choice (5 of 28 layers) scaled to the depth (ROME, EMMET, FT);
- ``LayerSpan``: a span of layers, GPT-J's 3 to 8 of 28 scaled to the depth (MEMIT, AlphaEdit, ENCORE);
- ``LastBlocks``: the last few blocks (MEND's ``inner_params``).

The last block's output at the subject position reaches nothing, so the first two rules never pick it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# the testbed manifest's recommended layers (editscale_testbed.json, from the testbed's spec)
MANIFEST_ONE_LAYER = "rome_layer"
MANIFEST_SPAN = "memit_layers"


class LayerRule(Protocol):
    """What a method declares as ``layer_rule``: its default layers, and a line that says how they are chosen."""

    def layers(self, n_layers: int, manifest: dict[str, Any] | None = None) -> list[int]: ...

    def describe(self) -> str: ...


def _below_last(n_layers: int) -> int:
    """The deepest layer a target at the subject position can use: the last but one (0 for one layer)."""
    return max(0, n_layers - 2)


def _from_manifest(manifest: dict[str, Any] | None, key: str) -> list[int] | None:
    if manifest is None or key not in manifest:
        return None
    value = manifest[key]
    return sorted(int(x) for x in value) if isinstance(value, list) else [int(value)]


@dataclass(frozen=True)
class OneLayer:
    """One layer: the testbed manifest's ``rome_layer``, else ``fraction`` of the depth (GPT-J: 5 of 28)."""

    fraction: float = 5 / 28

    def layers(self, n_layers: int, manifest: dict[str, Any] | None = None) -> list[int]:
        found = _from_manifest(manifest, MANIFEST_ONE_LAYER)
        return found if found is not None else [min(_below_last(n_layers), round(n_layers * self.fraction))]

    def describe(self) -> str:
        return (f"one layer: a testbed's {MANIFEST_ONE_LAYER}, else {self.fraction * 28:g}/28 of the depth "
                "(GPT-J's choice scaled), never the last")


@dataclass(frozen=True)
class LayerSpan:
    """A span: the testbed manifest's ``memit_layers``, else ``first`` to ``last`` of the depth (GPT-J: 3-8 of
    28)."""

    first: float = 3 / 28
    last: float = 8 / 28

    def layers(self, n_layers: int, manifest: dict[str, Any] | None = None) -> list[int]:
        found = _from_manifest(manifest, MANIFEST_SPAN)
        if found is not None:
            return found
        top = _below_last(n_layers)
        first = min(top, round(n_layers * self.first))
        last = max(first, min(top, round(n_layers * self.last)))
        return list(range(first, last + 1))

    def describe(self) -> str:
        return (f"a span: a testbed's {MANIFEST_SPAN}, else {self.first * 28:g}/28 to {self.last * 28:g}/28 of the "
                "depth (GPT-J's span scaled), never the last")


@dataclass(frozen=True)
class LastBlocks:
    """The last ``count`` blocks; on a testbed model (one with a manifest) the ``count`` below its last."""

    count: int = 3
    below_last_on_testbed: bool = True

    def layers(self, n_layers: int, manifest: dict[str, Any] | None = None) -> list[int]:
        top = n_layers - (self.below_last_on_testbed and manifest is not None and n_layers > 1)
        return list(range(max(0, top - self.count), top))

    def describe(self) -> str:
        where = "; on a testbed model the ones below its last" if self.below_last_on_testbed else ""
        return f"the last {self.count} blocks{where}"

