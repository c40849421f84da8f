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
