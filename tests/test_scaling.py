"""The batch-size curve (``editscale scaling``, ``experiment.scaling``) and the target-vector cache behind it."""

from __future__ import annotations

import torch
from edit_helpers import requests, small
from tiny import bpe_tokenizer, random_model

from editscale.methods import targets


def test_the_cache_serves_a_target_only_on_the_weights_it_was_optimised_on():
    from editscale.methods.base import Delta, Update
    from editscale.methods.context import EditContext
    from editscale.methods.hparams import MemitHparams
    from editscale.methods.prefixes import PrefixSpec
    from editscale.methods.target_cache import TargetCache

    tok = bpe_tokenizer()
    model = random_model("gpt2", vocab_size=len(tok))
    ctx = EditContext(model, tok, stats_cache=None)
    ctx.target_cache = TargetCache()
    hp = MemitHparams.validated({**small("memit"), "layers": [1]})
    prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
    module = ctx.anatomy.layer_name(1)
    first = targets.optimize_targets(ctx, requests()[:2], module, hp, prefixes)
    again = targets.optimize_targets(ctx, requests(), module, hp, prefixes)  # two served, one optimised
    assert ctx.target_cache.stats() == {"optimised": 3, "served": 2, "entries": 3}
    assert torch.equal(again.target[:2], first.target)
    # on other weights (an edit applied) nothing is served; reverted, it is again
    name = ctx.anatomy.weight_name(0)
    w = ctx.anatomy.weight_param(model, 0)
    delta = Delta({name: Update(name, ctx.anatomy.transposed, dense=torch.full_like(w, 1e-2)
                                if not ctx.anatomy.transposed else torch.full_like(w.T, 1e-2))}).apply(model)
    targets.optimize_targets(ctx, requests()[:1], module, hp, prefixes)
    assert ctx.target_cache.stats()["optimised"] == 4
    delta.revert(model)
    targets.optimize_targets(ctx, requests()[:1], module, hp, prefixes)
    assert ctx.target_cache.stats() == {"optimised": 4, "served": 3, "entries": 4}
    # other target hyperparameters are other entries; the chunk size is not
    targets.optimize_targets(ctx, requests()[:1], module, hp.updated(target_batch=7), prefixes)
    targets.optimize_targets(ctx, requests()[:1], module, hp.updated(v_steps=3), prefixes)
    assert ctx.target_cache.stats() == {"optimised": 5, "served": 4, "entries": 5}
