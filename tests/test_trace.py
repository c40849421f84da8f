"""Causal tracing on tiny random models of every family in the anatomy; the command on the tiny testbed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from tiny import bpe_tokenizer, random_model

from editscale.data.records import Fact
from editscale.model.anatomy import FAMILIES, get_anatomy
from editscale.model.tokens import continuation_ids
from editscale.trace import causal_trace, trace_fact, window_range
from editscale.trace.causal import default_window, subject_token_range
from editscale.trace.summary import recommend

PROMPTS = (
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),
    ("Danielle Darrieux speaks", "Danielle Darrieux"),
    ("LeBron James plays the sport of", "LeBron James"),
    ("The mother tongue of Toko Yasuda is", "Toko Yasuda"),
    ("Danielle Darrieux lives in", "Danielle Darrieux"),
    ("In the city of Los Angeles, LeBron James plays", "LeBron James"),
)


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


def peaked_model(family: str, tok, layers: int = 3, prompts=PROMPTS):
    """A random model whose outputs are sharp (weights scaled up, a sharp final norm), and the fact among
    ``prompts`` whose likeliest word-initial continuation is likeliest: its object, so effects are far
    from 0."""
    model = random_model(family, layers=layers)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
        model.get_submodule(get_anatomy(model).final_norm).weight.mul_(10)
        best = (0.0, None)
        for text, subject in prompts:
            probs = torch.softmax(model(tok(text, return_tensors="pt").input_ids).logits[0, -1], -1)
            for i in probs.argsort(descending=True).tolist()[:20]:
                word = tok.decode([i])
                if (
                    word.startswith(" ")
                    and word.strip().isalpha()
                    and continuation_ids(tok, text, word.strip())[0] == i
                ):
                    if probs[i] > best[0]:
                        best = (probs[i].item(), Fact(text, subject, word.strip()))
                    break
    assert best[1] is not None, "no word-initial continuation in the vocabulary"
    return model, best[1]


def hook_counts(model) -> dict[str, tuple[int, ...]]:
    return {
        name: (
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(m._forward_hooks_with_kwargs),
            len(m._forward_pre_hooks_with_kwargs),
        )
        for name, m in model.named_modules()
    }


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batched_equals_one_restoration_per_pass(family, tok):
    model, fact = peaked_model(family, tok)
    kw = {"noise": 1.0, "samples": 3, "window": 2, "seed": 5}
    fast = trace_fact(model, tok, fact, max_rows=7, **kw)  # batches of 2 restorations x 3 draws: many sweeps
    plain = trace_fact(model, tok, fact, **kw, plain=True)
    n_tok, n_layers = len(fast.tokens), get_anatomy(model).n_layers(model)
    assert fast.p_corrupted == plain.p_corrupted and fast.p_clean == plain.p_clean
    for kind in ("hidden", "mlp", "attn"):
        assert fast.effects[kind].shape == (n_tok, n_layers)
        scale = np.abs(plain.effects[kind]).max()
        assert scale > 1e-4, f"{family} {kind}: effects too small to compare"
        np.testing.assert_allclose(fast.effects[kind], plain.effects[kind], atol=1e-6 + 1e-4 * scale)
    assert fast.forward_calls < plain.forward_calls
    assert fast.row_layers < plain.row_layers


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_restoring_last_block_at_last_token_restores_the_clean_output(family, tok):
    model, fact = peaked_model(family, tok)
    fast = trace_fact(model, tok, fact, noise=1.0, samples=4, kinds=["hidden"])
    plain = trace_fact(model, tok, fact, noise=1.0, samples=4, kinds=["hidden"], plain=True)
    assert abs(fast.total_effect) > 1e-3
    assert fast.effects["hidden"][-1, -1] == fast.total_effect
    assert plain.effects["hidden"][-1, -1] == pytest.approx(plain.total_effect, abs=1e-6)
    # the last block's output at any other token never reaches the head
    assert np.all(fast.effects["hidden"][:-1, -1] == 0)
    np.testing.assert_allclose(plain.effects["hidden"][:-1, -1], 0, atol=1e-6)


def test_shapes_tokens_and_states_before_the_subject(tok):
    model, fact = peaked_model(
        "gpt2", tok, layers=4, prompts=[p for p in PROMPTS if not p[0].startswith(p[1])]
    )
    tr = trace_fact(model, tok, fact, noise=1.0, samples=2, kinds=["mlp", "hidden"], window=3)
    b, e = tr.subject_range
    assert (b, e) == subject_token_range(tok, fact.text, fact.subject)
    assert "".join(tr.tokens[b:e]).strip() == fact.subject
    assert b > 0 and list(tr.effects) == ["mlp", "hidden"]
    for eff in tr.effects.values():
        assert eff.shape == (len(tr.tokens), 4)
        assert np.all(eff[:b] == 0)  # clean = corrupted before the subject: nothing to restore
    assert tr.reference_passes() == 2 * (2 + len(tr.tokens) * 4)
    assert tr.answer.strip() == fact.object


@pytest.mark.parametrize("n_layers", [1, 3, 4, 12, 30, 48])
@pytest.mark.parametrize("window", [1, 2, 5, 10])
def test_window_matches_the_reference_and_stays_inside_the_model(n_layers, window):
    for layer in range(n_layers):
        ref = range(
            max(0, layer - window // 2), min(n_layers, layer - (-window // 2))
        )  # trace_important_window
        lo, hi = window_range(layer, window, n_layers)
        assert range(lo, hi) == ref and lo <= layer < hi
    assert window_range(0, window, n_layers)[0] == 0
    assert window_range(n_layers - 1, window, n_layers)[1] == n_layers


def test_window_edges_in_a_trace(tok):
    model, fact = peaked_model("llama", tok, layers=3)
    wide = trace_fact(model, tok, fact, noise=1.0, samples=2, kinds=["mlp"], window=10)
    # a window wider than the model restores every layer's MLP whatever its centre
    for layer in (1, 2):
        np.testing.assert_allclose(wide.effects["mlp"][:, layer], wide.effects["mlp"][:, 0], atol=1e-6)
    one = trace_fact(model, tok, fact, noise=1.0, samples=2, kinds=["mlp"], window=1)
    two = trace_fact(model, tok, fact, noise=1.0, samples=2, kinds=["mlp"], window=2)
    # window 2 at layer 0 is [0, 1): layer 0 alone, as window 1; at layer 2 it is [1, 3)
    np.testing.assert_allclose(two.effects["mlp"][:, 0], one.effects["mlp"][:, 0], atol=1e-6)
    assert not np.allclose(two.effects["mlp"][:, 2], one.effects["mlp"][:, 2], atol=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tracing_leaves_weights_and_hooks_as_found(family, tok):
    model, fact = peaked_model(family, tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = hook_counts(model)
    trace_fact(model, tok, fact, noise=1.0, samples=2, window=2)
    causal_trace(model, tok, [fact], samples=2, window=2, known_only=False, progress=False)
    assert hook_counts(model) == hooks
    assert not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_causal_trace_summary_and_recommendation(tok, tmp_path):
    from editscale.trace.plots import write_outputs

    model, fact = peaked_model("gpt2", tok, layers=4)
    facts = [fact, Fact(f"So, {fact.text}", fact.subject, fact.object)]
    s = causal_trace(model, tok, facts, samples=2, known_only=False, progress=False)
    assert s.n_facts == 2 and s.window == default_window(4) == 1
    assert s.total_effect == pytest.approx(np.mean([t.total_effect for t in s.facts]))
    assert s.recommended == recommend(s.grouped["mlp"], s.total_effect)
    data = s.to_json()
    assert set(data["indirect_effect"]) == {"hidden", "mlp", "attn"}
    assert len(data["indirect_effect"]["mlp"]["last_token"]) == 4
    # the last token row of the hidden trace at the last layer is the total effect, fact by fact
    assert data["indirect_effect"]["hidden"]["last_token"][-1] == pytest.approx(s.total_effect)
    files = write_outputs(s, tmp_path, model_name="tiny", single_facts=1)
    assert {f.name for f in files} >= {"trace_mlp.png", "trace_hidden.png", "fact0_attn.png", "trace.json"}
    assert json.loads((tmp_path / "trace.json").read_text())["n_facts"] == 2


def mlp_groups(last_subject, middle=None) -> np.ndarray:
    g = np.zeros((6, len(last_subject)))
    g[2] = last_subject
    if middle is not None:
        g[1] = middle
    return g


def test_recommend_rule():
    r = recommend(mlp_groups([0.1, 0.3, 0.2, 0.0]), total_effect=0.5)
    assert r["rome_layer"] == 1 and r["memit_layers"] == [0, 1, 2]  # clipped before the last layer
    r = recommend(mlp_groups(np.r_[np.zeros(10), 1.0, np.zeros(19)]), total_effect=1.0)
    assert r["rome_layer"] == 10 and r["memit_layers"] == [8, 9, 10, 11, 12, 13]
    # the last layer is never recommended, whatever its effect
    assert recommend(mlp_groups([0.1, 0.2, 0.9]), total_effect=1.0)["rome_layer"] == 1
    # no MLP at the last subject token carries the fact: no layer, and where the subject's effect is instead
    r = recommend(mlp_groups([-0.01, 0.0, 0.01, 0.0], middle=[0.3, 0.1, 0, 0]), total_effect=0.9)
    assert r["rome_layer"] is None and r["memit_layers"] is None and "not recalled" in r["note"]
    assert r["subject_peak"] == {"token": "middle subject tokens", "layer": 0, "indirect_effect": 0.3}
    assert recommend(None, 0.5)["rome_layer"] is None


def test_known_facts_file_and_cli(tiny_testbed, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITSCALE_PROGRESS", "1")  # lines on stderr (not a terminal here)
    world = [json.loads(line) for line in (tiny_testbed / "world.jsonl").read_text().splitlines()[:100]]
    known = [
        {
            "known_id": i,
            "subject": r["request"]["subject"],
            "attribute": r["request"]["target_true"],
            "prompt": r["request"]["prompt"].replace("{}", r["request"]["subject"]),
            "relation_id": "x",
            "template": r["request"]["prompt"],
            "prediction": "",
        }
        for i, r in enumerate(world)
    ]
    path = tmp_path / "known.json"
    path.write_text(json.dumps(known))
    code, out, err = cli(
        "trace",
        "--model",
        str(tiny_testbed),
        "--data",
        str(path),
        "--n",
        "3",
        "--samples",
        "2",
        "--kinds",
        "mlp,hidden",
        "--out",
        str(tmp_path / "out"),
        "--single",
        "1",
        "--json",
        "--threads",
        "1",
    )
    assert code == 0, err
    assert "finding the facts the model knows: 100/100 (100%)" in err  # before tracing, not silent
    data = json.loads(out)
    assert data["n_facts"] == 3 and data["kinds"] == ["mlp", "hidden"]
    assert data["recommended"]["rome_layer"] in (0, None)  # 2 layers: the last is never recommended
    assert (tmp_path / "out" / "trace_mlp.png").stat().st_size > 1000
    # the table: a row per layer, readable in a log's 80 columns
    code, out, err = cli("trace", "--model", str(tiny_testbed), "--data", str(path), "--n", "2", "--samples", "2",
                         "--kinds", "mlp", "--out", str(tmp_path / "out2"), "--single", "0", "--threads", "1")
    assert code == 0, err
    rows = [line for line in out.splitlines() if re.match(r"│\s*\d+\s*│", line)]
    assert [int(r.split("│")[1]) for r in rows] == list(range(2)) and all(len(line) <= 80 for line in out.splitlines())
    code, _, err = cli(
        "trace",
        "--model",
        str(tiny_testbed),
        "--data",
        str(path),
        "--kinds",
        "mlp,neurons",
        "--out",
        str(tmp_path / "bad"),
    )
    assert code == 2 and "neurons" in err
