"""editscale: edit facts inside transformer language models and measure what editing at scale does to them.

    import editscale
    model, tokenizer, _ = editscale.load_model("testbed:demo")           # or smollm2-135m, a directory, ...
    delta = editscale.edit(model, tokenizer, requests, method="rome")   # applied; delta.revert(model) undoes it
    editor = editscale.Editor(model, tokenizer, method="memit")          # for repeated edits
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Editor", "edit", "load_model"]

if TYPE_CHECKING:
    from editscale.api import Editor, edit, load_model


def __getattr__(name: str) -> Any:  # lazy, so ``import editscale`` stays light
    if name in __all__:
        from editscale import api

        return getattr(api, name)
    raise AttributeError(f"module 'editscale' has no attribute {name!r}")
