"""Differences between transformers versions that editscale's own calls must bridge.

transformers 5.x renamed the key/value cache argument and output field from ``past_key_values`` to ``cache``
(the old name still works until 5.40 but warns); 4.x knows only the old name.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

from torch import nn


@lru_cache(maxsize=64)
def _cache_arg(forward_cls: type) -> str:
    params = inspect.signature(forward_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword arguments that pass ``cache`` (None: start one) to the model's forward, and ask for it back."""
    return {_cache_arg(type(model)): cache, "use_cache": True}


def output_cache(out: Any) -> Any:
    """The key/value cache a forward returned."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def is_cache(obj: Any) -> bool:
    """Whether ``obj`` is a transformers key/value cache object."""
    from transformers.cache_utils import Cache

    return isinstance(obj, Cache)


def cache_layer(cache: Any, layer: int) -> tuple[Any, Any]:
    """The (keys, values) a cache holds for one layer, (batch, kv heads, positions, head dim) each."""
    if hasattr(cache, "layers"):  # transformers 5.x
        entry = cache.layers[layer]
        return entry.keys, entry.values
    return cache.key_cache[layer], cache.value_cache[layer]  # 4.x DynamicCache
