"""The methods that resist forgetting (issue 17): EMMET, AlphaEdit, ENCORE and norm anchoring. Property tests
of each closed-form solve, the same properties on edits of tiny models, AlphaEdit's and ENCORE's remembered
keys (accumulated, checkpointed, exactly resumed) and ENCORE's most-probable early stopping. That every method
edits every family as a Delta that reverts exactly is ``test_methods.test_every_method_edits_every_family_as_a_delta``
(its METHODS list includes these)."""

from __future__ import annotations

import json

import pytest
import torch
from edit_helpers import corpus, editor, requests, small
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from tiny import bpe_tokenizer, random_model

from editscale.api import Editor
from editscale.errors import ConfigError
from editscale.methods.alphaedit import alphaedit_solve
from editscale.methods.base import EditState
from editscale.methods.context import EditContext, null_space_projector
from editscale.methods.emmet import emmet_solve
from editscale.methods.encore import encore_solve
from editscale.methods.hparams import (
    AlphaEditHparams,
    EmmetHparams,
    EncoreHparams,
    MemitHparams,
    RomeHparams,
)
from editscale.methods.memit import key_moment_name, memit_solve
from editscale.methods.norm_anchor import (
    anchor_for,
    anchor_vectors,
    anchored_targets,
    trimmed_mean,
    unedited_values,
)
from editscale.methods.prefixes import PrefixSpec
from editscale.methods.preset_resolution import default_layers, resolve_hparams
from editscale.methods.targets import (
    as_items,
    build_layout,
    optimize_targets,
    subject_activations,
)
from editscale.model.hooks import add_at

TEXTS = corpus(80)  # the statistics' text


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


def random_psd(g: torch.Generator, k: int) -> torch.Tensor:
    a = torch.randn(k, k, generator=g, dtype=torch.float64)
    return a @ a.T / k + 0.05 * torch.eye(k, dtype=torch.float64)


# --- the solves (hypothesis) ------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), d=st.integers(2, 10), k=st.integers(6, 14),
       weight=st.floats(1e-2, 1e4), norm_lambda=st.sampled_from([0.0, 0.5, 10.0]))
def test_emmet_meets_its_equality_constraints(seed, n, d, k, weight, norm_lambda):
    """Without the ridge (and always for one request) W' k_i = W k_i + r_i for every edited key."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, k, generator=g, dtype=torch.float64)
    resid = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, k, generator=g, dtype=torch.float64)
    cov = random_psd(g, k)
    left, right = emmet_solve(keys, resid, cov, weight, norm_lambda, ridge=0.0 if n > 1 else 5.0)
    torch.testing.assert_close((w + left @ right) @ keys.T, w @ keys.T + resid.T, rtol=1e-7, atol=1e-7)
    # among all updates meeting the constraints it is the one least seen by the preserved keys (C'-norm):
    # any other solution differs by a Z with Z K^T = 0 and has a larger tr(Delta C' Delta^T)
    c = weight * cov + norm_lambda * torch.eye(k, dtype=torch.float64)
    z = torch.randn(d, k, generator=g, dtype=torch.float64)
    z = z - z @ keys.T @ torch.linalg.solve(keys @ keys.T, keys)
    delta = left @ right
    assert torch.trace((delta + z) @ c @ (delta + z).T) >= torch.trace(delta @ c @ delta.T) * (1 - 1e-9)


@settings(max_examples=40, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 6), ridge=st.floats(1e-3, 10.0))
def test_emmet_ridge_is_inside_the_middle_inverse(seed, n, ridge):
    g = torch.Generator().manual_seed(seed)
    k, d = 12, 5
    keys, resid = torch.randn(n, k, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    cov = random_psd(g, k)
    left, right = emmet_solve(keys, resid, cov, 2.0, 0.0, ridge)
    c_inv_k = torch.linalg.solve(2.0 * cov, keys.T)
    middle = keys @ c_inv_k + ridge * torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(left @ right, resid.T @ torch.linalg.solve(middle, c_inv_k.T))


def decaying_keys(g: torch.Generator, n: int, k: int) -> torch.Tensor:
    """Keys whose second moment has eigenvalues from about 1 down to 1e-4 (a real layer's spread)."""
    basis = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))[0]
    scales = torch.logspace(0, -2, k, dtype=torch.float64)
    return (torch.randn(n, k, generator=g, dtype=torch.float64) * scales) @ basis.T


@settings(max_examples=40, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 5), k=st.integers(6, 16), threshold=st.sampled_from([2e-2, 1e-3]),
       l2=st.floats(1e-2, 100.0), with_prev=st.booleans())
def test_alphaedit_leaves_the_preserved_keys_outputs_unchanged(seed, n, k, threshold, l2, with_prev):
    """The mean of ||Delta k0||^2 over the keys C was estimated on is at most threshold x ||Delta||_F^2, and
    the update solves AlphaEdit's equations."""
    g = torch.Generator().manual_seed(seed)
    preserved = decaying_keys(g, 40 * k, k)
    cov = preserved.T @ preserved / len(preserved)
    proj = null_space_projector(cov, threshold)
    keys, resid = torch.randn(n, k, generator=g, dtype=torch.float64), torch.randn(n, 7, generator=g, dtype=torch.float64)
    prev = random_psd(g, k) if with_prev else torch.zeros(k, k, dtype=torch.float64)
    left, right = alphaedit_solve(keys, resid, proj, prev, l2)
    delta = left @ right
    seen = (preserved @ delta.T).pow(2).sum(1).mean()
    assert seen <= threshold * delta.pow(2).sum() * (1 + 1e-6) + 1e-12
    a = proj @ (keys.T @ keys + prev) + l2 * torch.eye(k, dtype=torch.float64)
    torch.testing.assert_close(a @ delta.T, proj @ keys.T @ resid)
    # the update lies in the null space: Delta = Delta P
    torch.testing.assert_close(delta @ proj, delta)


def test_alphaedit_without_a_null_space_does_not_edit():
    g = torch.Generator().manual_seed(0)
    cov = random_psd(g, 8) + torch.eye(8, dtype=torch.float64)  # every eigenvalue above the threshold
    left, right = alphaedit_solve(torch.randn(2, 8, generator=g), torch.randn(2, 3, generator=g),
                                  null_space_projector(cov, 2e-2), torch.zeros(8, 8), 10.0)
    assert float((left @ right).abs().max()) == 0.0


@settings(max_examples=30, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), weight=st.floats(1e-1, 1e3),
       norm_lambda=st.floats(0.0, 50.0))
def test_encore_is_memit_with_a_norm_penalty_and_earlier_keys_preserved(seed, n, weight, norm_lambda):
    g = torch.Generator().manual_seed(seed)
    k, d = 10, 6
    keys, resid = torch.randn(n, k, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    cov, prev = random_psd(g, k), random_psd(g, k)
    left, right = encore_solve(keys, resid, cov, weight, norm_lambda, prev)
    delta = left @ right
    # the normal equations of ||Delta K^T - R^T||^2 + w tr(Delta C Delta^T) + l_u ||Delta||^2 + ||Delta K_p^T||^2
    lhs = delta @ (weight * cov + norm_lambda * torch.eye(k, dtype=torch.float64) + prev + keys.T @ keys)
    torch.testing.assert_close(lhs, resid.T @ keys)
    # no penalty and no earlier keys: exactly MEMIT
    ml, mr = memit_solve(keys, resid, cov, weight)
    el, er = encore_solve(keys, resid, cov, weight, 0.0, None)
    torch.testing.assert_close(el @ er, ml @ mr)
    # the penalty shrinks the update
    big_l, big_r = encore_solve(keys, resid, cov, weight, norm_lambda + 100.0, prev)
    assert (big_l @ big_r).norm() <= delta.norm() * (1 + 1e-9)


@settings(max_examples=40, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), b=st.integers(1, 8), anchor=st.floats(0.1, 50.0), skip=st.sampled_from([None, 2.0]))
def test_norm_anchoring_returns_vectors_of_the_anchor_norm(seed, b, anchor, skip):
    g = torch.Generator().manual_seed(seed)
    v0 = torch.randn(b, 6, generator=g)
    v_star = v0 + 3 * torch.randn(b, 6, generator=g) * torch.rand(b, 1, generator=g) * 10
    out, dropped = anchor_vectors(v0, v_star, anchor, skip)
    norms = v_star.norm(dim=1)
    assert torch.equal(dropped, norms > skip * anchor if skip else torch.zeros(b, dtype=torch.bool))
    torch.testing.assert_close(out[~dropped].norm(dim=1), torch.full(((~dropped).sum(),), anchor), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[~dropped] / out[~dropped].norm(dim=1, keepdim=True),
                               v_star[~dropped] / norms[~dropped, None])  # the direction is kept
    assert torch.equal(out[dropped], v0[dropped])


def test_trimmed_mean_leaves_out_the_largest_five_percent():
    values = torch.arange(1.0, 101.0)  # 100 values: the 5 largest go
    assert trimmed_mean(values) == pytest.approx(float(values[:95].mean()))
    assert trimmed_mean(torch.tensor([3.0, 1.0, 2.0])) == pytest.approx(2.0)  # fewer than 20: none dropped


# --- on tiny models ---------------------------------------------------------------------------------------
def test_emmet_edit_meets_the_constraints_on_the_edited_keys(tok):
    """On a model: the edited matrix moves each edited (prefix-averaged) key's output by exactly its residual
    z - h (one layer, two requests, no ridge)."""
    model = random_model("gpt2", vocab_size=len(tok))
    ed = editor(model, tok, "emmet", TEXTS, layers=[1], emmet_lambda=0.0)
    items = as_items(requests()[:2])
    delta = ed.compute(items)
    (upd,) = delta.updates.values()
    ctx, hp = ed.context, ed.hparams
    prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
    z_module, key_module = ctx.anatomy.layer_name(1), ctx.anatomy.mlp_out_name(1)
    z = optimize_targets(ctx, items, z_module, hp, prefixes).target  # deterministic: EMMET's own z
    reads = subject_activations(ctx, items, prefixes, [(key_module, True), (z_module, False)],
                                average=hp.key_average)
    keys, h = reads[(key_module, True)].mean, reads[(z_module, False)].bare
    torch.testing.assert_close(upd.matrix() @ keys.T, (z - h).T, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("threshold", [2e-2, 1e-3])
def test_alphaedit_edit_is_unseen_by_the_statistics_keys(tok, threshold):
    """On a model: the mean ||Delta k0||^2 over the statistics' keys, tr(Delta C Delta^T), is at most
    threshold x ||Delta||^2 with the layer's own C."""
    model = random_model("gpt2", vocab_size=len(tok))
    ed = editor(model, tok, "alphaedit", TEXTS, layers=[1], nullspace_threshold=threshold)
    (upd,) = ed.compute(requests()[:2]).updates.values()
    c = ed.context.second_moment(1, ed.hparams).double()
    m = upd.matrix().double()
    assert float(m.norm()) > 0
    assert float(torch.trace(m @ c @ m.T)) <= threshold * float(m.pow(2).sum()) * (1 + 1e-4)


@pytest.mark.parametrize("method", ["alphaedit", "encore"])
def test_remembered_keys_accumulate_and_round_trip(method, tok, tmp_path):
    """Each call adds its keys' k k^T to the state; the state survives a checkpoint bit for bit, and the next
    edit computed from the restored state equals the one from the live state."""
    from editscale.experiment.checkpoint import load_checkpoint, save_checkpoint

    model = random_model("gpt2", vocab_size=len(tok))
    ed = editor(model, tok, method, TEXTS, layers=[0, 1])
    reqs = requests()
    first = ed.edit(reqs[:1])
    s1 = {k: v.clone() for k, v in ed.state.state_dict().items()}
    assert set(s1) == {key_moment_name(0), key_moment_name(1)}
    # layer 0's remembered moment is the outer product of the request's prefix-averaged key at layer 0
    first.revert(model)
    key = subject_activations(ed.context, as_items(reqs[:1]), ed.context.prefixes(PrefixSpec.from_hparams(ed.hparams)),
                              [(ed.context.anatomy.mlp_out_name(0), True)], average=ed.hparams.key_average)
    k0 = key[(ed.context.anatomy.mlp_out_name(0), True)].mean.double()
    torch.testing.assert_close(s1[key_moment_name(0)], k0.T @ k0)
    first.apply(model)
    ed.edit(reqs[1:2])
    s2 = ed.state.state_dict()
    for name, before in s1.items():  # one more key each: a rank-one PSD increase
        diff = s2[name] - before
        assert s2[name].dtype == torch.float64
        assert torch.linalg.matrix_rank(diff, rtol=1e-8) == 1 and float(torch.linalg.eigvalsh(diff).min()) > -1e-9
    path = save_checkpoint(tmp_path, 2, 2, model, {}, {}, ed.state, {})
    restored = load_checkpoint(path).state
    assert set(restored.tensors) == set(s2)
    assert all(torch.equal(restored[k], s2[k]) for k in s2)
    live = ed.compute(reqs[2:3])
    ed.state = restored
    again = ed.compute(reqs[2:3])
    assert all(torch.equal(live.updates[n].matrix(), again.updates[n].matrix()) for n in live.updates)
    # and the remembered keys matter: without them the update differs
    ed.state = EditState()
    fresh = ed.compute(reqs[2:3])
    assert not all(torch.equal(live.updates[n].matrix(), fresh.updates[n].matrix()) for n in live.updates)
    # prev_edits_weight scales them: 0 is as if there were none, 0.5 lies in between (new editors: their
    # context prefixes come from the model as it is now)
    def with_weight(weight: float, state: EditState):
        ed_w = editor(model, tok, method, TEXTS, layers=[0, 1], prev_edits_weight=weight)
        ed_w.state = state
        return ed_w.compute(reqs[2:3])

    none, zero, half, one = (with_weight(0.0, EditState()), with_weight(0.0, restored), with_weight(0.5, restored),
                             with_weight(1.0, restored))
    for n in live.updates:
        torch.testing.assert_close(zero.updates[n].matrix(), none.updates[n].matrix())
        assert not torch.allclose(half.updates[n].matrix(), none.updates[n].matrix())
        assert not torch.allclose(half.updates[n].matrix(), one.updates[n].matrix())
    # a plain safetensors round trip (what the runner writes) changes nothing either
    save_file(s2, str(tmp_path / "s.safetensors"))
    assert all(torch.equal(load_file(str(tmp_path / "s.safetensors"))[k], s2[k]) for k in s2)


@pytest.mark.parametrize("hits", [1, 3])
def test_encore_stops_when_the_target_is_the_argmax_everywhere(tiny_testbed, hits):
    """ENCORE's z optimisation (MPES, its default) stops at the step at which every new-target token has been
    the argmax in every prefixed prompt for the ``v_argmax_hits``-th time (1: the first; the reference counts
    to 4 for GPT-2 XL), exactly there: the trajectory is replayed step by step without stopping and checked
    with a plain forward pass (on the trained tiny testbed, where targets become the argmax within steps)."""
    from editscale.data.records import EditCase
    from editscale.model.loading import load_model

    model, tok, _ = load_model(str(tiny_testbed))
    lines = (tiny_testbed / "world.jsonl").read_text().splitlines()[:3]
    reqs = [EditCase.from_dict(json.loads(line)).request for line in lines]
    ed = Editor(model, tok, "encore", {"context_lengths": [(3, 2), (5, 2)], "v_steps": 40, "v_argmax_hits": hits,
                                       "mom2_n_tokens": 2000}, stats_cache=None, progress=False)
    hp, ctx = ed.hparams, ed.context
    assert hp.v_stop_on == "argmax"
    module = ctx.anatomy.layer_name(hp.layers[-1])
    prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
    res = optimize_targets(ctx, reqs, module, hp, prefixes)
    assert ed.compute(reqs).info["target_steps"] == res.steps.tolist()  # the edit used these z
    assert (res.steps < hp.v_steps - 1).all() and int(res.steps.max()) >= 1
    lay = build_layout(ctx, as_items(reqs), prefixes)

    def all_argmax(delta: torch.Tensor) -> torch.Tensor:
        with add_at(model, module, lay.pos, delta[lay.owner]), torch.no_grad():
            logits = model(**lay.inputs(torch.arange(len(lay.pos)))).logits
        hit = logits[lay.tok_row, lay.tok_col].argmax(-1) == lay.tok_id
        return torch.stack([hit[lay.owner[lay.tok_row] == b].all() for b in range(len(reqs))])

    never = hp.updated(v_stop_on="nll", v_early_stop=0.0)  # the same trajectory, never stopped
    seen = torch.stack([all_argmax(optimize_targets(ctx, reqs, module, never.updated(v_steps=t + 1), prefixes).delta)
                        for t in range(int(res.steps.max()) + 1)])  # (steps taken, request)
    counted = seen.long().cumsum(0)
    expected = [int((counted[:, b] == hits).nonzero()[0]) for b in range(len(reqs))]
    assert res.steps.tolist() == expected
    assert all_argmax(res.delta).all()


def test_norm_anchor_rescales_every_methods_value_vectors(tok):
    """norm_anchor_value: ROME's v* and MEMIT's v0 + delta (v0 the MLP output under z) have the anchor's norm;
    a v* beyond norm_anchor_skip anchors is dropped (no edit)."""
    model = random_model("gpt2", vocab_size=len(tok))
    items = as_items(requests()[:2])
    rome = editor(model, tok, "rome", TEXTS, layer=1, norm_anchor=True, norm_anchor_value=3.0)
    for item in items:
        assert float(rome.method.rank_one(rome.context, item).value.norm()) == pytest.approx(3.0, rel=1e-5)
    for method in ("memit", "emmet", "alphaedit", "encore"):
        ed = editor(model, tok, method, TEXTS, layers=[1], norm_anchor=True, norm_anchor_value=3.0)
        hp, ctx = ed.hparams, ed.context
        module = ctx.anatomy.layer_name(1)
        res = anchored_targets(ctx, items, module, hp, ctx.prefixes(PrefixSpec.from_hparams(hp)))
        v_star = unedited_values(ctx, items, module, res) + res.delta
        torch.testing.assert_close(v_star.norm(dim=1), torch.full((2,), 3.0), rtol=1e-5, atol=1e-5)
        assert ed.compute(items).updates  # and the method runs with it
    tiny = editor(model, tok, "memit", TEXTS, layers=[1], norm_anchor=True, norm_anchor_value=1e-3, norm_anchor_skip=2.0)
    ctx, hp = tiny.context, tiny.hparams
    res = anchored_targets(ctx, items, ctx.anatomy.layer_name(1), hp, ctx.prefixes(PrefixSpec.from_hparams(hp)))
    assert float(res.delta.abs().max()) == 0.0 and torch.equal(res.target, res.init)


def test_norm_anchor_is_measured_once_on_calibration_edits(tok, tmp_path, monkeypatch):
    """Without a value, the anchor is the trimmed mean ||v*|| of calibration edits solved without anchoring,
    measured in Editor.prepare (the unedited model) and then reused; no records is a one-line error."""
    import editscale.methods.norm_anchor as norm_anchor_module
    from editscale.data.records import EditCase

    records = tmp_path / "calib.jsonl"
    cases = [EditCase(r) for r in requests()]
    records.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in cases))
    model = random_model("gpt2", vocab_size=len(tok))
    calls = []
    measure = norm_anchor_module.measure_anchor
    monkeypatch.setattr(norm_anchor_module, "measure_anchor", lambda *a: calls.append(a) or measure(*a))
    ed = editor(model, tok, "memit", TEXTS, layers=[1], norm_anchor=True, norm_anchor_data=str(records),
                norm_anchor_samples=2).prepare()
    assert len(calls) == 1
    hp, ctx = ed.hparams, ed.context
    module = ctx.anatomy.layer_name(1)
    anchor = anchor_for(ctx, module, hp)
    # two of the three records, drawn with the reference's seed; each v* solved without anchoring
    import random

    sample = as_items(random.Random(0).sample(cases, 2))
    plain = optimize_targets(ctx, sample, module, hp.updated(norm_anchor=False),
                             ctx.prefixes(PrefixSpec.from_hparams(hp)))
    expected = trimmed_mean((unedited_values(ctx, sample, module, plain) + plain.delta).norm(dim=1))
    assert anchor == pytest.approx(expected, rel=1e-6)
    ed.compute(requests()[:1])
    assert len(calls) == 1  # measured once
    with pytest.raises(ConfigError, match="norm_anchor_data"):
        editor(model, tok, "rome", TEXTS, layer=1, norm_anchor=True).prepare()


# --- hyperparameters ---------------------------------------------------------------------------------------
def test_hparams_presets_and_layers(tiny_testbed):
    from editscale.model.loading import load_model

    assert default_layers("alphaedit", 28) == default_layers("encore", 28) == default_layers("memit", 28)
    assert default_layers("emmet", 28) == default_layers("rome", 28)  # the reference edits ROME's layer
    model, _tok, anatomy = load_model(str(tiny_testbed))
    manifest = json.loads((tiny_testbed / "editscale_testbed.json").read_text())
    for method, cls in (("emmet", EmmetHparams), ("alphaedit", AlphaEditHparams), ("encore", EncoreHparams)):
        hp = resolve_hparams(method, cls, model, anatomy)
        assert hp.mom2_n_tokens == 20_000 and hp.v_steps == 60  # the testbed preset
        assert hp.layers == ([manifest["rome_layer"]] if method == "emmet" else manifest["memit_layers"])
    assert EncoreHparams().v_stop_on == "argmax" and MemitHparams().v_stop_on == "loss"
    assert not hasattr(AlphaEditHparams(), "mom2_update_weight")  # AlphaEdit never weighs C
    assert RomeHparams().norm_anchor_skip == 5.0 and MemitHparams().norm_anchor_skip == 2.0  # the reference's
    with pytest.raises(ConfigError, match="nullspace_threshold"):
        AlphaEditHparams.validated({"nullspace_threshold": -1})


def test_generic_models_scale_memit_and_encore_lambda_but_not_emmets(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    from editscale.model.anatomy import get_anatomy

    anatomy = get_anatomy(model)
    assert resolve_hparams("emmet", EmmetHparams, model, anatomy).mom2_update_weight == 1.0
    memit = resolve_hparams("memit", MemitHparams, model, anatomy).mom2_update_weight
    assert memit != 15_000 and resolve_hparams("encore", EncoreHparams, model, anatomy).mom2_update_weight == memit


def test_contexts_keep_one_projector_per_layer(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    ctx = EditContext(model, tok, stats_cache=None, corpus=TEXTS)
    hp = AlphaEditHparams.validated(small("alphaedit", layers=[0, 1]))
    p = ctx.null_space_projector(0, hp, 2e-2)
    assert ctx.null_space_projector(0, hp, 2e-2) is p
    assert ctx.null_space_projector(0, hp, 1e-3) is not p
    torch.testing.assert_close(p, null_space_projector(ctx.second_moment(0, hp), 2e-2))
    torch.testing.assert_close(p @ p, p)  # a projector
