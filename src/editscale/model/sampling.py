"""Sampling the next token: one top-k sampler for every place editscale draws text (the context prefixes of the
target optimisation, the generations the metrics and the guard score)."""

from __future__ import annotations

import torch


def top_k_sample(logits: torch.Tensor, top_k: int, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of ``logits`` (N, vocab): drawn from the softmax over the row's ``top_k`` largest
    logits (``top_k=1``: the argmax), with ``generator`` (a CPU generator: the draws do not depend on the device)."""
    logits = logits.float().cpu()
    if top_k == 1:
        return logits.argmax(-1)
    vals, idx = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
    choice = torch.multinomial(torch.softmax(vals, -1), 1, generator=generator)
    return idx.gather(1, choice)[:, 0]
