"""The testbed: tokenizer conventions, specs and the registry, and one real (cached) build of testbed:tiny."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from editscale.data.corpus import filler_text
from editscale.data.downstream import SKILL_NAMES, skill_tasks
from editscale.data.records import EditCase
from editscale.errors import ConfigError, DataLoadError, ModelLoadError
from editscale.testbed import registry
from editscale.testbed.specs import SPECS, TestbedSpec, get_spec
from editscale.testbed.tokenizer import train_tokenizer
from editscale.testbed.train import MANIFEST_FILE, tokenizer_texts


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(tokenizer_texts(SPECS["tiny"]), 2048)


def test_tokenizer_round_trips_and_keeps_gpt2_leading_space_convention(tokenizer):
    for text in [*filler_text(20, seed=5, names=["Vrith Skyshon"]), "Q: What is the sport of Faer Waiart? A: golf"]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.eos_token_id not in ids  # no BOS or EOS added
    with_space, bare = tokenizer(" tennis")["input_ids"], tokenizer("tennis")["input_ids"]
    assert len(with_space) == 1 and with_space != bare
    assert tokenizer.convert_ids_to_tokens(with_space)[0].startswith("Ġ")
    # a target continues its prompt after one space, without merging across the boundary
    prompt = tokenizer("Faer Waiart plays the sport of")["input_ids"]
    assert tokenizer("Faer Waiart plays the sport of tennis")["input_ids"] == prompt + with_space
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"


def test_unknown_testbed_names_the_known_ones():
    with pytest.raises(ModelLoadError, match="tiny, demo"):
        get_spec("huge")
    from editscale.names import load_model

    with pytest.raises(ModelLoadError, match="unknown testbed 'huge'"):
        load_model("testbed:huge")


def test_spec_validation_and_hash():
    base = SPECS["tiny"]
    assert dataclasses.replace(base, steps=base.steps + 1).hash != base.hash
    assert dataclasses.replace(base).hash == base.hash
    with pytest.raises(ConfigError, match="divisible"):
        TestbedSpec(name="x", d_model=100, n_heads=3)
    with pytest.raises(ConfigError, match="edit layers"):
        TestbedSpec(name="x", n_layers=2, rome_layer=5)
    with pytest.raises(ConfigError, match="init_std must be positive"):
        TestbedSpec(name="x", init_std=0.0)


def test_cache_root_follows_editscale_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITSCALE_HOME", str(tmp_path))
    path = registry.model_path("tiny")
    assert path.parent == tmp_path / "testbed"
    assert path.name == f"tiny-{SPECS['tiny'].hash}"


def test_tiny_build_reaches_its_recall_and_writes_everything(tiny_testbed):
    m = json.loads((tiny_testbed / MANIFEST_FILE).read_text())
    assert m["name"] == "tiny" and m["spec_hash"] == SPECS["tiny"].hash
    assert m["recall_train"] >= 0.95
    assert 0.0 <= m["recall_heldout"] <= 1.0
    assert set(m["skills"]) == set(SKILL_NAMES)
    assert isinstance(m["rome_layer"], int) and m["memit_layers"]
    assert m["train_seconds"] > 0 and m["sizes"]["parameters"] > 0
    keys = m["key_statistics"][str(m["rome_layer"])]
    assert 0 < keys["leak_subjects"] < 1 and keys["whitened_norm"] > 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "world.jsonl", "corpus.txt", "skills.json"):
        assert (tiny_testbed / name).is_file(), name
    lines = (tiny_testbed / "world.jsonl").read_text().splitlines()
    assert len(lines) == m["sizes"]["cases"]
    case = EditCase.from_dict(json.loads(lines[0]))
    assert case.paraphrase_prompts and case.neighborhood_prompts and case.other_fact_prompts


def test_second_build_is_a_cache_hit(tiny_testbed, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(registry, "build", no_build)
    assert registry.ensure_built("tiny") == tiny_testbed


def test_tiny_model_loads_and_knows_its_facts(tiny_testbed):
    from editscale.eval.scoring import score_continuations
    from editscale.names import load_model

    model, tok, anatomy = load_model("testbed:tiny")
    assert anatomy.family == "gpt2"
    cases = [EditCase.from_dict(json.loads(line)) for line in (tiny_testbed / "world.jsonl").read_text().splitlines()[:50]]
    prompts = [c.request.text for c in cases]
    true = score_continuations(model, tok, prompts, [c.request.target_true for c in cases])
    new = score_continuations(model, tok, prompts, [c.request.target_new for c in cases])
    assert float((true.logprob > new.logprob).float().mean()) >= 0.95


def test_skill_tasks_are_balanced_held_out_few_shot_tasks(tiny_testbed, tmp_path):
    tasks = skill_tasks(tiny_testbed, n=40, seed=1)
    assert [t.name for t in tasks] == list(SKILL_NAMES)
    for t in tasks:
        assert Counter(e.label for e in t.examples) == {0: 20, 1: 20}
        if t.name in ("paraphrase", "entailment"):  # zero-shot: the prompt is the example's own block
            assert t.demos == () and t.prompt(t.examples[0]) == t.format.render_block(t.examples[0], False)
            continue
        assert len(t.demos) == 2 and {d.label for d in t.demos} == {0, 1}
        assert t.prompt(t.examples[0]).startswith(t.format.render_block(t.demos[0], with_answer=True))
    assert [e.fields for e in skill_tasks(tiny_testbed, n=40, seed=1)[0].examples] == \
        [e.fields for e in tasks[0].examples]
    with pytest.raises(DataLoadError, match="no skills.json"):
        skill_tasks(tmp_path)


def test_cli_build_prints_json(tiny_testbed, cli):
    code, out, err = cli("testbed", "build", "tiny", "--json")
    assert code == 0, err
    out = json.loads(out)
    assert out["name"] == "tiny" and out["dir"] == str(tiny_testbed) and out["cached"] is True
    assert out["recall_train"] >= 0.95 and set(out["skills"]) == set(SKILL_NAMES)
    assert {"recall_heldout", "train_seconds", "rome_layer", "memit_layers"} <= set(out)


def test_cli_unknown_testbed_is_one_line_error(cli):
    code, _, err = cli("testbed", "build", "huge")
    assert code == 2
    assert err.startswith("error: unknown testbed 'huge'") and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(not registry.is_built(registry.model_path("demo")),
                    reason="testbed:demo is not built here (editscale testbed build demo, about 10 minutes)")
def test_demo_skills_reach_f1_0_9_and_recall_0_95(cli):
    """The issue's bar, measured on the built demo model: every synthetic skill at F1 >= 0.9 before editing."""
    code, out, err = cli("downstream", "--model", "testbed:demo", "--tasks", "skills", "--json")
    assert code == 0, err
    f1 = {name: r["f1"] for name, r in json.loads(out).items()}
    assert set(f1) == set(SKILL_NAMES) and min(f1.values()) >= 0.9, f1
    manifest = json.loads((registry.model_path("demo") / MANIFEST_FILE).read_text())
    assert manifest["recall_train"] >= 0.95 and manifest["recall_heldout"] >= 0.9


def test_preserved_corpus_spreads_the_skill_texts(tiny_testbed, cli, tmp_path):
    from editscale.testbed.corpus import preserved_corpus

    lines, n_generic = preserved_corpus(tiny_testbed, 40)
    assert len(lines) == n_generic + 40 and all("\n" not in line for line in lines)
    generic = set((tiny_testbed / "corpus.txt").read_text().splitlines())
    skill_at = [i for i, line in enumerate(lines) if line not in generic]
    assert len(skill_at) == 40 and skill_at[0] < len(lines) // 10 and skill_at[-1] > len(lines) * 9 // 10  # spread
    code, _, err = cli("testbed", "corpus", str(tiny_testbed), "--out", str(tmp_path / "c.txt"), "--skill-texts", "40")
    assert code == 0, err
    assert (tmp_path / "c.txt").read_text().splitlines() == lines
    code, _, err = cli("testbed", "corpus", str(tiny_testbed), "--out", str(tmp_path / "c.txt"))
    assert code == 2 and "exists" in err
