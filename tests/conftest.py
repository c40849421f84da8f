"""Shared fixtures.

The tests keep their own editscale cache (``~/.cache/editscale-tests``, or ``$EDITSCALE_TEST_HOME``), so that
``testbed:tiny`` and the statistics they build do not land in the user's cache; an ``EDITSCALE_HOME`` the user
set is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("EDITSCALE_HOME", os.environ.get("EDITSCALE_TEST_HOME",
                                                       str(Path.home() / ".cache" / "editscale-tests")))


@pytest.fixture(scope="session")
def tiny_testbed() -> Path:
    """The built ``testbed:tiny`` model directory (built once per cache, about a minute on 2 cores).

    It lives in the tests' editscale cache (``$EDITSCALE_HOME``; see the module docstring), so
    ``load_model("testbed:tiny")`` finds the same directory, and a machine that has built it before reuses it.
    """
    from editscale.testbed.registry import ensure_built

    return ensure_built("tiny", progress=False)


@pytest.fixture()
def cli(capsys):
    """Run the ``editscale`` CLI in-process: ``cli(*args) -> (exit code, stdout, stderr)``."""
    from editscale.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def pytest_collection_modifyitems(config, items):
    """Tests marked ``fuzz`` (the fuzzer's long profile) run only when ``-m`` names them."""
    if "fuzz" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="the fuzzer's long profile: run with -m fuzz")
    for item in items:
        if "fuzz" in item.keywords:
            item.add_marker(skip)
