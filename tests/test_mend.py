"""MEND on testbed:tiny: training saves an editor with its manifest and finds it again; the update is a sum of
rank-one terms from the editor's outputs over the edit's tokens, of the declared matrices only; edit, revert
and a resumed run are exact; a model without an editor gets a one-line error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from edit_helpers import cases, requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import FAMILIES, bpe_tokenizer, random_model

from editscale.cache_entries import KINDS
from editscale.errors import ConfigError, EditError
from editscale.methods.base import usable_cases
from editscale.methods.editor import Editor
from editscale.methods.mend import (
    MANIFEST_FILE,
    MendHparams,
    edited_params,
    gradient_factors,
    is_training_subject,
    load_editor,
    train_and_save,
)
from editscale.methods.mend import storage as mend_storage
from editscale.methods.targets import as_items
from editscale.model.loading import load_model
from editscale.names import load_cases

FAST = {"lr": 1e-4, "edit_lr": 1e-3, "lr_lr": 1e-3, "rank": 32, "accumulate_bs": 2}


@pytest.fixture(scope="module")
def tiny(tiny_testbed):
    torch.set_num_threads(1)
    model, tok, _ = load_model(str(tiny_testbed))
    return model, tok


@pytest.fixture(scope="module")
def world():
    cases = load_cases("testbed:tiny")
    return [c for c in cases if is_training_subject(c.request.subject)], usable_cases("mend", "testbed:tiny", cases)


@pytest.fixture(scope="module")
def trained(tiny, world, tmp_path_factory):
    """An editor trained for 30 edits into a cache of its own; returns (editor root, its directory)."""
    root = tmp_path_factory.mktemp("mend-cache")
    model, tok = tiny
    mp = pytest.MonkeyPatch()
    mp.setattr(mend_storage, "editor_root", lambda: root)
    ed = Editor(model, tok, "mend", FAST, stats_cache=None)
    path, _ = train_and_save(ed.context, world[0], ed.hparams, model_name="testbed:tiny",
                             data={"spec": "testbed:tiny", "split": "subjects", "records": 720}, steps=30,
                             progress=False)
    mp.undo()
    return root, path


@pytest.fixture()
def mend_editor(tiny, trained, monkeypatch):
    monkeypatch.setattr(mend_storage, "editor_root", lambda: trained[0])
    model, tok = tiny
    return Editor(model, tok, "mend", FAST, stats_cache=None)


def test_training_saves_an_entry_with_its_manifest_and_editing_finds_it(tiny, trained, mend_editor):
    from editscale.cache import entry_problems

    root, path = trained
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert path.parent == root and path.name.startswith(mend_editor.context.fingerprint + "-")
    assert entry_problems(path, hashes=True) == []  # the files manifest, written last, holds every file
    assert manifest["fingerprint"] == mend_editor.context.fingerprint and manifest["steps"] == 30
    assert manifest["data"]["spec"] == "testbed:tiny" and manifest["split"] == "subjects"
    assert manifest["hparams"]["layers"] == [0]  # below tiny's last and manifest["editscale_version"]
    net, loaded = mend_editor.method.network(mend_editor.context)
    again, _ = load_editor(path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    assert loaded["path"] == str(path)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, 500), min_size=1, max_size=3, unique=True))
def test_update_is_a_sum_of_rank_one_terms_of_the_declared_matrices(picks, tiny, world, mend_editor):
    model, _ = tiny
    held = world[1]
    chosen = [held[i % len(held)] for i in picks]
    ctx, hp = mend_editor.context, mend_editor.hparams
    declared = edited_params(model, ctx.anatomy, hp)
    delta = mend_editor.compute(chosen)
    assert set(delta.updates) == {p for _, p, _, _ in declared}  # only the declared matrices
    factors = gradient_factors(ctx, as_items(chosen), [m for m, *_ in declared])
    net, _ = mend_editor.method.network(ctx)
    # the raw factorisation: u and delta per token give the weight's true gradient, grad W = delta^T u
    from editscale.methods.mend.method import _nll
    from editscale.methods.targets import build_layout

    lay = build_layout(ctx, as_items(chosen), [[""]])
    rows = torch.arange(lay.batch.input_ids.shape[0])
    names = [p for _, p, _, _ in declared]
    weights = [model.get_parameter(p) for p in names]
    loss = _nll(lay, model(**lay.inputs(rows)).logits)
    grads = torch.autograd.grad(loss, weights)
    for (module, param, out, inp), g in zip(declared, grads):
        u, d = factors[module]
        tokens = u.shape[0]
        assert 1 <= tokens <= int(lay.batch.attention_mask.sum())
        torch.testing.assert_close(d.T @ u, g.T if ctx.anatomy.transposed else g, atol=1e-6, rtol=1e-4)
        upd = delta.updates[param]
        assert upd.left.shape == (out, tokens) and upd.right.shape == (tokens, inp)  # rank <= tokens
        with torch.no_grad():
            left, right = net.factors(param, u, d)
            x_new, d_new = net._where(param)[1](u, d, net._where(param)[2])
        lr = float(net.edit_lrs.detach()[net._where(param)[0]])
        terms = sum(-lr * torch.outer(d_new[t], x_new[t]) for t in range(tokens))  # one per token
        torch.testing.assert_close(upd.matrix(), terms, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(upd.matrix(), left @ right)


def test_edit_then_revert_is_exact_and_training_subjects_are_refused(tiny, world, mend_editor):
    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    delta = mend_editor.edit(world[1][:2])
    changed = [k for k in before if not torch.equal(before[k], model.state_dict()[k])]
    assert changed and set(changed) <= set(delta.updates)
    delta.revert(model)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert all(not is_training_subject(c.request.subject) for c in world[1])
    with pytest.raises(EditError, match="trained on the facts of"):
        mend_editor.compute(world[0][:1])


def test_the_editor_is_pinned_in_the_method_state(tiny, world, trained, mend_editor):
    """A newer editor for the model does not change a started run: the state (checkpointed) names its own."""
    model, tok = tiny
    first = mend_editor.compute(world[1][:1])
    hp = mend_editor.hparams.updated(seed=1)
    train_and_save(mend_editor.context, world[0], hp, model_name="testbed:tiny", data={"spec": "testbed:tiny"},
                   steps=4, progress=False)
    newer = Editor(model, tok, "mend", FAST, stats_cache=None)
    newer.compute(world[1][:1])
    assert newer.method.network(newer.context)[1]["path"] != str(trained[1])  # a fresh run takes the newest
    resumed = Editor(model, tok, "mend", FAST, stats_cache=None, state=mend_editor.state)
    again = resumed.compute(world[1][:1])
    assert resumed.method.network(resumed.context, None)[1]["path"] == str(trained[1])
    assert all(torch.equal(first.updates[p].matrix(), again.updates[p].matrix()) for p in first.updates)
    for path in trained[0].iterdir():  # leave the module's cache with its first editor only
        if path.is_dir() and path != trained[1]:
            shutil.rmtree(path)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_and_edits_through_its_anatomy(family, tmp_path, monkeypatch):
    """Random tiny models of each family: the declared matrices (Llama's gate too) only, as low-rank updates."""
    monkeypatch.setattr(mend_storage, "editor_root", lambda: tmp_path)
    tok = bpe_tokenizer()
    model = random_model(family, vocab_size=len(tok))
    extra = {"matrices": ["gate", "in", "out"]} if family == "llama" else {}
    ed = Editor(model, tok, "mend", {**FAST, **extra}, stats_cache=None)
    train_and_save(ed.context, cases(), ed.hparams, model_name=family, data={"spec": "helpers"}, steps=3,
                   progress=False)
    assert ed.hparams.layers == [0, 1, 2]  # the last 3 of 3: a gradient method may edit the last block
    before = {k: v.clone() for k, v in model.state_dict().items()}
    delta = ed.compute(requests()[:2])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert set(delta.updates) == {p for _, p, _, _ in edited_params(model, ed.context.anatomy, ed.hparams)}
    assert len(delta.updates) == 3 * len(ed.hparams.matrices)
    assert all(u.rank is not None and torch.isfinite(u.matrix()).all() for u in delta.updates.values())
    delta.apply(model)
    assert {k for k in before if not torch.equal(before[k], model.state_dict()[k])} == set(delta.updates)


def test_a_model_without_an_editor_gets_one_line(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(mend_storage, "editor_root", lambda: tmp_path / "empty")
    model, tok = tiny
    with pytest.raises(ConfigError, match="no trained MEND editor .*editscale mend train --model") as e:
        Editor(model, tok, "mend", stats_cache=None).prepare()
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not a trained editor"):
        Editor(model, tok, "mend", {"editor": str(tmp_path)}, stats_cache=None).prepare()
    assert MendHparams.validated({}).layers is None and KINDS["mend"] == MANIFEST_FILE
    with pytest.raises(ConfigError, match="layers"):
        MendHparams.validated({"layers": [1, 1]})


def test_cli_train_eval_and_a_resumed_run(tiny_testbed, tmp_path, cli, monkeypatch):
    """``mend train --out``, then ``eval --method mend`` and a sequential run interrupted and resumed."""
    from editscale.experiment.runner import _Run, resume, run_experiment
    from editscale.experiment.store import RunStore

    monkeypatch.setenv("EDITSCALE_THREADS", "1")
    out = tmp_path / "editor"
    sets = [a for k, v in FAST.items() for a in ("--set", f"{k}={v}")]
    code, text, err = cli("mend", "train", "--model", tiny_testbed, "--data", "testbed:tiny", "--steps", "20",
                          "--out", out, *sets, "--json")
    assert code == 0, err
    summary = json.loads(text)
    assert summary["data"]["split"] == "subjects" and summary["data"]["train_records"] < summary["data"]["records"]
    code, text, err = cli("eval", "--model", tiny_testbed, "--data", "testbed:tiny", "--method", "mend", "--limit",
                          "3", "--set", f"editor={out}", *sets, "--json")
    assert code == 0, err
    assert json.loads(text)["n"] == 3
    code, text, err = cli("edit", "--model", tiny_testbed, "--method", "mend", "--data", "testbed:tiny", "--limit", "2",
                          "--set", f"editor={out}", *sets, "--json")
    assert code == 0, err
    assert [is_training_subject(e["subject"]) for e in json.loads(text)["edits"]] == [False, False]
    code, _, err = cli("mend", "train", "--model", tiny_testbed, "--data", "testbed:tiny", "--out", out)
    assert code == 2 and "already exists" in err
    cfg = {"model": str(tiny_testbed), "method": {"name": "mend", "hparams": {**FAST, "editor": str(out)}},
           "data": "testbed:tiny", "edits": 6, "forget_every": 2, "downstream_every": 0, "threads": 1, "seed": 0,
           "unique": "fact", "guard": {"entropy_prompts": 0, "probe_cases": 0}}
    run_experiment(cfg, tmp_path / "ref", progress=False)
    with monkeypatch.context() as m:  # killed during update 4 (after the checkpoint of update 2)
        step = _Run.step
        m.setattr(_Run, "step", lambda self, u: step(self, u) if u < 4 else (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, tmp_path / "run", progress=False)
    resume(tmp_path / "run", progress=False)
    query = "SELECT * FROM edits ORDER BY edit_idx"
    with RunStore.in_dir(tmp_path / "ref") as a, RunStore.in_dir(tmp_path / "run") as b:
        assert a.rows(query) == b.rows(query) and len(a.rows(query)) == 6
        assert all(not is_training_subject(c["request"]["subject"]) for c in a.plan())
