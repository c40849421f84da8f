"""Second-moment statistics: 4 layers in ONE pass against 1 layer (goal: <= 1.3x the time of 1 layer).

The 1-layer baseline is the deepest of the 4 layers, so both passes run the same forward depth and the ratio
shows what the extra layers cost (their key accumulation). Also printed: the anchors' way, one pass per layer.

    python bench/bench_stats.py [--model testbed:demo | DIR] [--layers 4,5,6,7] [--samples 20000]

Without --model: a random GPT-2-style model (12 layers, width 256, MLP 1024) with the GPT-2 tokenizer from
../shared/data when present (else a small trained one), on WikiText from ../shared/data when present.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch
from common import add_model_options, model_from_options

os.environ.setdefault("EDITSCALE_PROGRESS", "0")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def build_default(width: int, n_layers: int):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok_dir = SHARED / "gpt2_tokenizer"
    if tok_dir.is_dir():
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny import bpe_tokenizer

        tok = bpe_tokenizer(1000)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layers, n_embd=width, n_head=max(1, width // 64), vocab_size=len(tok),
                     n_positions=512)
    return GPT2LMHeadModel(cfg).eval(), tok


def texts(n: int = 4000) -> list[str]:
    wiki = SHARED / "wikitext" / "wikitext-2-raw.test.hfjoined.txt"
    if wiki.is_file():
        lines = [ln for ln in wiki.read_text().splitlines() if len(ln.split()) > 20]
        return lines[:n]
    rng = random.Random(0)
    words = ["the", "of", "and", "to", "in", "a", "is", "was", "for", "on", "as", "with", "by", "he", "at", "from", "his", "an", "were", "are", "which"]
    return [" ".join(rng.choice(words) for _ in range(120)) for _ in range(n)]


def main() -> None:
    from editscale.data.text_corpus import Corpus
    from editscale.stats.second_moment import KeySample, compute_second_moments

    ap = argparse.ArgumentParser()
    add_model_options(ap)
    ap.add_argument("--layers", default=None, help="comma-separated; default: 4 consecutive mid layers")
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model, tok, name = model_from_options(args, lambda: build_default(256, 12),
                                          "random GPT-2 (12 layers, width 256, MLP 1024)")
    from editscale.model.anatomy import get_anatomy

    n = get_anatomy(model).n_layers(model)
    layers = ([int(x) for x in args.layers.split(",")] if args.layers else
              list(range(max(0, n // 2 - 2), max(0, n // 2 - 2) + 4)))
    corpus = Corpus.from_texts(texts())

    def timed(ls: list[int]) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            compute_second_moments(model, tok, ls, corpus, max_length=args.max_length, progress=False,
                                   sample=KeySample(n_tokens=args.samples, order="in_order"))
            best = min(best, time.perf_counter() - t)
        return best

    timed([layers[-1]])  # warm-up
    one = timed([layers[-1]])
    four = timed(layers)
    separate = sum(timed([layer]) for layer in layers)
    print(f"model: {name}; {args.samples} tokens; threads {torch.get_num_threads()}")
    print(f"1 layer ({layers[-1]}):                 {one:.2f} s")
    print(f"{len(layers)} layers {layers} in one pass: {four:.2f} s")
    print(f"{len(layers)} layers, one pass each (anchors): {separate:.2f} s ({separate / four:.2f}x the one pass)")
    print(f"ratio {len(layers)} layers in one pass / 1 layer: {four / one:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
