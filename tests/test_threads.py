"""The CPU threads the editscale command chooses (issue 16 part 1): the number asked for (--threads before the
command, EDITSCALE_THREADS), else OMP_NUM_THREADS, else the cores other processes leave free; the passive
OpenMP wait policy unless one is set; a run records and prints them."""

from __future__ import annotations

import json

import pytest
import torch

from editscale import threads


@pytest.fixture()
def env(monkeypatch):
    for name in ("EDITSCALE_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_requested_takes_the_option_before_the_command_only(env):
    assert threads.requested(["--threads", "3", "run", "x"]) == 3
    assert threads.requested(["--threads=2", "demo"]) == 2
    assert threads.requested(["trace", "--threads", "5"]) is None  # the command's own option
    assert threads.requested(["--threads", "0", "models"]) is None  # refused by the parser, not here
    env.setenv("EDITSCALE_THREADS", "4")
    assert threads.requested(["models"]) == 4
    assert threads.requested(["--threads", "1", "models"]) == 1


def test_prepare_environment_before_torch(env):
    assert threads.prepare_environment(["--threads", "3", "models"]) == 3
    import os

    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "3"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    env.setenv("OMP_WAIT_POLICY", "ACTIVE")
    env.setenv("OMP_NUM_THREADS", "2")
    assert threads.prepare_environment(["models"]) == 2  # the user's environment is kept
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_free_cores_leaves_one_for_each_busy_process(env, monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    monkeypatch.setattr(threads, "busy_now", lambda interval=0.1: 0.1)
    assert threads.free_cores() == 4
    monkeypatch.setattr(threads, "busy_now", lambda interval=0.1: 1.2)  # started a moment ago: not in the load
    assert threads.free_cores() == 3
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (7.0, 7.0, 7.0))
    assert threads.free_cores() == 1
    assert threads.prepare_environment(["models"]) == 1


def test_busy_now_is_a_share_of_the_cores():
    busy = threads.busy_now(0.05)
    assert busy is None or 0.0 <= busy <= (threads.os.cpu_count() or 1)


def test_the_cli_option_sets_torch_threads_and_a_run_prints_them(env, cli, tiny_testbed, tmp_path):
    before = torch.get_num_threads()
    try:
        code, _, err = cli("--threads", "2", "models", "--json")
        assert code == 0, err
        assert torch.get_num_threads() == 2
        config = tmp_path / "run.yaml"
        config.write_text("model: testbed:tiny\nmethod: {name: ft-l, hparams: {steps: 1}}\ndata: testbed:tiny\n"
                          "edits: 2\nmetrics: [efficacy]\nguard: {enabled: false}\n")
        code, out, err = cli("--threads", "1", "run", str(config), "--out", str(tmp_path / "r"), "--json")
        assert code == 0, err
        assert json.loads(out)["threads"] == 1
        code, out, err = cli("run", "--resume", str(tmp_path / "r"))
        assert code == 0 and "threads" in out
    finally:
        torch.set_num_threads(before)
