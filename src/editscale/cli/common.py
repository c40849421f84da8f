"""Shared CLI helpers."""

from __future__ import annotations

import json
import math
import sys
from typing import Any


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout (NaN and infinities become null)."""

    def clean(x):
        if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    sys.stdout.write(json.dumps(clean(obj)) + "\n")
