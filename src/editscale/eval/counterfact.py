"""CounterFact metrics (ROME paper section 5, appendix B; MEMIT appendix C), batched over all cases.

Per case, with P(x) the per-token geometric-mean probability of continuation x (ROME's comparison):
- efficacy: [P(new) > P(true)] on the edit prompt; magnitude P(new) - P(true);
- paraphrase: the same, averaged over the paraphrase prompts;
- neighborhood: [P(true) > P(new)] on prompts about other subjects (their own true object), averaged;
  magnitude P(true) - P(new);
- ``*_acc``: zsRE-style top-1 accuracy, the fraction of target tokens that are the model's argmax given the
  prompt and the preceding target tokens (new target on edit/paraphrase prompts, the neighbour's true object
  on neighbourhood prompts). Where a record has no true target, this is also what efficacy reports.
Score is the harmonic mean of efficacy, paraphrase and neighborhood, as in the papers.

Everything for all cases is scored in one ``score_continuations`` call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from editscale.data.records import EditCase
from editscale.eval.scoring import ContinuationScores, harmonic_mean, score_continuations

METRICS = ("efficacy", "paraphrase", "neighborhood")


@dataclass
class CaseScores:
    case_id: str
    efficacy: float
    efficacy_magnitude: float
    efficacy_acc: float
    paraphrase: float  # NaN where the case has no paraphrase prompts
    paraphrase_magnitude: float
    paraphrase_acc: float
    neighborhood: float  # NaN where the case has no neighbourhood prompts
    neighborhood_magnitude: float
    neighborhood_acc: float

    def to_dict(self) -> dict:
        return asdict(self)


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


@dataclass
class CounterFactResult:
    cases: list[CaseScores]

    def summary(self) -> dict[str, float | int]:
        """Means over cases (cases lacking a prompt kind are left out of that mean) and the Score."""
        out: dict[str, float | int] = {"n": len(self.cases)}
        for m in METRICS:
            for suffix in ("", "_magnitude", "_acc"):
                out[m + suffix] = _nanmean([getattr(c, m + suffix) for c in self.cases])
        present = [out[m] for m in METRICS if not math.isnan(out[m])]
        out["score"] = harmonic_mean(present) if present else float("nan")
        return out


class _Pairs:
    """Collects (prompt, target) pairs and remembers where each case's pairs are."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.targets: list[str] = []

    def add(self, prompts: Sequence[str], target: str) -> slice:
        start = len(self.prompts)
        self.prompts.extend(prompts)
        self.targets.extend([target] * len(prompts))
        return slice(start, len(self.prompts))


def _compare(scores: ContinuationScores, good: slice, bad: slice | None) -> tuple[float, float]:
    """Fraction of prompts where the good target beats the bad one, and the mean probability gap."""
    if good.stop == good.start:
        return float("nan"), float("nan")
    if bad is None:
        acc = scores.all_argmax[good].double().mean().item()
        return acc, float("nan")
    nll_good, nll_bad = scores.mean_nll[good], scores.mean_nll[bad]
    p_good, p_bad = scores.prob[good], scores.prob[bad]
    return (nll_good < nll_bad).double().mean().item(), (p_good - p_bad).mean().item()


def _acc(scores: ContinuationScores, sl: slice) -> float:
    return scores.token_accuracy[sl].mean().item() if sl.stop > sl.start else float("nan")


def evaluate_cases(
    model: nn.Module, tokenizer, cases: Sequence[EditCase], *, batch_size: int = 64
) -> CounterFactResult:
    """Score every case's edit, paraphrase and neighbourhood prompts in one batched pass."""
    pairs = _Pairs()
    layout = []
    for case in cases:
        req = case.request
        edit = [req.text]
        true = req.target_true
        slots = {
            "e_new": pairs.add(edit, req.target_new),
            "e_true": pairs.add(edit, true) if true else None,
            "p_new": pairs.add(case.paraphrase_prompts, req.target_new),
            "p_true": pairs.add(case.paraphrase_prompts, true) if true else None,
        }
        neighbor_true = case.neighbor_true
        if case.neighborhood_prompts and neighbor_true:
            slots["n_true"] = pairs.add(case.neighborhood_prompts, neighbor_true)
            slots["n_new"] = pairs.add(case.neighborhood_prompts, req.target_new)
        else:
            slots["n_true"], slots["n_new"] = slice(0, 0), None
        layout.append(slots)
    scores = score_continuations(model, tokenizer, pairs.prompts, pairs.targets, batch_size=batch_size)
    results = []
    for case, s in zip(cases, layout):
        eff, eff_mag = _compare(scores, s["e_new"], s["e_true"])
        par, par_mag = _compare(scores, s["p_new"], s["p_true"])
        nei, nei_mag = _compare(scores, s["n_true"], s["n_new"])
        results.append(CaseScores(
            case_id=case.case_id,
            efficacy=eff, efficacy_magnitude=eff_mag, efficacy_acc=_acc(scores, s["e_new"]),
            paraphrase=par, paraphrase_magnitude=par_mag, paraphrase_acc=_acc(scores, s["p_new"]),
            neighborhood=nei, neighborhood_magnitude=nei_mag, neighborhood_acc=_acc(scores, s["n_true"]),
        ))
    return CounterFactResult(results)
