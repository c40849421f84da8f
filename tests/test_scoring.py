"""Scoring and CounterFact metrics on hand-computed cases (a bigram LM with chosen probabilities)."""

import math

import pytest
import torch
from tiny import FAMILIES, BigramLM, bpe_tokenizer, random_model, word_tokenizer

from editscale.data.records import EditCase, EditRequest
from editscale.eval.counterfact import evaluate_cases
from editscale.eval.scoring import generate, harmonic_mean, ngram_entropy, score_continuations

WORDS = ["Ann", "Bob", "is", "in", "x", "y", "z"]


@pytest.fixture()
def bigram():
    tok = word_tokenizer(WORDS)
    ids = tok.get_vocab()
    v = len(ids)
    probs = torch.full((v, v), 1e-3)
    probs[ids["is"], ids["x"]] = 0.6
    probs[ids["is"], ids["y"]] = 0.3
    probs[ids["in"], ids["x"]] = 0.2
    probs[ids["in"], ids["y"]] = 0.7
    probs[ids["x"], ids["z"]] = 0.5
    probs[ids["y"], ids["z"]] = 0.1
    probs = probs / probs.sum(1, keepdim=True)
    return BigramLM(probs), tok, probs, ids


def test_multi_token_logprob_is_sum_over_target_tokens(bigram):
    model, tok, probs, ids = bigram
    s = score_continuations(model, tok, ["Ann is", "Bob in", "Ann is"], ["x z", "y", "y z"], batch_size=2)
    expected = [
        math.log(probs[ids["is"], ids["x"]]) + math.log(probs[ids["x"], ids["z"]]),
        math.log(probs[ids["in"], ids["y"]]),
        math.log(probs[ids["is"], ids["y"]]) + math.log(probs[ids["y"], ids["z"]]),
    ]
    assert s.logprob.tolist() == pytest.approx(expected, rel=1e-5)
    assert s.n_tokens.tolist() == [2, 1, 2]
    assert s.all_argmax.tolist() == [True, True, False]  # y then z: y is not argmax after "is"
    assert s.token_accuracy.tolist() == pytest.approx([1.0, 1.0, 0.5])


def test_counterfact_metrics_hand_computed(bigram):
    model, tok, probs, ids = bigram
    p = lambda a, b: float(probs[ids[a], ids[b]])
    case = EditCase(
        EditRequest("{} is", "Ann", target_new="y", target_true="x", case_id="c1"),
        paraphrase_prompts=("Ann in", "Bob is"),
        neighborhood_prompts=("Bob is", "Bob in"),
    )
    r = evaluate_cases(model, tok, [case]).summary()
    assert r["n"] == 1
    assert r["efficacy"] == 0.0  # P(y|is)=.3 < P(x|is)=.6
    assert r["efficacy_magnitude"] == pytest.approx(p("is", "y") - p("is", "x"), abs=1e-6)
    assert r["paraphrase"] == 0.5  # "in" prefers y, "is" prefers x
    assert r["neighborhood"] == 0.5  # true x wins after "is", loses after "in"
    nm = ((p("is", "x") - p("is", "y")) + (p("in", "x") - p("in", "y"))) / 2
    assert r["neighborhood_magnitude"] == pytest.approx(nm, abs=1e-6)
    assert r["score"] == 0.0  # harmonic mean with a zero
    assert r["efficacy_acc"] == 0.0 and r["paraphrase_acc"] == 0.5


def test_padding_does_not_change_scores():
    tok = bpe_tokenizer()
    model = random_model("gpt2", vocab_size=len(tok))
    prompts = ["The quick brown fox", "LeBron James plays the sport of", "Paris"]
    targets = ["jumps over", "basketball", "is lovely"]
    batched = score_continuations(model, tok, prompts, targets, batch_size=3)
    single = [score_continuations(model, tok, [p], [t]).logprob.item() for p, t in zip(prompts, targets)]
    assert batched.logprob.tolist() == pytest.approx(single, abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_batched_generation_equals_greedy_recomputation(family):
    """``generate`` left-pads and decodes on the key/value cache; with top_k=1 it must give, for prompts of
    different lengths in one batch, exactly the tokens of a plain one-prompt argmax loop."""
    tok = bpe_tokenizer()
    model = random_model(family, vocab_size=len(tok))
    prompts = ["The quick brown fox", "LeBron James plays the sport of", "Paris"]
    got = generate(model, tok, prompts, max_new_tokens=8, top_k=1)
    for prompt, text in zip(prompts, got):
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            for _ in range(8):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        assert text == tok.decode(ids, skip_special_tokens=True)
    assert generate(model, tok, prompts, max_new_tokens=8, seed=3) == generate(model, tok, prompts, max_new_tokens=8,
                                                                                seed=3)


def _soft_capped_model(vocab_size: int):
    """A tiny Gemma-2 model, whose logits are soft-capped after the head (not plain head(hidden))."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.Gemma2Config(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, vocab_size=vocab_size, max_position_embeddings=128,
                         final_logit_softcapping=0.05, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family", [*FAMILIES, "gemma2"])
def test_scores_equal_a_plain_full_logits_computation(family):
    """``score_continuations`` runs the model on prompt + target[:-1] and applies the head only at the target
    positions; scores (the margin too: the least right-token log-probability over the best other) must equal
    those from each sequence's full logits (also for a soft-capping head)."""
    from editscale.model.tokens import continuation_ids, encode

    tok = bpe_tokenizer()
    model = _soft_capped_model(len(tok)) if family == "gemma2" else random_model(family, vocab_size=len(tok))
    prompts = ["The quick brown fox", "LeBron James plays the sport of", "Paris", "The quick brown fox"]
    targets = ["jumps over the dog", "basketball", "is lovely", "x"]
    got = score_continuations(model, tok, prompts, targets, batch_size=3)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        p_ids, t_ids = encode(tok, p), continuation_ids(tok, p, t)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p_ids + t_ids])).logits[0].float()
        at = logits[len(p_ids) - 1: len(p_ids) - 1 + len(t_ids)]
        lp = torch.log_softmax(at, -1)[torch.arange(len(t_ids)), torch.tensor(t_ids)]
        assert got.logprob[i].item() == pytest.approx(lp.sum().item(), abs=1e-5)
        assert got.n_tokens[i].item() == len(t_ids)
        assert got.all_argmax[i].item() == bool((at.argmax(-1) == torch.tensor(t_ids)).all())
        full_lp = torch.log_softmax(at, -1)
        rival = full_lp.clone()
        rival[torch.arange(len(t_ids)), torch.tensor(t_ids)] = -torch.inf
        assert got.margin[i].item() == pytest.approx((lp - rival.max(-1).values).min().item(), abs=1e-5)
        assert (got.margin[i].item() > 0) == got.all_argmax[i].item()
    if family == "gemma2":  # the cap matters: the bare head's logits exceed it, the ones scored do not
        from editscale.eval.scoring import logits_at

        ids = torch.tensor([encode(tok, prompts[1])])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        cols = torch.tensor([3, 0])
        with torch.no_grad():
            capped = logits_at(model, inputs, torch.zeros(2, dtype=torch.long), cols)
            bare = model.get_output_embeddings()(model.base_model(**inputs).last_hidden_state[0, cols])
            full = model(**inputs).logits[0, cols]
        torch.testing.assert_close(capped, full, rtol=1e-5, atol=1e-6)
        assert capped.abs().max() <= 0.05 < bare.abs().max()


def test_a_prompt_scored_against_several_one_token_targets_runs_once(bigram):
    """Pairs whose inputs are equal (prompt + target but its last token) share one forward row."""
    model, tok, probs, ids = bigram
    seen = []
    forward = model.forward

    def counting(*args, **kwargs):
        seen.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    model.forward = counting
    s = score_continuations(model, tok, ["Ann is", "Ann is", "Bob in", "Ann is"], ["x", "y", "y", "x z"])
    assert seen == [3]  # "Ann is" (for x and y), "Bob in", "Ann is x"
    expected = [math.log(probs[ids["is"], ids["x"]]), math.log(probs[ids["is"], ids["y"]]),
                math.log(probs[ids["in"], ids["y"]]),
                math.log(probs[ids["is"], ids["x"]]) + math.log(probs[ids["x"], ids["z"]])]
    assert s.logprob.tolist() == pytest.approx(expected, rel=1e-5)


def test_harmonic_mean_and_entropy():
    assert harmonic_mean([0.5, 1.0, 1.0]) == pytest.approx(3 / (2 + 1 + 1))
    assert harmonic_mean([0.0, 1.0]) == 0.0
    # "a b a b": bigrams ab, ba, ab -> H2 = H(2/3, 1/3); trigrams aba, bab -> H3 = 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == pytest.approx((h2 * 2 / 3 + 1.0 * 4 / 3) / 2)
    assert ngram_entropy("the the the the the") == 0.0
