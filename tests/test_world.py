"""The synthetic knowledge world, its filler text and its skills: invariants, determinism, held-out splits."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest

from editscale.data.corpus import FillerGenerator, filler_text, read_text_file
from editscale.data.records import EditCase
from editscale.data.world import FRAMES, build_world, generate_names, make_relations
from editscale.errors import ConfigError, DataLoadError
from editscale.testbed.skills import SKILL_NAMES, SkillGenerator, skill_training_texts
from editscale.testbed.specs import SPECS
from editscale.testbed.tokenizer import train_tokenizer
from editscale.testbed.train import DataStream, corpus_lines, tokenizer_texts

N = 48


@pytest.fixture(scope="module")
def world():
    return build_world(N, seed=3, n_skill_entities=40, n_background_names=100)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(tokenizer_texts(SPECS["tiny"]), 2048)


def subject_in(text: str, names) -> str:
    found = [s for s in names if re.search(rf"(?<!\w){re.escape(s)}(?!\w)", text)]
    assert len(found) == 1, (text, found)
    return found[0]


def test_relations_have_an_edit_template_and_held_out_paraphrase_templates():
    rels = make_relations()
    assert len(rels) >= 10
    assert len({r.relation_id for r in rels}) == len(rels)
    for r in rels:
        assert r.edit_template.count("{}") == 1 and not r.edit_template.endswith("{}")
        assert len(r.heldout_templates) >= 2
        assert not set(r.heldout_templates) & set(r.train_templates)
        assert all(t.count("{}") == 1 for t in (*r.train_templates, *r.heldout_templates))
        assert len(set(r.objects)) == len(r.objects) >= 10
    # every frame is trained for some relations, so held-out wording is known but the template is new
    for frame in FRAMES:
        held = [r for r in rels if frame.replace("{kw}", r.keyword) in r.heldout_templates]
        assert 0 < len(held) < len(rels)


def test_bad_world_sizes_are_config_errors():
    with pytest.raises(ConfigError):
        make_relations(0)
    with pytest.raises(ConfigError):
        build_world(1)


def test_cases_are_counterfact_shaped_and_consistent(world):
    cases = world.cases()
    assert len(cases) == N * len(world.relations)
    assert len({c.case_id for c in cases}) == len(cases)
    assert len({c.request.subject for c in cases[:N]}) == N  # the first round edits every subject once
    subjects = set(world.subjects)
    for case in cases:
        req = case.request
        rel = world.relation(req.relation_id)
        assert req.prompt == rel.edit_template
        assert req.target_true == world.facts[req.subject][req.relation_id]
        assert req.target_new in rel.objects and req.target_new != req.target_true
        assert req.subject in req.text
        assert case.paraphrase_prompts == tuple(t.replace("{}", req.subject) for t in rel.heldout_templates)
        assert case.neighborhood_prompts
        for p in case.neighborhood_prompts:
            other = subject_in(p, subjects)
            assert other != req.subject
            assert world.facts[other][req.relation_id] == req.target_true  # same relation and true object
        for p in case.attribute_prompts:
            assert world.facts[subject_in(p, subjects)][req.relation_id] == req.target_new
        assert len(case.other_fact_prompts) == len(world.relations) - 1
        for prompt, obj in case.other_fact_prompts:
            assert req.subject in prompt
            rid = next(r.relation_id for r in world.relations if r.edit_template.replace("{}", req.subject) == prompt)
            assert world.facts[req.subject][rid] == obj
        assert EditCase.from_dict(case.to_dict()) == case


def test_world_is_deterministic_per_seed(world):
    again = build_world(N, seed=3, n_skill_entities=40, n_background_names=100)
    assert [c.to_dict() for c in again.cases()] == [c.to_dict() for c in world.cases()]
    other = build_world(N, seed=4, n_skill_entities=40, n_background_names=100)
    assert other.subjects != world.subjects


def test_name_pools_are_disjoint_and_objects_balanced(world):
    pools = [set(world.subjects), set(world.skill_entities), set(world.background_names)]
    assert sum(len(p) for p in pools) == len(set().union(*pools))
    for r in world.relations:
        counts = Counter(world.facts[s][r.relation_id] for s in world.subjects)
        assert max(counts.values()) - min(counts.values()) <= 1


def test_names_have_4_to_9_tokens_and_diverse_last_tokens(tokenizer):
    def pieces(s):
        return tokenizer.tokenize(s)

    names = generate_names(250, seed=0, tokenize=pieces)
    lengths = [len(pieces(" " + n)) for n in names]
    assert min(lengths) >= 4 and max(lengths) <= 9
    last = Counter(pieces(" " + n)[-1] for n in names)
    assert len(last) >= 100
    assert max(last.values()) == 1


def test_held_out_templates_never_occur_in_training_text(world, tokenizer):
    spec = dataclasses.replace(SPECS["tiny"], filler_docs=50, skill_docs=200)
    docs = DataStream(spec, world, tokenizer).epoch_documents()
    text = "\n".join([t for t, _ in docs] + skill_training_texts(world, 200, 0))
    for rel in world.relations:
        for t in rel.heldout_templates:
            for s in (*world.subjects, *world.skill_entities):
                assert t.replace("{}", s) not in text
        # while the edit template is trained for every subject
        assert all(rel.edit_template.replace("{}", s) in text for s in world.subjects)


def test_corpus_is_mostly_filler_text_with_some_facts(world):
    spec = dataclasses.replace(SPECS["tiny"], corpus_docs=400)
    lines = corpus_lines(world, spec)
    with_subject = [line for line in lines if any(s in line for s in world.subjects)]
    assert len(with_subject) == int(spec.corpus_fact_share * spec.corpus_docs) > 0
    # the fact lines are short: most of the text (what the statistics see) is filler
    assert sum(map(len, with_subject)) < 0.25 * sum(map(len, lines))
    words = Counter(w for line in lines for w in line.split())
    assert len(words) > 300  # a real vocabulary


def test_filler_is_deterministic_and_mentions_names():
    a = filler_text(20, seed=1, names=["Kal Dunstabi"])
    assert a == filler_text(20, seed=1, names=["Kal Dunstabi"])
    assert a != filler_text(20, seed=2, names=["Kal Dunstabi"])
    assert any("Kal Dunstabi" in p for p in a)
    assert all(p[0].isupper() and p.rstrip()[-1] in ".?" for p in a)
    assert FillerGenerator(0).simple_sentence().endswith(".")


def test_read_text_file(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("first line\n\n  second line \n")
    assert read_text_file(p) == ["first line", "second line"]
    with pytest.raises(DataLoadError, match="does not exist"):
        read_text_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataLoadError, match="empty"):
        read_text_file(tmp_path / "empty.txt")


def test_skill_examples_are_balanced_and_split(world):
    train, held = SkillGenerator(world, 0, "train"), SkillGenerator(world, 0, "eval")
    for task in SKILL_NAMES:
        exs = held.balanced(task, 40)
        assert Counter(e.label for e in exs) == {0: 20, 1: 20}
        train_texts = {str(train.example(task, i % 2).fields) for i in range(200)}
        assert not train_texts & {str(e.fields) for e in exs}
    half = len(world.skill_entities) // 2
    train_entities, held_entities = set(world.skill_entities[:half]), set(world.skill_entities[half:])
    for e in held.balanced("entailment", 20):
        assert subject_in(e.fields["premise"], world.skill_entities) in held_entities
    for e in train.balanced("paraphrase", 20):
        assert subject_in(e.fields["sentence1"], world.skill_entities) in train_entities


def test_training_rows_weight_exactly_the_answers(world, tokenizer):
    spec = dataclasses.replace(SPECS["tiny"], filler_docs=20, skill_docs=40, batch_size=8, answer_weight=4.0)
    ids, weights = next(DataStream(spec, world, tokenizer).batches())
    answers = {o for r in world.relations for o in r.objects}
    answers |= {"positive", "negative", "Yes", "No", "True", "False"}
    heavy = [tokenizer.decode([int(t)]).strip() for t, w in zip(ids.flatten(), weights.flatten()) if w == 4.0]
    assert heavy and set(heavy) <= answers
    assert set(weights.flatten().tolist()) <= {0.0, 1.0, 4.0}
