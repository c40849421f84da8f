"""The metric declarations and the metrics the papers' code defines: hand-computed cases on a bigram LM, the
scale paper's forgetting, distances, the Score, and a metric registered from outside (one declaration is all
it takes: the evaluation, the run database, the summary and the report follow)."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from tiny import BigramLM, word_tokenizer

from editscale.data.records import EditCase, EditRequest
from editscale.eval import metrics as M
from editscale.eval.counterfact import ReferenceScorer, evaluate_cases
from editscale.eval.forgetting import Forgetting
from editscale.eval.scoring import generate, greedy_continuations, mean_ngram_entropy
from editscale.experiment.guard import weight_distance

WORDS = ["Ann", "Bob", "is", "in", "x", "y", "z", "big", "red"]


@pytest.fixture()
def bigram():
    tok = word_tokenizer(WORDS)
    ids = tok.get_vocab()
    v = len(ids)
    probs = torch.full((v, v), 1e-3)
    probs[ids["is"], ids["x"]] = 0.6
    probs[ids["is"], ids["y"]] = 0.3
    probs[ids["in"], ids["y"]] = 0.7
    probs[ids["in"], ids["x"]] = 0.2
    probs[ids["x"], ids["z"]] = 0.5
    probs[ids["y"], ids["big"]] = 0.6
    probs[ids["y"], ids["z"]] = 0.3
    probs[ids["z"], ids["red"]] = 0.9
    probs = probs / probs.sum(1, keepdim=True)
    return BigramLM(probs), tok, probs, ids


def _case(**kw) -> EditCase:
    return EditCase(EditRequest("{} is", "Ann", target_new="y", target_true="x", case_id="c"), **kw)


def test_teacher_forced_correct_and_generated_success_by_hand(bigram):
    model, tok, _, _ = bigram
    # edit prompt "Ann is": x is the argmax (0.6), so the new target y is neither correct nor generated;
    # paraphrases "Ann in" (argmax y: generated and correct) and "Bob is" (argmax x)
    case = _case(paraphrase_prompts=("Ann in", "Bob is"))
    r = evaluate_cases(model, tok, [case]).cases[0]
    assert r.efficacy_correct == 0.0 and r.gen_efficacy == 0.0
    assert r.gen_paraphrase == 0.5
    assert greedy_continuations(model, tok, ["Ann in"], 3) == ["y big"]  # then the pad/EOS token (uniform row)
    hit = EditCase(EditRequest("{} in", "Ann", target_new="y", target_true="x", case_id="h"))
    r = evaluate_cases(model, tok, [hit]).cases[0]
    assert r.efficacy_correct == 1.0 and r.gen_efficacy == 1.0 and r.efficacy == 1.0


def test_multi_token_target_is_correct_only_when_every_token_is_the_argmax(bigram):
    model, tok, _, _ = bigram
    # after "in": y (argmax) then after y: big is the argmax, not z -> "y z" is not correct, "y big" is
    two = [EditCase(EditRequest("{} in", "Ann", target_new=t, target_true="x", case_id=t)) for t in ("y z", "y big")]
    r = evaluate_cases(model, tok, two, metrics=("efficacy_correct", "efficacy_acc", "gen_efficacy")).cases
    assert [c.efficacy_correct for c in r] == [0.0, 1.0]
    assert [c.efficacy_acc for c in r] == [0.5, 1.0]
    assert [c.gen_efficacy for c in r] == [0.0, 1.0]


def test_begins_with_is_a_word_prefix():
    assert M.begins_with(" Paris, France", "Paris") and M.begins_with("Paris", " Paris ")
    assert not M.begins_with(" Parisian food", "Paris") and not M.begins_with(" Lyon", "Paris")
    assert M.begins_with(" New York City", "New York")


def test_attribute_prompts_are_scored(bigram):
    model, tok, _, _ = bigram
    # attribute prompts hold the new object y: "Bob in" prefers y (0.7 > 0.2), "Bob is" prefers x
    r = evaluate_cases(model, tok, [_case(attribute_prompts=("Bob in", "Bob is"))], metrics=("attribute",))
    assert r.cases[0].attribute == 0.5
    assert math.isnan(evaluate_cases(model, tok, [_case()], metrics=("attribute",)).cases[0].attribute)


def test_generation_entropy_and_reference_score_by_hand(bigram):
    model, tok, _, _ = bigram
    case = _case(generation_prompts=("Bob in", "Ann is"), reference_texts=("y big red", "Bob is y"))
    r = evaluate_cases(model, tok, [case], metrics=("gen_entropy", "reference_score"), seed=3).cases[0]
    texts = generate(model, tok, ["Bob in", "Ann is"], max_new_tokens=100, max_length=100, seed=3)
    assert all(len(tok.encode(t)) <= 100 for t in texts)
    assert r.gen_entropy == pytest.approx(mean_ngram_entropy(texts))
    vec = TfidfVectorizer().fit(["y big red", "Bob is y"])
    enc = vec.transform([" ".join(texts), "y big red Bob is y"]).toarray()
    expected = float(enc[0] @ enc[1] / (((enc[0] ** 2).sum() * (enc[1] ** 2).sum()) ** 0.5))
    assert r.reference_score == pytest.approx(expected)


def test_reference_texts_default_to_attribute_prompts_completed_with_the_new_object():
    case = _case(attribute_prompts=("Bob in",))
    assert M.reference_texts(case) == ["Bob in y"]
    assert math.isnan(ReferenceScorer([_case()])(_case(), ["anything"]))


def test_score_needs_all_three(bigram):
    model, tok, _, _ = bigram
    with_all = evaluate_cases(model, tok, [_case(paraphrase_prompts=("Ann in",), neighborhood_prompts=("Bob in",))])
    assert not math.isnan(with_all.summary()["score"])
    no_neighbours = evaluate_cases(model, tok, [_case(paraphrase_prompts=("Ann in",))]).summary()
    assert not math.isnan(no_neighbours["efficacy"]) and math.isnan(no_neighbours["score"])


def test_forgetting_as_the_scale_papers_code():
    f = Forgetting()
    # update 1..4, one edit each: 1 correct, 2 only P-successful, 3 correct, 4 correct
    f.made(1, correct=True, successful=True)
    f.made(2, correct=False, successful=True)
    f.made(3, correct=True, successful=True)
    assert f.to_check(first_new=3) == [1, 2]
    # re-check after update 3: edit 1 lost, edit 2 holds by P
    rc = f.recheck(3, last_edit=3, first_new=3, now={1: (False, False), 2: (True, False)})
    assert (rc.n_correct, rc.n_forgotten) == (2, 1) and rc.forgotten == 0.5  # the current edit 3 counts
    assert rc.forgotten_prob == 0.5
    f.made(4, correct=True, successful=True)
    # re-check after update 4: edit 1 is back, but it stays forgotten; by P, nothing fails now
    rc = f.recheck(4, last_edit=4, first_new=4, now={1: (True, True), 2: (True, False), 3: (True, True)})
    assert (rc.n_correct, rc.n_forgotten) == (3, 1) and rc.forgotten == pytest.approx(1 / 3)
    assert rc.forgotten_prob == 0.0
    assert f.forgotten_at == {1: 3}
    assert Forgetting.from_state_dict(f.state_dict()) == f


def test_distance_per_element_and_per_neuron():
    w0 = torch.zeros(4, 10)
    w = w0.clone()
    w[0, 0] = 3.0
    w[1, 1] = 4.0
    d = weight_distance(w, w0)
    assert d["frobenius"] == 5.0 and d["n_elements"] == 40 and d["n_neurons"] == 10
    assert d["distance_per_element"] == 5.0 / 40 and d["distance_per_neuron"] == 0.5


@pytest.fixture()
def extra_metric():
    """A metric registered from outside: the probability of the new target after the edit prompt."""
    metric = M.register(M.Metric(
        "new_prob", "edit", "P(new)", "edit prompt: the new target's per-token probability",
        fn=lambda v: v.get("edit", "new").prob.mean().item(), reads=(("edit", "new"),), plot="proficiency"))
    yield metric
    M.unregister("new_prob")


def test_a_registered_metric_reaches_evaluation_store_summary_and_report(extra_metric, bigram, tmp_path):
    from test_experiment_runner import config, make_fixture

    from editscale.experiment.runner import run_experiment
    from editscale.experiment.store import RunStore
    from editscale.report.html import write_report

    model, tok, probs, ids = bigram
    r = evaluate_cases(model, tok, [_case()]).summary()
    assert r["new_prob"] == pytest.approx(float(probs[ids["is"], ids["y"]]), rel=1e-5)

    model_dir, data = make_fixture(tmp_path / "fx", n_cases=12)
    summary = run_experiment(config(model_dir, data, edits=4, forget_every=2), tmp_path / "run", progress=False)
    assert 0.0 < summary["new_prob"] < 1.0
    with RunStore.in_dir(tmp_path / "run") as store:
        assert store.frame("edits").new_prob.notna().all()
    html = write_report([tmp_path / "run"]).read_text()
    assert "<th>P(new)</th>" in html

