"""Shared bits of the editing tests: a generic corpus, small hyperparameters, requests, a saved tiny model."""

from __future__ import annotations

import random
from pathlib import Path

from tiny import TEXT, bpe_tokenizer, random_model

from editscale.data.records import EditCase, EditRequest

WORDS = sorted({w.strip(".,:") for t in TEXT for w in t.split()})


def corpus(n: int = 80, seed: int = 0) -> list[str]:
    """Generic text: random word sequences over the tiny tokenizer's training words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


# hyperparameters that keep every method to a fraction of a second on the tiny models
SMALL = {"context_lengths": [(3, 2), (4, 2)], "mom2_n_tokens": 600, "mom2_sampling": "in_order", "v_steps": 6,
         "mom2_max_length": 32}
SMALL_FT = {"steps": 3}
METHODS = ("rome", "r-rome", "memit", "ft-l", "ft-w", "emmet", "alphaedit", "encore")


def small(method: str, **extra) -> dict:
    return {**(SMALL_FT if method.startswith("ft") else SMALL), **extra}


def editor(model, tok, method: str, texts: list[str], **extra):
    """An Editor with the small hyperparameters, statistics in memory from ``texts``."""
    from editscale.api import Editor

    return Editor(model, tok, method, small(method, **extra), stats_cache=None, corpus=texts, progress=False)


def requests() -> list[EditRequest]:
    return [
        EditRequest("{} plays the sport of", "LeBron James", "football", "basketball", case_id="0"),
        EditRequest("The mother tongue of {} is", "Toko Yasuda", "French", "Japanese", case_id="1"),
        EditRequest("{} lives in", "Danielle Darrieux", "London", "Paris", case_id="2"),
    ]


def cases() -> list[EditCase]:
    return [EditCase(r, paraphrase_prompts=(f"Well. {r.text}",), neighborhood_prompts=("The quick brown fox is",),
                     other_fact_prompts=((f"{r.subject} speaks", "French"),)) for r in requests()]


def saved_model(directory: Path, family: str = "gpt2", manifest: dict | None = None) -> Path:
    """A tiny random model saved as a Hugging Face directory with a corpus.txt (and optional manifest)."""
    import json

    tok = bpe_tokenizer()
    model = random_model(family, vocab_size=len(tok))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    (directory / "corpus.txt").write_text("\n".join(corpus()) + "\n")
    if manifest is not None:
        (directory / "editscale_testbed.json").write_text(json.dumps(manifest))
    return directory
