"""Anatomy, hooks, token helpers and loading, on tiny random models of all four families."""

from pathlib import Path

import pytest
import torch
from tiny import FAMILIES, bpe_tokenizer, random_model

from editscale.errors import ModelLoadError, SubjectNotInPromptError, UnsupportedModelError
from editscale.model.anatomy import FAMILIES as ANATOMIES
from editscale.model.anatomy import get_anatomy
from editscale.model.hooks import add_at, capture, run_until
from editscale.model.loading import fingerprint, load_model
from editscale.model.tokens import continuation_ids, encode, encode_batch, last_subject_index, target_ids

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.mark.parametrize("family", [*FAMILIES, "gemma3_text"])
def test_anatomy_shapes_and_orientation(family, tok):
    model = random_model(family, vocab_size=len(tok))
    a = get_anatomy(model)
    assert a.n_layers(model) == 3
    w = a.weight(model, 1)
    hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    assert w.shape[0] == hidden and w.shape[1] > hidden  # (out=hidden, in=MLP width)
    # the stored layout round-trips
    assert torch.equal(a.to_stored(w), a.weight_param(model, 1))
    # the (out, in) matrix maps the captured MLP key to the module's output (bias aside)
    batch = encode_batch(tok, ["The quick brown fox"])
    with capture(model, [a.mlp_out_name(1)], inputs=True) as ins, \
            capture(model, [a.mlp_out_name(1)], inputs=False) as outs:
        model(**batch.model_inputs())
    k, out = ins[a.mlp_out_name(1)][0], outs[a.mlp_out_name(1)][0]
    bias = getattr(a.mlp_out_module(model, 1), "bias", None)
    expected = k @ w.T + (bias if bias is not None else 0)
    assert torch.allclose(out, expected, atol=1e-5)
    with pytest.raises(UnsupportedModelError, match="layers 0-2"):
        a.layer(model, 3)


@pytest.mark.parametrize("model_type", sorted(ANATOMIES))
def test_every_anatomy_names_modules_its_family_has(model_type):
    model = random_model(model_type)
    a = get_anatomy(model)
    assert model.config.model_type == model_type and a is ANATOMIES[model_type]
    names = dict(model.named_modules())
    layer = a.layer_name(1)
    for rel in (a.mlp_in, a.mlp_out, a.mlp_norm, a.mlp_gate, a.attn):
        assert rel is None or f"{layer}.{rel}" in names, (model_type, rel)
    assert a.final_norm in names


def test_unknown_architecture_is_a_clear_error():
    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "t5"})()

    with pytest.raises(UnsupportedModelError, match="no anatomy for model_type 't5'"):
        get_anatomy(Fake())


@pytest.mark.parametrize("family", FAMILIES)
def test_add_at_changes_only_chosen_position_and_stop_early(family, tok):
    model = random_model(family, vocab_size=len(tok))
    a = get_anatomy(model)
    batch = encode_batch(tok, ["The quick brown fox jumps", "Paris"])
    pos = torch.tensor([2, 0])
    with capture(model, [a.layer_name(2)], inputs=False) as base:
        model(**batch.model_inputs())
    vec = torch.randn(2, a.hidden_dim(model))
    with add_at(model, a.layer_name(0), pos, vec), capture(model, [a.layer_name(0)], inputs=False) as got:
        model(**batch.model_inputs())
    with capture(model, [a.layer_name(0)], inputs=False) as plain:
        model(**batch.model_inputs())
    diff = got[a.layer_name(0)] - plain[a.layer_name(0)]
    assert torch.allclose(diff[0, 2], vec[0], atol=1e-5) and torch.allclose(diff[1, 0], vec[1], atol=1e-5)
    diff[0, 2] = 0
    diff[1, 0] = 0
    assert diff.abs().max() < 1e-6
    # stop early: capture layer 0's MLP input at chosen positions without running the rest
    with capture(model, [a.mlp_out_name(0)], positions=pos, stop_after=a.mlp_out_name(0)) as keys:
        run_until(model, **batch.model_inputs())
    assert keys[a.mlp_out_name(0)].shape == (2, a.key_dim(model))
    assert base[a.layer_name(2)].shape[:2] == batch.input_ids.shape


def test_target_tokens_keep_leading_space_and_no_bos(tok):
    ids = continuation_ids(tok, "Danielle Darrieux lives in", "Paris")
    assert ids == target_ids(tok, "Paris")
    assert tok.decode(ids) == " Paris"
    assert tok.eos_token_id not in ids


def test_last_subject_index(tok):
    i = last_subject_index(tok, "{} plays the sport of", "LeBron James")
    ids = encode(tok, "LeBron James plays the sport of")
    assert tok.decode(ids[: i + 1]) == "LeBron James"
    j = last_subject_index(tok, "The mother tongue of {} is", "Toko Yasuda")
    assert tok.decode(encode(tok, "The mother tongue of Toko Yasuda is")[: j + 1]).endswith("Toko Yasuda")
    with pytest.raises(SubjectNotInPromptError, match="record 'r7'.*'Nobody'"):
        last_subject_index(tok, "LeBron James plays", "Nobody", case_id="r7")


@pytest.mark.skipif(not (SHARED / "gpt2_tokenizer").exists(), reason="shared/data/gpt2_tokenizer not present")
def test_real_gpt2_tokenizer_conventions():
    from transformers import AutoTokenizer

    gtok = AutoTokenizer.from_pretrained(SHARED / "gpt2_tokenizer")
    assert continuation_ids(gtok, "The Eiffel Tower is in", "Paris") == [6342]  # " Paris"
    i = last_subject_index(gtok, "{} is located in", "The Eiffel Tower")
    assert gtok.decode(encode(gtok, "The Eiffel Tower is located in")[i]) == " Tower"


@pytest.mark.skipif(not (SHARED / "tiny_models" / "fake_gpt2").exists(), reason="shared/data/tiny_models absent")
def test_load_local_directory():
    model, tok, anatomy = load_model(str(SHARED / "tiny_models" / "fake_gpt2"))
    assert anatomy.family == "gpt2" and not model.training
    assert tok.pad_token_id is not None
    assert fingerprint(model) == fingerprint(model)


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))
    for name in ("testbed:demo", str(tmp_path / "model.gguf")):  # names are resolved a layer up
        with pytest.raises(ModelLoadError, match="not a model directory.*editscale.load_model"):
            load_model(name)


def test_hub_name_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no network.*--model"):
        load_model("some-org/model-that-is-not-cached")


def test_fingerprint_changes_with_weights(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    before = fingerprint(model)
    with torch.no_grad():
        get_anatomy(model).weight_param(model, 0).add_(0.01)
    assert fingerprint(model) != before
