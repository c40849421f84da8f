"""Second-moment statistics: one pass for many layers, early stop, dtypes, the verified disk cache, corpora."""

from __future__ import annotations

import warnings

import pytest
import torch
from edit_helpers import corpus, saved_model
from tiny import FAMILIES, bpe_tokenizer, random_model

from editscale.data.text_corpus import Corpus, resolve_corpus
from editscale.errors import ConfigError, DataLoadError
from editscale.model.anatomy import get_anatomy
from editscale.model.hooks import capture
from editscale.model.tokens import encode_batch
from editscale.stats import second_moment as sm
from editscale.stats.second_moment import KeySample, StatsCache, compute_second_moments, second_moments


def in_order(n: int) -> KeySample:
    """The first n key vectors in corpus order (editscale's statistics before texts were sampled)."""
    return KeySample(n_tokens=n, order="in_order")


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def texts():
    return Corpus.from_texts(corpus(40))


@pytest.mark.parametrize("family", FAMILIES)
def test_many_layers_in_one_pass_equal_one_layer_at_a_time(family, tok, texts):
    model = random_model(family, vocab_size=len(tok))
    together = compute_second_moments(model, tok, [0, 1, 2], texts, sample=in_order(300), progress=False)
    for layer in (0, 1, 2):
        alone = compute_second_moments(model, tok, [layer], texts, sample=in_order(300),
                                       progress=False)[layer]
        assert together[layer].count == alone.count == 300
        torch.testing.assert_close(together[layer].matrix, alone.matrix, rtol=1e-5, atol=1e-6)


def test_moment_is_the_mean_outer_product_of_the_keys(tok):
    model = random_model("llama", vocab_size=len(tok))
    a = get_anatomy(model)
    lines = corpus(6)
    got = compute_second_moments(model, tok, [1], Corpus.from_texts(lines), sample=in_order(10_000),
                                 progress=False)[1]
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
        compute_second_moments(model, tok, [0, 1], texts, sample=in_order(100), progress=False)
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize("model_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_get_float32_statistics(model_dtype, tok, texts):
    model = random_model("gpt2", vocab_size=len(tok)).to(model_dtype)
    got = compute_second_moments(model, tok, [0], texts, sample=in_order(200), progress=False)[0]
    assert got.matrix.dtype == torch.float32 and torch.isfinite(got.matrix).all()
    wide = compute_second_moments(model, tok, [0], texts, sample=in_order(200), dtype=torch.float64,
                                  progress=False)[0]
    assert wide.matrix.dtype == torch.float64


def test_sample_count_and_short_corpus(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    short = Corpus.from_texts(["one short line"])
    with pytest.warns(UserWarning, match="only"):
        got = compute_second_moments(model, tok, [0], short, sample=in_order(10_000), progress=False)[0]
    assert got.count == len(tok("one short line")["input_ids"])
    with pytest.raises(ConfigError, match="n_tokens must be positive"):
        compute_second_moments(model, tok, [0], short, sample=in_order(0), progress=False)


def test_cache_hit_miss_and_verification(tmp_path, tok, texts, monkeypatch):
    model = random_model("gpt2", vocab_size=len(tok))
    cache = StatsCache(tmp_path)
    first = second_moments(model, tok, [0, 2], texts, sample=in_order(200), cache=cache, fingerprint="fp",
                           progress=False)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 and all(f.suffix == ".safetensors" for f in files)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(sm, "compute_second_moments", fail)
    again = second_moments(model, tok, [2, 0], texts, sample=in_order(200), cache=cache, fingerprint="fp",
                           progress=False)
    for layer in (0, 2):
        assert torch.equal(first[layer].matrix, again[layer].matrix)
    monkeypatch.undo()

    # another sample count, corpus or model is another key
    key = sm.StatsKey("fp", 0, get_anatomy(model).weight_name(0), texts.digest, in_order(200), "float32", 128)
    assert cache.load(key) is not None
    for other in (key.__class__(**{**key.__dict__, "sample": in_order(201)}),
                  key.__class__(**{**key.__dict__, "sample": KeySample(n_texts=200, order="in_order")}),
                  key.__class__(**{**key.__dict__, "sample": KeySample(n_tokens=200)}),
                  key.__class__(**{**key.__dict__, "sample": KeySample(n_tokens=200, seed=1)}),
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
        fresh = second_moments(model, tok, [0], texts, sample=in_order(200), cache=cache, fingerprint="fp",
                               progress=False)
    torch.testing.assert_close(fresh[0].matrix, first[0].matrix)
    assert cache.load(key) is not None  # rewritten
    assert not list(tmp_path.glob("*.tmp"))


def test_corpus_sources(tmp_path, monkeypatch):
    f = tmp_path / "text.txt"
    f.write_text("first line\n\nsecond line\n")
    c = resolve_corpus(str(f))
    assert list(c.texts()) == ["first line", "second line"]
    assert resolve_corpus(["a", "b"]).digest != resolve_corpus(["a", "c"]).digest
    with pytest.raises(DataLoadError, match="does not exist"):
        resolve_corpus(str(tmp_path / "missing.txt"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataLoadError, match=r"no statistics corpus.*wikitext.*--corpus FILE"):
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


def _old_in_order_moment(model, tok, layer: int, texts: list[str], n: int, max_length: int, batch_size: int):
    """editscale's statistics before sampling (commit 39b3bed): the first n tokens' keys in corpus order,
    batches of batch_size texts, accumulated with the same block-triangular product."""
    name = get_anatomy(model).mlp_out_name(layer)
    dim = get_anatomy(model).key_dim(model, layer)
    acc, count = torch.zeros(dim, dim), 0
    seqs = [ids for ids in (tok(t)["input_ids"][:max_length] for t in texts if t.strip()) if ids]
    for start in range(0, len(seqs), batch_size):
        batch = sm.pad_batch(seqs[start: start + batch_size], tok.pad_token_id, torch.device("cpu"))
        with capture(model, [name]) as got, torch.no_grad():
            model(**batch.model_inputs())
        take = min(int(batch.attention_mask.sum()), n - count)
        sm._add_outer(acc, got[name][batch.attention_mask.bool()][:take])
        count += take
        if count >= n:
            break
    return sm._symmetric(acc) / count


def test_in_order_token_counts_give_the_old_statistics_bit_for_bit(tok):
    """The testbed preset keeps mom2_n_tokens in corpus order, so its statistics (and the demo's figures) are
    exactly what they were before texts could be sampled."""
    model = random_model("gpt2", vocab_size=len(tok))
    lines = corpus(60)
    got = compute_second_moments(model, tok, [1], Corpus.from_texts(lines), sample=in_order(333), max_length=9,
                                 batch_size=7, progress=False)[1]
    assert got.count == 333
    assert torch.equal(got.matrix, _old_in_order_moment(model, tok, 1, lines, 333, 9, 7))


def test_texts_are_drawn_at_random_across_the_whole_corpus(tmp_path, tok):
    lines = [f"line number {i} of the corpus" for i in range(200)]
    f = tmp_path / "c.txt"
    f.write_text("\n\n".join(lines) + "\n")  # blank lines between texts: never drawn
    for c in (Corpus.from_file(f), Corpus.from_texts(lines)):
        drawn = list(c.shuffled(3))
        assert sorted(drawn) == sorted(lines)  # each text once, nothing else
        assert drawn == list(c.shuffled(3)) != list(c.shuffled(4)) and drawn != lines
        assert max(lines.index(t) for t in drawn[:10]) >= 100  # not the corpus's head
    model = random_model("gpt2", vocab_size=len(tok))
    corp = Corpus.from_file(f)
    got = compute_second_moments(model, tok, [0], corp, sample=KeySample(n_texts=10, seed=3),
                                 progress=False)[0]
    chosen = list(corp.shuffled(3))[:10]
    assert got.texts == 10 and got.count == sum(len(tok(t)["input_ids"]) for t in chosen)
    want = compute_second_moments(model, tok, [0], Corpus.from_texts(chosen), sample=KeySample(order="in_order"),
                                  progress=False)[0]
    torch.testing.assert_close(got.matrix, want.matrix, rtol=1e-5, atol=1e-7)
    # a token count ends the pass inside a text
    part = compute_second_moments(model, tok, [0], corp, sample=KeySample(n_texts=10, n_tokens=25, seed=3),
                                  progress=False)[0]
    assert part.count == 25 and part.texts < 10


def test_the_old_sample_count_name_is_a_one_line_error_naming_the_new_ones():
    from editscale.methods.hparams import RomeHparams

    with pytest.raises(ConfigError, match="mom2_n_texts.*mom2_n_tokens"):
        RomeHparams.validated({"mom2_n_samples": 1000})
    hp = RomeHparams.validated({})
    assert (hp.mom2_n_texts, hp.mom2_n_tokens, hp.mom2_sampling) == (100_000, None, "random")  # the reference's
