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


# tests over 2 s on 2 threads that need no testbed (measured with --durations); with every test that uses the
# tiny testbed (its build takes a minute where it is not cached) they make the ``slow`` marker, so that
# ``python -m pytest -q -m "not slow"`` is a fast subset
SLOW = {
    "test_ray_sweep_killed_part_way_and_rerun_matches_uninterrupted", "test_eval_json",
    "test_resume_after_sigkill_is_identical", "test_two_runs_into_one_directory_one_runs_the_other_is_refused",
    "test_sigkill_during_setup_leaves_no_run_or_one_that_resumes", "test_cli_eval_with_method",
    "test_report_of_a_sweep_averages_seeds_with_a_band_and_links_the_cells", "test_real_methods_interrupted_and_resumed_match",
    "test_edit_returns_an_applied_delta", "test_storage_filling_mid_run_is_one_line_and_resumes_identically",
    "test_a_damaged_checkpoint_resumes_from_the_one_before", "test_a_report_that_cannot_be_written_whole_leaves_nothing",
    "test_local_sweep_retries_a_crashed_cell_from_its_checkpoint_and_reruns_skip", "test_demo_plumbing",
    "test_evaluate_edits_is_the_single_edit_protocol", "test_runner_records_the_panel_and_the_report_draws_it",
    "test_the_report_fits_a_browser_page", "test_eval_errors_are_one_line",
    "test_demo_command_says_its_threads_first_and_prints_the_summary",
}


def pytest_collection_modifyitems(config, items):
    """``slow``: the tests in ``SLOW`` and every test that uses the tiny testbed. Tests marked ``fuzz`` (the
    fuzzer's long profile) run only when ``-m`` names them."""
    for item in items:
        if item.originalname in SLOW or "tiny_testbed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    if "fuzz" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="the fuzzer's long profile: run with -m fuzz")
    for item in items:
        if "fuzz" in item.keywords:
            item.add_marker(skip)
