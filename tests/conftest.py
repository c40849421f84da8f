"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_testbed() -> Path:
    """The built ``testbed:tiny`` model directory (built once per cache, about a minute on 2 cores).

    It lives in the editscale cache (``$EDITSCALE_HOME``, default ``~/.cache/editscale``), so
    ``load_model("testbed:tiny")`` finds the same directory, and a machine that has built it before reuses it.
    """
    from editscale.testbed.registry import ensure_built

    return ensure_built("tiny", progress=False)
