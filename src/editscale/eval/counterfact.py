"""CounterFact evaluation (ROME paper section 5, appendix B; MEMIT appendix C), batched over all cases.

``evaluate_cases`` computes the per-edit metrics declared in ``editscale.eval.metrics`` (all of them, or the
ones asked for) for every case: the probability comparisons of all cases in one ``score_continuations`` call,
the greedy continuations of all edit and paraphrase prompts in one batched decode, and the sampled texts of
all generation prompts in another, each only when a requested metric reads it.

Score is the harmonic mean of efficacy, paraphrase and neighborhood, as in the papers; it is NaN unless all
three were measured (the reference code needs all three).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from editscale.data.records import EditCase
from editscale.eval.metrics import CaseView, Group, edit_metric_names, get_metric, nanmean, reference_texts
from editscale.eval.scoring import (
    generate,
    greedy_continuations,
    harmonic_mean,
    score_continuations,
)
from editscale.model.tokens import continuation_ids

SCORE_OF = ("efficacy", "paraphrase", "neighborhood")
GENERATION_LENGTH = 100  # tokens, prompt included (the reference's max_out_len)


@dataclass
class CaseScores:
    """One case's metric values (``scores.efficacy`` or ``scores.values["efficacy"]``)."""

    case_id: str
    values: dict[str, float]

    def __getattr__(self, name: str) -> float:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"case_id": self.case_id, **self.values}


@dataclass
class CounterFactResult:
    cases: list[CaseScores]

    def summary(self) -> dict[str, float | int]:
        """Means over cases (cases lacking a prompt kind are left out of that mean) and the Score."""
        out: dict[str, float | int] = {"n": len(self.cases)}
        names = list(dict.fromkeys(k for c in self.cases for k in c.values))
        for m in names:
            out[m] = nanmean([c.values.get(m, float("nan")) for c in self.cases])
        parts = [out.get(m, float("nan")) for m in SCORE_OF]
        out["score"] = float("nan") if any(math.isnan(p) for p in parts) else harmonic_mean(parts)
        return out


class ReferenceScorer:
    """ROME's reference score: TF-IDF cosine between generated text and reference text about the new object.

    The vectorizer is fitted once on the reference texts of the given cases (see ``metrics.reference_texts``).
    """

    def __init__(self, cases: Sequence[EditCase]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = list(dict.fromkeys(t for c in cases for t in reference_texts(c)))
        self.vectorizer = TfidfVectorizer().fit(texts) if texts else None

    def __call__(self, case: EditCase, generated: Sequence[str]) -> float:
        refs = reference_texts(case)
        if self.vectorizer is None or not refs or not generated:
            return float("nan")
        enc = self.vectorizer.transform([" ".join(generated), " ".join(refs)]).toarray()
        na, nb = float((enc[0] ** 2).sum()) ** 0.5, float((enc[1] ** 2).sum()) ** 0.5
        return float(enc[0] @ enc[1]) / (na * nb) if na and nb else 0.0


def _prompts_of(case: EditCase, group: str, target: str) -> tuple[Sequence[str], str | None]:
    """The prompts of a group and the target they are scored with (None: the case has no such target)."""
    req = case.request
    if group == "edit":
        prompts: Sequence[str] = [req.text]
    elif group == "paraphrase":
        prompts = case.paraphrase_prompts
    elif group == "neighborhood":
        prompts = case.neighborhood_prompts
        return prompts, (case.neighbor_true if target == "true" else (req.target_new if case.neighbor_true
                                                                       else None))
    elif group == "attribute":
        prompts = case.attribute_prompts
    else:
        raise ValueError(f"unknown prompt group {group!r}")
    return prompts, (req.target_new if target == "new" else req.target_true)


def generation_prompts(case: EditCase) -> list[str]:
    """Prompts whose sampled texts the generation metrics read: the case's generation prompts, else its edit
    and paraphrase prompts."""
    return list(case.generation_prompts) or [case.request.text, *case.paraphrase_prompts]


def evaluate_cases(
    model: nn.Module,
    tokenizer,
    cases: Sequence[EditCase],
    *,
    metrics: Sequence[str] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    reference: ReferenceScorer | None = None,
    generation_length: int = GENERATION_LENGTH,
) -> CounterFactResult:
    """Compute the per-edit ``metrics`` (default: every declared one) of every case.

    ``reference`` is the reference-score vectorizer (default: fitted on these cases); ``seed`` fixes the
    sampled generations.
    """
    chosen = [get_metric(n) for n in (metrics if metrics is not None else edit_metric_names())]
    if bad := [m.name for m in chosen if m.level != "edit"]:
        raise ValueError(f"not per-edit metrics: {bad}")
    groups: list[Group] = list(dict.fromkeys(g for m in chosen for g in m.reads))
    needs = {n for m in chosen for n in m.needs}

    prompts: list[str] = []
    targets: list[str] = []
    layout: list[dict[Group, slice]] = []
    for case in cases:
        slots = {}
        for g in groups:
            ps, target = _prompts_of(case, *g)
            start = len(prompts)
            if target and ps:
                prompts.extend(ps)
                targets.extend([target] * len(ps))
            slots[g] = slice(start, len(prompts))
        layout.append(slots)
    scores = score_continuations(model, tokenizer, prompts, targets, batch_size=batch_size)

    greedy: list[dict[str, list[str]]] = [{} for _ in cases]
    if "greedy" in needs and cases:
        rows = [(i, grp, p) for i, c in enumerate(cases) for grp, ps in
                (("edit", [c.request.text]), ("paraphrase", c.paraphrase_prompts)) for p in ps]
        n_new = 2 + max(len(continuation_ids(tokenizer, c.request.text, c.request.target_new)) for c in cases)
        texts = _batched(lambda ps: greedy_continuations(model, tokenizer, ps, n_new), [r[2] for r in rows],
                         batch_size)
        for (i, grp, _), text in zip(rows, texts):
            greedy[i].setdefault(grp, []).append(text)

    samples: list[list[str]] = [[] for _ in cases]
    if "sampled" in needs and cases:
        rows2 = [(i, p) for i, c in enumerate(cases) for p in generation_prompts(c)]
        texts = _batched(lambda ps: generate(model, tokenizer, ps, max_new_tokens=generation_length,
                                             max_length=generation_length, seed=seed), [r[1] for r in rows2],
                         batch_size)
        for (i, _), text in zip(rows2, texts):
            samples[i].append(text)
    if "reference" in needs and reference is None:
        reference = ReferenceScorer(cases)

    results = []
    for i, case in enumerate(cases):
        view = CaseView(case, {g: scores[sl] for g, sl in layout[i].items()}, greedy[i], samples[i], reference)
        results.append(CaseScores(case.case_id, {m.name: float(m.fn(view)) for m in chosen}))
    return CounterFactResult(results)


def _batched(fn, items: list[str], batch_size: int) -> list[str]:
    out: list[str] = []
    for start in range(0, len(items), batch_size):
        out.extend(fn(items[start: start + batch_size]))
    return out
