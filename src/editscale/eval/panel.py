"""The general-ability panel: perplexity on held-out text and retention of facts the model already knows.

Two checks that a model of any size can show, beside the few-shot classification tasks of
``eval/downstream.py`` (a 135M model is at chance on most of GLUE, so GLUE alone cannot show its loss of
ability):

- ``perplexity``: exp of the mean next-token NLL over a fixed, seeded sample of held-out text (windows of
  ``window`` tokens, each scored on its own; the first token of a window predicts nothing). For a real model the
  text is WikiText-2's test split (the standard check in the lifelong-editing literature); for a testbed model,
  generic sentences of its own grammar drawn with a seed its training never used.
- ``known-facts``: of a fixed set of facts the unedited model gets right (every token of the object the argmax
  after the prompt, teacher forced, as the scale paper's ``rewrite_prompts_correct``), the share it still gets
  right, and their mean margin (how far from flipping: a share lost with the mean margin held is near-ties
  flipping, one with it falling is every fact weakening). For a real model the facts are ROME's
  ``known_1000``; for a testbed model its world's facts.

Both are prepared once, on the unedited model (the known facts are chosen then), and then evaluated as often as
the runner asks, like a ``DownstreamSuite``. A probe's result is ``{metric: value, "n": count}``;
``PRIMARY_METRIC`` names the metric the report draws for each task, ``SECONDARY_METRIC`` one it also tabulates.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from editscale.errors import ConfigError, DataLoadError
from editscale.eval.lengths import context_limit
from editscale.eval.scoring import score_continuations
from editscale.model.loading import model_device

PERPLEXITY, KNOWN_FACTS = "perplexity", "known-facts"
PROBE_TASKS: tuple[str, ...] = (PERPLEXITY, KNOWN_FACTS)
# the metric each task is drawn and summarised by; "higher is better" except perplexity
PRIMARY_METRIC: dict[str, str] = {PERPLEXITY: "perplexity", KNOWN_FACTS: "retention"}
# the metric tabulated beside the primary in the report's table (None: none); classification tasks: MCC, since
# F1 of the positive class rewards answering one label (about 0.67 on a balanced task) where MCC is 0 at chance
SECONDARY_METRIC: dict[str, str | None] = {PERPLEXITY: None, KNOWN_FACTS: "margin"}
LOWER_IS_BETTER = frozenset({"perplexity"})

# where a data directory holds each source (the layout `editscale data fetch` writes and ../data mirrors)
WIKITEXT_FILES = ("wikitext/wikitext-2-raw.test.hfjoined.txt", "wikitext/wiki.test.raw",
                  "wikitext-2-raw.test.hfjoined.txt", "wiki.test.raw", "wikitext/wikitext-2.test.tokens.txt")
KNOWN_FILES = ("known_1000/known_1000.json", "known_1000.json")


def primary_metric(task: str) -> str:
    """The metric a downstream task is drawn by: ``PRIMARY_METRIC`` for the probes, F1 for classification."""
    return PRIMARY_METRIC.get(task, "f1")


def secondary_metric(task: str) -> str | None:
    """The metric tabulated beside a task's primary one: ``SECONDARY_METRIC`` for the probes, MCC for
    classification."""
    return SECONDARY_METRIC.get(task, "mcc")


def find_file(data_dir: str | Path, candidates: Sequence[str], what: str, fetch_name: str) -> Path:
    """The first of ``candidates`` under ``data_dir``; a one-line ``DataLoadError`` naming what to do if none."""
    root = Path(data_dir).expanduser()
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise DataLoadError(f"no {what} in {root} (looked for {candidates[0]}); run `editscale data fetch {fetch_name}` "
                        f"or pass a data directory that holds it (downstream_data_dir / --data-dir)")


class PerplexityProbe:
    """Perplexity over fixed windows of held-out token ids."""

    name = PERPLEXITY

    def __init__(self, windows: Sequence[Sequence[int]], *, batch_size: int = 8):
        if not windows or any(len(w) < 2 for w in windows):
            raise ConfigError("perplexity needs at least one window of two or more tokens")
        self.windows = [list(w) for w in windows]
        self.batch_size = batch_size

    @classmethod
    def from_text(cls, text: str, tokenizer, *, n_tokens: int = 4096, window: int = 256, seed: int = 0,
                  context: int | None = None, batch_size: int = 8) -> PerplexityProbe:
        """``n_tokens`` tokens of ``text`` in non-overlapping windows of ``window`` at seeded offsets."""
        if context is not None:
            window = min(window, context)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n_windows = max(1, math.ceil(n_tokens / window))
        slots = len(ids) // window
        if slots < n_windows:
            raise DataLoadError(f"perplexity text holds {len(ids):,} tokens, fewer than the {n_windows * window:,} "
                                "asked for; give a longer text or fewer tokens")
        picked = sorted(random.Random(seed).sample(range(slots), n_windows))
        return cls([ids[s * window:(s + 1) * window] for s in picked], batch_size=batch_size)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        device = model_device(model)
        total, count = 0.0, 0
        for start in range(0, len(self.windows), self.batch_size):
            chunk = self.windows[start:start + self.batch_size]
            width = max(len(w) for w in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for i, w in enumerate(chunk):
                ids[i, :len(w)] = torch.tensor(w)
                mask[i, :len(w)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            keep = mask[:, 1:].bool()
            total += nll[keep].double().sum().item()
            count += int(keep.sum())
        mean = total / count
        return {"perplexity": math.exp(mean), "nll": mean, "n": count}


class KnownFactsProbe:
    """Retention of facts the unedited model knows: chosen on the model given at construction."""

    name = KNOWN_FACTS

    def __init__(self, model: nn.Module, tokenizer, facts: Sequence[tuple[str, str]], *, n: int = 200,
                 seed: int = 0, batch_size: int = 64):
        if not facts:
            raise ConfigError("known-facts needs at least one (prompt, object) fact")
        self.tokenizer, self.batch_size = tokenizer, batch_size
        facts = list(dict.fromkeys((p.strip(), o.strip()) for p, o in facts if p.strip() and o.strip()))
        right = self.right(model, facts)
        known = [f for f, ok in zip(facts, right) if ok]
        if not known:
            raise DataLoadError(f"the unedited model gets none of the {len(facts)} known facts right; "
                                "known-facts retention cannot be measured on it")
        self.available = len(known)
        self.facts = sorted(random.Random(seed).sample(known, min(n, len(known))))

    def right(self, model: nn.Module, facts: Sequence[tuple[str, str]] | None = None) -> list[bool]:
        """Per fact (the probe's own by default), whether the model gets it right now."""
        return self._scores(model, self.facts if facts is None else facts).all_argmax.tolist()

    def _scores(self, model: nn.Module, facts: Sequence[tuple[str, str]]):
        return score_continuations(model, self.tokenizer, [p for p, _ in facts], [o for _, o in facts],
                                   batch_size=self.batch_size)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """``retention``, the share still right, and ``margin``, the facts' mean margin (nats; each fact's least
        log-probability of a right token over the best other): whether facts are lost as near-ties flip under
        small changes (the mean holds) or as every fact weakens (it falls)."""
        scores = self._scores(model, self.facts)
        right = scores.all_argmax.tolist()
        return {"retention": sum(right) / len(right), "margin": scores.margin.mean().item(), "n": len(right)}


# --------------------------------------------------------------------------------------------------------
# sources: a real model's public data, or a testbed model's own world and grammar
# --------------------------------------------------------------------------------------------------------
def known_1000_facts(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, true object) of ROME's known_1000.json (fields ``prompt`` and ``attribute``)."""
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
        return [(r["prompt"], r["attribute"]) for r in rows]
    except (ValueError, KeyError, TypeError) as e:
        raise DataLoadError(f"{path} is not ROME's known_1000.json (a list of records with 'prompt' and "
                            f"'attribute'): {type(e).__name__}: {e}") from None


def testbed_facts(model_dir: str | Path) -> list[tuple[str, str]]:
    """(edit prompt, true object) of every fact of a testbed model's world (its ``world.jsonl``)."""
    from editscale.data.readers import read_records

    cases = read_records(Path(model_dir) / "world.jsonl")
    return [(c.request.prompt.replace("{}", c.request.subject), c.request.target_true) for c in cases
            if c.request.target_true]


def testbed_text(seed: int, n_sentences: int = 2000) -> str:
    """Generic sentences of the testbed's grammar, drawn with a seed no build uses (held out)."""
    from editscale.data.corpus import FillerGenerator

    gen = FillerGenerator(seed=1_000_003 + seed)
    return "\n".join(gen.sentence() for _ in range(n_sentences))


def prepare_probe(name: str, model: nn.Module, tokenizer, *, data_dir: str | Path | None, testbed_dir: Path | None,
                  n: int, seed: int, batch_size: int = 64) -> PerplexityProbe | KnownFactsProbe:
    """One probe of the panel, prepared on the (unedited) model: from a testbed model's own world when
    ``testbed_dir`` is given, else from ``data_dir`` (default ``$EDITSCALE_HOME/data``)."""
    if name not in PROBE_TASKS:
        raise ConfigError(f"unknown probe {name!r}; valid: {', '.join(PROBE_TASKS)}")
    if data_dir is None and testbed_dir is None:
        from editscale.data.sources import data_home

        data_dir = data_home()
    if name == PERPLEXITY:
        if testbed_dir is not None:
            text = testbed_text(seed)
        else:
            text = find_file(data_dir, WIKITEXT_FILES, "WikiText-2 test text", "wikitext-2").read_text(
                encoding="utf-8", errors="replace")
        return PerplexityProbe.from_text(text, tokenizer, seed=seed, context=context_limit(model),
                                         batch_size=max(1, batch_size // 8))
    facts = (testbed_facts(testbed_dir) if testbed_dir is not None
             else known_1000_facts(find_file(data_dir, KNOWN_FILES, "known_1000.json", "known_1000")))
    return KnownFactsProbe(model, tokenizer, facts, n=n, seed=seed, batch_size=batch_size)

