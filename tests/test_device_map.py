"""Models loaded with a device map (accelerate): edits and evaluation run through accelerate's dispatch hooks, and a
run config's ``device_map`` reaches the model loader.

A CPU-only machine cannot split a model over two devices: torch has one CPU device, and accelerate's device maps
name GPUs, "cpu" (which, beside a GPU, means offloaded weights) or "disk". So the tiny testbed is dispatched with
accelerate's hooks on every block (``force_hooks``), the machinery a model split over GPUs runs through, and
its edits and scores must equal those of the plain model. A split over real GPUs is not tested here."""

from __future__ import annotations

import pytest
import torch
from edit_helpers import small

import editscale
from editscale.eval.counterfact import evaluate_cases
from editscale.names import load_cases, load_model

accelerate = pytest.importorskip("accelerate")


def _edit_and_score(model, tok, cases, method: str):
    torch.manual_seed(0)
    delta = editscale.edit(model, tok, [c.request for c in cases], method=method, hparams=small(method),
                           stats_cache=None, progress=False)
    scores = evaluate_cases(model, tok, cases).summary()
    updates = {k: u.stored().clone() for k, u in delta.updates.items()}
    delta.revert(model)
    return updates, scores


@pytest.mark.parametrize("method", ["rome", "memit", "ft-l"])
def test_edits_and_scores_through_accelerate_dispatch_hooks_equal_the_plain_model(method, tiny_testbed):
    from accelerate import dispatch_model

    cases = load_cases(str(tiny_testbed / "world.jsonl"))[:2]
    plain, tok, _ = load_model(str(tiny_testbed))
    hooked, _, _ = load_model(str(tiny_testbed))
    blocks = {f"transformer.h.{i}": "cpu" for i in range(hooked.config.n_layer)}
    device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu", **blocks,
                  "transformer.ln_f": "cpu", "lm_head": "cpu"}
    hooked = dispatch_model(hooked, device_map=device_map, main_device="cpu", force_hooks=True)
    assert hasattr(hooked.transformer.h[0], "_hf_hook")  # every block runs through accelerate's hook
    want, got = _edit_and_score(plain, tok, cases, method), _edit_and_score(hooked, tok, cases, method)
    assert want[0].keys() == got[0].keys()
    for name in want[0]:
        torch.testing.assert_close(got[0][name], want[0][name], rtol=1e-5, atol=1e-6)
    assert got[1] == want[1]


def test_run_config_device_map_reaches_the_loader(tiny_testbed, tmp_path):
    """``device_map: auto`` on a CPU-only machine places everything on the CPU: the run equals one without it.
    Left unset, it is not in the stored config (earlier runs' config hashes stand)."""
    from editscale.experiment.config import parse_config
    from editscale.experiment.runner import run_experiment
    from editscale.experiment.store import RunStore

    base = {"model": "testbed:tiny", "data": "testbed:tiny", "method": {"name": "ft-l", "hparams": small("ft-l")},
            "edits": 3, "forget_every": 3, "threads": 1, "guard": {"enabled": False}}
    assert "device_map" not in parse_config(base).to_dict()
    assert parse_config({**base, "device_map": "auto"}).to_dict()["device_map"] == "auto"
    rows = []
    for name, extra in (("plain", {}), ("auto", {"device_map": "auto"})):
        run_experiment({**base, **extra}, tmp_path / name, progress=False)
        with RunStore.in_dir(tmp_path / name, readonly=True) as store:
            rows.append(store.rows("SELECT * FROM edits ORDER BY edit_idx"))
            assert store.meta()["config"].get("device_map") == extra.get("device_map")
    assert rows[0] == rows[1] and len(rows[0]) == 3
