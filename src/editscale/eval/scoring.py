"""Batched scoring of multi-token continuations: one forward pass per batch of prompt+target sequences.

Every probability test in editscale (CounterFact, zsRE, downstream label words, forgetting re-checks)
goes through ``score_continuations``: padding-aware, no Python loop over tokens, and the log-softmax is
taken only at the target positions so large vocabularies stay cheap.
"""

from __future__ import annotations

import inspect
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from editscale.model.compat import cache_kwargs, output_cache
from editscale.model.loading import model_device
from editscale.model.sampling import top_k_sample
from editscale.model.tokens import continuation_ids, encode, ensure_pad_token, pad_batch


@dataclass
class ContinuationScores:
    """Per (prompt, target) pair: summed log-probability, token count, and whether every target token was
    the model's argmax (teacher-forced) plus the fraction of tokens that were, and by how much: the margin."""

    logprob: torch.Tensor  # (N,) sum over target tokens, natural log
    n_tokens: torch.Tensor  # (N,)
    all_argmax: torch.Tensor  # (N,) bool
    token_accuracy: torch.Tensor  # (N,) fraction of target tokens that are the argmax
    # (N,) over the target tokens, the least log-probability of the right token minus the largest of any other
    # (nats): > 0 exactly where all_argmax (barring ties), and how far a pair is from flipping
    margin: torch.Tensor

    @property
    def mean_nll(self) -> torch.Tensor:
        """Mean negative log-probability per target token (ROME's comparison quantity)."""
        return -self.logprob / self.n_tokens

    @property
    def prob(self) -> torch.Tensor:
        """Per-token geometric-mean probability, exp(-mean NLL) (ROME's magnitude quantity)."""
        return torch.exp(-self.mean_nll)

    def __len__(self) -> int:
        return len(self.logprob)

    def __getitem__(self, sl: slice) -> ContinuationScores:
        """The scores of a contiguous range of pairs."""
        return ContinuationScores(self.logprob[sl], self.n_tokens[sl], self.all_argmax[sl], self.token_accuracy[sl],
                                  self.margin[sl])


def _takes_logits_to_keep(model: nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(type(model).forward).parameters


def last_logits_only(model: nn.Module) -> dict[str, int]:
    """Keyword arguments that ask the model's forward for the last position's logits only, where it takes them
    (a forward that only fills a key/value cache, or whose last logits are all that is read)."""
    return {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}


def logits_at(model: nn.Module, inputs: dict[str, torch.Tensor] | Callable[[], dict[str, Any]], rows: torch.Tensor,
              cols: torch.Tensor) -> torch.Tensor:
    """(N, vocab) logits at token positions (rows[i], cols[i]) of one forward pass over ``inputs``.

    The LM head is applied only at those positions where the model's forward takes a boolean
    ``logits_to_keep`` mask (transformers 5), so the logits are still the model's own: its final norm, head and
    any logit scaling or soft-capping (Gemma). Otherwise the full logits are computed and selected. ``inputs``
    may be a function that builds them: it is called once for each forward pass, so inputs that a forward
    changes (a key/value cache it appends to) are fresh for the fallback.
    """
    make = inputs if callable(inputs) else (lambda: inputs)
    if _takes_logits_to_keep(model) and len(rows):
        first = make()
        width = first["input_ids"].shape[1]
        flat = rows * width + cols
        kept, back = torch.unique(flat, sorted=True, return_inverse=True)  # the mask yields row-major order
        mask = torch.zeros(first["input_ids"].shape, dtype=torch.bool, device=rows.device)
        mask.view(-1)[kept] = True
        try:
            logits = model(**first, logits_to_keep=mask).logits
        except (IndexError, RuntimeError, TypeError):  # a transformers version without mask support
            logits = None
        if logits is not None and logits.ndim == 2 and logits.shape[0] == len(kept):
            return logits[back]
    return model(**make()).logits[rows, cols]


@torch.no_grad()
def score_continuations(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 64,
) -> ContinuationScores:
    """Score ``targets[i]`` as the continuation of ``prompts[i]`` (after one space) for all i."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    ensure_pad_token(tokenizer)
    n = len(prompts)
    logprob = torch.zeros(n, dtype=torch.float64)
    n_tok = torch.zeros(n, dtype=torch.long)
    correct = torch.zeros(n, dtype=torch.long)
    margin = torch.zeros(n, dtype=torch.float64)
    if n == 0:
        return ContinuationScores(logprob, n_tok, torch.zeros(0, dtype=torch.bool), logprob.clone(), margin)
    device = model_device(model)
    cache: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    pairs = []
    for p, t in zip(prompts, targets):
        key = (p, t)
        if key not in cache:
            cache[key] = (encode(tokenizer, p), continuation_ids(tokenizer, p, t))
        pairs.append(cache[key])
    # each distinct input is run once: prompt + target but its last token (which predicts nothing read), so
    # a prompt scored against several one-token targets (a re-check's new and true object) is one sequence
    seq_index: dict[tuple[int, ...], int] = {}
    users: list[list[int]] = []
    for i, (p_ids, t_ids) in enumerate(pairs):
        k = seq_index.setdefault(tuple(p_ids + t_ids[:-1]), len(users))
        if k == len(users):
            users.append([])
        users[k].append(i)
    seqs_all = list(seq_index)
    # sort by length so batches pad little; scatter results back afterwards
    order = sorted(range(len(seqs_all)), key=lambda k: len(seqs_all[k]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = pad_batch([list(seqs_all[k]) for k in chunk], tokenizer.pad_token_id, device)
        idx = [i for k in chunk for i in users[k]]  # the pairs this batch scores
        row = [r for r, k in enumerate(chunk) for _ in users[k]]
        # positions t whose logits predict a target token: [len(p)-1, len(p)+len(t)-1)
        rows, cols, tgt, owner = [], [], [], []
        for j, i in enumerate(idx):
            p_len, t_ids = len(pairs[i][0]), pairs[i][1]
            rows.extend([row[j]] * len(t_ids))
            cols.extend(range(p_len - 1, p_len - 1 + len(t_ids)))
            tgt.extend(t_ids)
            owner.extend([j] * len(t_ids))
        sel = logits_at(model, batch.model_inputs(), torch.tensor(rows, device=device),
                        torch.tensor(cols, device=device)).float()
        lp_all = torch.log_softmax(sel, dim=-1)
        tgt_t = torch.tensor(tgt, device=device)
        lp = lp_all.gather(1, tgt_t[:, None])[:, 0].double().cpu()
        hit = (sel.argmax(-1) == tgt_t).long().cpu()
        best = lp_all.topk(2, dim=-1)  # the best other token: the runner-up where the target is the best
        rival = torch.where(best.indices[:, 0] == tgt_t, best.values[:, 1], best.values[:, 0])
        gap = lp - rival.double().cpu()
        own = torch.tensor(owner)
        idx_t = torch.tensor(idx)
        logprob[idx_t] = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, own, lp)
        n_tok[idx_t] = torch.zeros(len(idx), dtype=torch.long).index_add_(0, own, torch.ones_like(own))
        correct[idx_t] = torch.zeros(len(idx), dtype=torch.long).index_add_(0, own, hit)
        margin[idx_t] = torch.full((len(idx),), torch.inf, dtype=torch.float64).scatter_reduce_(0, own, gap, "amin")
    return ContinuationScores(logprob, n_tok, correct == n_tok, correct.double() / n_tok.double(), margin)


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 40,
    max_length: int | None = None,
    top_k: int = 5,
    seed: int = 0,
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, continuation ids) of each prompt: top-k sampling (``top_k=1``: greedy), deterministic for a
    seed. A row ends at EOS, after ``max_new_tokens`` new tokens, or once it holds ``max_length`` tokens with
    the prompt (the reference's ``max_out_len``).

    Decoding is done here (not ``model.generate``) so padding and sampling are identical across model families
    and transformers versions: prompts left-padded, one token per step on the key/value cache, one draw per
    row per step (rows that ended keep drawing, unused).
    """
    ensure_pad_token(tokenizer)
    device = model_device(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    prompt_ids = [encode(tokenizer, p) for p in prompts]
    seqs = [list(p) for p in prompt_ids]
    eos = tokenizer.eos_token_id
    limit = [max_new_tokens if max_length is None else min(max_new_tokens, max_length - len(p)) for p in seqs]
    done = [n <= 0 for n in limit]
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1 << 30)
    batch = pad_batch(seqs, tokenizer.pad_token_id, device, left=True)
    ids, mask = batch.input_ids, batch.attention_mask
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    cache, last_only = None, last_logits_only(model)
    for _ in range(max(limit, default=0)):
        if all(done) or max(len(s) for s in seqs) >= max_pos:
            break
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwargs(model, cache),
                    **last_only)
        cache = output_cache(out)
        nxt = top_k_sample(out.logits[:, -1], top_k, gen)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                seqs[i].append(t)
                done[i] = t == eos or len(seqs[i]) - len(prompt_ids[i]) >= limit[i]
        ids = nxt[:, None].to(device)
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(ids)], 1)
    return [(p, s[len(p):]) for p, s in zip(prompt_ids, seqs)]


def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 40,
    max_length: int | None = None,
    top_k: int = 5,
    seed: int = 0,
) -> list[str]:
    """Sampled texts, prompt included (as ROME's generation tests); see ``generate_ids``."""
    out = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, max_length=max_length,
                       top_k=top_k, seed=seed)
    return [tokenizer.decode(p + c, skip_special_tokens=True) for p, c in out]


def greedy_continuations(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """The model's own greedy continuation of each prompt (the continuation's text only)."""
    out = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, top_k=1)
    return [tokenizer.decode(c, skip_special_tokens=True) for _, c in out]


_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's generation entropy of one text: the weighted mean of its bi- and tri-gram entropies (bits).

    As ``compute_n_gram_entropy`` in the ROME code, with a regex word tokenizer instead of NLTK's.
    """
    tokens = _WORD.findall(text)
    values = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        ent = -sum((c / total) * math.log2(c / total) for c in grams.values()) if total else 0.0
        values.append(ent * w)
    return sum(values) / len(values)


def mean_ngram_entropy(texts: Sequence[str]) -> float:
    return sum(ngram_entropy(t) for t in texts) / len(texts) if texts else float("nan")


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (the CounterFact Score)."""
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)
