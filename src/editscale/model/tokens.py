"""Token helpers: target continuations, the last subject token, padded batches.

Conventions, fixed here once:
- a target follows its prompt after one space (" Paris"), tokenized *in context*, never with a BOS;
- batches are right-padded, so position embeddings are those of unpadded text and row b's real tokens are
  ``[0, lengths[b])``;
- a tokenizer without a pad token pads with its EOS token (padding is masked anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from editscale.errors import SubjectNotInPromptError


def ensure_pad_token(tokenizer) -> None:
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as the model sees a prompt (with the tokenizer's own BOS, if it adds one)."""
    return list(tokenizer(text)["input_ids"])


def continuation_ids(tokenizer, prompt: str, target: str) -> list[int]:
    """Token ids of ``target`` as it follows ``prompt`` after one space; no BOS inside the target.

    Tokenizes prompt + " " + target and keeps what comes after the prompt's tokens, so tokenizers that
    merge across the boundary or mark word starts (SentencePiece) give the ids the model would see.
    """
    target = target.strip()
    if not target:
        raise ValueError("empty target")
    p = encode(tokenizer, prompt)
    full = encode(tokenizer, f"{prompt} {target}")
    if full[: len(p)] == p and len(full) > len(p):
        return full[len(p):]
    return list(tokenizer(" " + target, add_special_tokens=False)["input_ids"])


def target_ids(tokenizer, target: str) -> list[int]:
    """Token ids of a target on its own, with its leading space and without BOS."""
    return list(tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"])


def token_index_at(tokenizer, text: str, char_end: int) -> int:
    """Index (in ``encode(text)``) of the last token that starts before character ``char_end``."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True)
        last = -1
        for i, (start, end) in enumerate(enc["offset_mapping"]):
            if end > start and start < char_end:
                last = i
        if last >= 0:
            return last
    return len(encode(tokenizer, text[:char_end])) - 1


def last_subject_index(tokenizer, prompt: str, subject: str, case_id: str = "") -> int:
    """Index of the last token of ``subject`` in ``prompt.replace('{}', subject)``.

    ``prompt`` has a ``{}`` slot, or contains the subject literally (the first occurrence is taken, as in
    CounterFact).
    """
    if "{}" in prompt:
        start = prompt.index("{}")
        text = prompt.replace("{}", subject)
    else:
        start = prompt.find(subject)
        text = prompt
        if start < 0:
            where = f"record {case_id!r}: " if case_id else ""
            raise SubjectNotInPromptError(f"{where}subject {subject!r} does not occur in prompt {prompt!r}")
    return token_index_at(tokenizer, text, start + len(subject))


@dataclass
class Batch:
    """A right-padded batch: ``input_ids``/``attention_mask`` (B, T) and each row's real length."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor

    def to(self, device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.lengths.to(device))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, device=None, *, left: bool = False) -> Batch:
    """Right-pad (or, with ``left``, left-pad) token id lists into a Batch."""
    if not seqs:
        raise ValueError("empty batch")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols] = torch.tensor(list(s), dtype=torch.long)
        mask[i, cols] = 1
    lengths = mask.sum(1)
    batch = Batch(ids, mask, lengths)
    return batch.to(device) if device is not None else batch


def encode_batch(tokenizer, texts: Sequence[str], device=None) -> Batch:
    ensure_pad_token(tokenizer)
    return pad_batch([encode(tokenizer, t) for t in texts], tokenizer.pad_token_id, device)
