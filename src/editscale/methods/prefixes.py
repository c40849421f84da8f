"""Context prefixes: short texts the model itself generates, put before each edit prompt.

Keys are averaged and target vectors optimised over the prompt preceded by these prefixes (ROME: 10 of 5 tokens
and 10 of 10 tokens from the BOS token; MEMIT: 5 of 10 tokens from "The", "Therefore", ...), deterministic for
a seed. A prompt is put after each prefix, as "PREFIX. {subject} plays the sport of". ``EditContext.prefixes``
samples them once per context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from editscale.errors import ConfigError
from editscale.model.hooks import frozen_eval
from editscale.model.loading import model_device
from editscale.model.sampling import top_k_sample
from editscale.model.tokens import encode

if TYPE_CHECKING:
    from editscale.methods.hparams import TargetHparams


@dataclass(frozen=True)
class PrefixSpec:
    """How to sample context prefixes: (length in tokens incl. the start, count) per group."""

    lengths: tuple[tuple[int, int], ...]
    starts: tuple[str, ...] | None = None
    top_k: int = 5

    @classmethod
    def from_hparams(cls, hp: TargetHparams) -> PrefixSpec:
        starts = tuple(hp.context_starts) if hp.context_starts else None
        return cls(tuple((int(a), int(b)) for a, b in hp.context_lengths), starts, hp.context_top_k)


@torch.no_grad()
def _sample(model: nn.Module, start: list[int], n: int, length: int, top_k: int, gen: torch.Generator) -> torch.Tensor:
    """n top-k samples continuing ``start`` up to ``length`` tokens in all (rows share one length)."""
    ids = torch.tensor([start] * n, dtype=torch.long, device=model_device(model))
    while ids.shape[1] < length:
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
        ids = torch.cat([ids, top_k_sample(logits, top_k, gen)[:, None].to(ids.device)], 1)
    return ids


def sample_prefixes(model: nn.Module, tokenizer, spec: PrefixSpec, seed: int = 0) -> list[list[str]]:
    """Groups of prefixes; group 0 is ``[""]`` (the bare prompt), each other group one ``spec.lengths`` entry.

    Every prefix ends with ". " so that ``prefix + prompt`` reads "TEXT. {} plays ..." (as ROME's "{}. {}"
    templates; braces in the samples are replaced by spaces).
    """
    gen = torch.Generator().manual_seed(seed)
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start_id is None and not spec.starts:
        raise ConfigError("the tokenizer has neither a BOS nor an EOS token to sample context prefixes from; "
                          "set context_starts (e.g. ['The', 'Therefore'])")
    groups: list[list[str]] = [[""]]
    with frozen_eval(model):
        for length, count in spec.lengths:
            if spec.starts:
                starts = list(spec.starts)[: max(1, count)]
                per = [count // len(starts) + (i < count % len(starts)) for i in range(len(starts))]
                plan = [(encode(tokenizer, s), k) for s, k in zip(starts, per) if k > 0]
            else:
                plan = [([start_id], count)]
            texts = []
            for start, k in plan:
                rows = _sample(model, start, k, max(length, len(start)), spec.top_k, gen)
                texts += tokenizer.batch_decode(rows.tolist(), skip_special_tokens=True)
            groups.append([t.replace("{", " ").replace("}", " ") + ". " for t in texts])
    return groups
