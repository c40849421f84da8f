"""Second-moment statistics: one pass for many layers, early stop, dtypes, the verified disk cache, corpora."""

from __future__ import annotations

import warnings

import pytest
import torch
from edit_helpers import corpus, saved_model
from tiny import FAMILIES, bpe_tokenizer, random_model

from editscale.errors import ConfigError, DataLoadError
from editscale.model.anatomy import get_anatomy
from editscale.model.hooks import capture
from editscale.model.tokens import encode_batch
from editscale.stats import second_moment as sm
from editscale.stats.second_moment import (
    Corpus,
    StatsCache,
    compute_second_moments,
    resolve_corpus,
    second_moments,
)


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def texts():
    return Corpus.from_texts(corpus(40))


@pytest.mark.parametrize("family", FAMILIES)
def test_many_layers_in_one_pass_equal_one_layer_at_a_time(family, tok, texts):
    model = random_model(family, vocab_size=len(tok))
    together = compute_second_moments(model, tok, [0, 1, 2], texts, n_samples=300, progress=False)
    for layer in (0, 1, 2):
        alone = compute_second_moments(model, tok, [layer], texts, n_samples=300, progress=False)[layer]
        assert together[layer].count == alone.count == 300
        torch.testing.assert_close(together[layer].matrix, alone.matrix, rtol=1e-5, atol=1e-6)


def test_moment_is_the_mean_outer_product_of_the_keys(tok):
    model = random_model("llama", vocab_size=len(tok))
    a = get_anatomy(model)
    lines = corpus(6)
    got = compute_second_moments(model, tok, [1], Corpus.from_texts(lines), n_samples=10_000, progress=False)[1]
    batch = encode_batch(tok, lines)
    with capture(model, [a.mlp_out_name(1)]) as keys:
        model(**batch.model_inputs())
    k = keys[a.mlp_out_name(1)][batch.attention_mask.bool()].double()
    assert got.count == k.shape[0]
    torch.testing.assert_close(got.matrix.double(), k.T @ k / k.shape[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(got.matrix, got.matrix.T)


def test_pass_stops_after_the_deepest_needed_layer(tok, texts):
    model = random_model("gpt2", vocab_size=len(tok))
    a = get_anatomy(model)
    calls = []
    handle = a.layer(model, 2).register_forward_hook(lambda *args: calls.append(1))
    try:
        compute_second_moments(model, tok, [0, 1], texts, n_samples=100, progress=False)
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize("model_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_get_float32_statistics(model_dtype, tok, texts):
    model = random_model("gpt2", vocab_size=len(tok)).to(model_dtype)
    got = compute_second_moments(model, tok, [0], texts, n_samples=200, progress=False)[0]
    assert got.matrix.dtype == torch.float32 and torch.isfinite(got.matrix).all()
    wide = compute_second_moments(model, tok, [0], texts, n_samples=200, dtype=torch.float64, progress=False)[0]
    assert wide.matrix.dtype == torch.float64


def test_sample_count_and_short_corpus(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    short = Corpus.from_texts(["one short line"])
    with pytest.warns(UserWarning, match="only"):
        got = compute_second_moments(model, tok, [0], short, n_samples=10_000, progress=False)[0]
    assert got.count == len(tok("one short line")["input_ids"])
    with pytest.raises(ConfigError):
        compute_second_moments(model, tok, [0], short, n_samples=0, progress=False)


def test_cache_hit_miss_and_verification(tmp_path, tok, texts, monkeypatch):
    model = random_model("gpt2", vocab_size=len(tok))
    cache = StatsCache(tmp_path)
    first = second_moments(model, tok, [0, 2], texts, n_samples=200, cache=cache, fingerprint="fp", progress=False)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 and all(f.suffix == ".safetensors" for f in files)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(sm, "compute_second_moments", fail)
    again = second_moments(model, tok, [2, 0], texts, n_samples=200, cache=cache, fingerprint="fp", progress=False)
    for layer in (0, 2):
        assert torch.equal(first[layer].matrix, again[layer].matrix)
    monkeypatch.undo()

    # another sample count, corpus or model is another key
    key = sm.StatsKey("fp", 0, get_anatomy(model).weight_name(0), texts.digest, 200, "float32", 128)
    assert cache.load(key) is not None
    for other in (key.__class__(**{**key.__dict__, "n_samples": 201}),
                  key.__class__(**{**key.__dict__, "fingerprint": "other"}),
                  key.__class__(**{**key.__dict__, "corpus": "x"})):
        assert cache.load(other) is None

    # a tampered file fails verification and is recomputed
    path = cache.path(key)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="failed verification"):
        assert cache.load(key) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = second_moments(model, tok, [0], texts, n_samples=200, cache=cache, fingerprint="fp", progress=False)
    torch.testing.assert_close(fresh[0].matrix, first[0].matrix)
    assert cache.load(key) is not None  # rewritten
    assert not list(tmp_path.glob("*.tmp"))


def test_corpus_sources(tmp_path):
    f = tmp_path / "text.txt"
    f.write_text("first line\n\nsecond line\n")
    c = resolve_corpus(str(f))
    assert list(c.texts()) == ["first line", "second line"]
    assert resolve_corpus(["a", "b"]).digest != resolve_corpus(["a", "c"]).digest
    with pytest.raises(DataLoadError, match="does not exist"):
        resolve_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(DataLoadError, match="no statistics corpus"):
        resolve_corpus(None, model_dir=tmp_path)
    d = saved_model(tmp_path / "m")
    assert resolve_corpus("auto", model_dir=d).name.endswith("corpus.txt")
    assert resolve_corpus(str(d)).name.endswith("corpus.txt")


def test_hub_corpus_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataLoadError, match="hub|datasets"):
        resolve_corpus("hub:wikitext:wikitext-103-raw-v1")
    with pytest.raises(DataLoadError, match="hub|datasets"):
        resolve_corpus("wikitext")
