"""Values made ready for JSON, which has no NaN or infinity: ``json_ready`` turns them into None (null), through
dicts, lists and tuples. One helper for every JSON editscale writes or prints (``--json``, scaling.json)."""

from __future__ import annotations

import math
from typing import Any


def json_ready(x: Any) -> Any:
    """``x`` with NaN and infinities as None (JSON's null)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x
