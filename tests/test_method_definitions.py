"""Where editscale's methods follow the reference code rather than a convenience: FT's skipped step, FT-W's
block, the layers an edit can reach, and the KL term's default. Each test fails on the earlier behaviour."""

from __future__ import annotations

import pytest
import torch
from edit_helpers import corpus, small
from tiny import bpe_tokenizer, random_model

from editscale.api import Editor
from editscale.data.records import EditRequest
from editscale.data.text_corpus import Corpus
from editscale.errors import ConfigError
from editscale.methods.hparams import MemitHparams, RomeHparams
from editscale.methods.preset_resolution import default_layers, resolve_hparams
from editscale.model.anatomy import get_anatomy


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


def _editor(model, tok, method, **hp):
    return Editor(model, tok, method, {**small(method), **hp}, corpus=Corpus.from_texts(corpus(40)))


def _greedy_request(model, tok) -> EditRequest:
    """A request whose 'new' target is what the model already predicts after the prompt."""
    prompt = "The quick brown fox"
    ids = tok(prompt, return_tensors="pt").input_ids
    nxt = int(model(input_ids=ids).logits[0, -1].argmax())
    word = tok.decode([nxt])
    return EditRequest("The quick {} fox", "brown", word.strip() or "x", "zzz")


def test_ft_takes_no_step_for_an_edit_the_model_already_satisfies(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    # a target of near-zero loss: sharpen the head so the model's own argmax has probability ~1
    with torch.no_grad():
        model.lm_head.weight.mul_(200.0)
    req = _greedy_request(model, tok)
    for method in ("ft-l", "ft-w"):
        delta = _editor(model, tok, method, steps=5).compute([req])
        assert delta.info["ft_losses"][0] < 1e-2
        assert all(float(u.matrix().abs().max()) == 0.0 for u in delta.updates.values()), method


def test_ft_w_tunes_the_whole_block_as_the_reference_and_ft_l_one_matrix(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    req = EditRequest("{} plays the sport of", "LeBron James", "football", "basketball")
    anatomy = get_anatomy(model)
    layer = 1
    block = {n for n, _ in model.named_parameters() if n.startswith(anatomy.layer_name(layer) + ".")}
    delta = _editor(model, tok, "ft-w", layer=layer, lr=1e-2).compute([req])
    assert set(delta.updates) == block and len(block) > 4
    delta.apply(model)
    delta.revert(model)
    delta = _editor(model, tok, "ft-l", layer=layer, lr=1e-2).compute([req])
    assert list(delta.updates) == [anatomy.weight_name(layer)]
    delta = _editor(model, tok, "ft-w", layer=layer, lr=1e-2, scope="matrix").compute([req])
    assert list(delta.updates) == [anatomy.weight_name(layer)]


@pytest.mark.parametrize("method, hp", [("memit", {"layers": [0, 1]}), ("rome", {"layer": 1}),
                                        ("r-rome", {"layer": 1})])
def test_the_last_layer_is_refused_in_one_line(tok, method, hp):
    model = random_model("gpt2", vocab_size=len(tok), layers=2)
    cls = MemitHparams if method == "memit" else RomeHparams
    with pytest.raises(ConfigError, match="layer 1 is the model's last") as e:
        resolve_hparams(method, cls, model, get_anatomy(model), hp)
    assert "\n" not in str(e.value)


def test_default_layers_never_pick_the_last_layer():
    assert default_layers("memit", 2) == [0] and default_layers("rome", 2) == [0]
    for n in range(2, 40):
        assert max(default_layers("memit", n)) <= n - 2 and default_layers("rome", n)[0] <= n - 2


def test_the_kl_term_uses_only_the_reference_prompt_by_default():
    hp = RomeHparams()
    assert hp.kl_other_facts is False and hp.kl_prompt == "{} is a"
    assert MemitHparams().kl_other_facts is False
