"""The batch-size curve (MEMIT paper, Figure 5) and its breakdown by relation.

For each method and each n in ``sizes``: the first n records of ONE seeded sample (unique subjects; smaller sets
are prefixes of larger ones) are inserted into the UNEDITED model at once (``Editor.edit`` with all n: MEMIT's
one batched edit; ROME's requests one after another, its way of editing n facts), scored on those n records
(efficacy, paraphrase, neighborhood, efficacy_correct) and the edit reverted. Each metric is given as the mean
over records with a 95% interval, mean +- 1.96 standard errors (the MEMIT figure's); the Score is the harmonic
mean of efficacy, paraphrase and neighborhood, its band the harmonic means of their interval ends. The
unedited model is scored once on the whole sample (its line for each n reads the first n records). For the
largest n, each relation's (``EditRequest.relation_id``) means and count.

Every method shares one ``EditContext`` (statistics, prefixes) with a ``TargetCache``: each record's target
vector is optimised once and serves every n (for the MEMIT family the targets of a call are computed on the
unedited model; ROME's record i sees the same weights in every set that starts with the same i records), so
the curve costs one target optimisation per record plus the solves. ``cache_targets=False`` turns it off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from editscale.data.records import EditCase
from editscale.errors import ConfigError
from editscale.eval.counterfact import SCORE_OF, CaseScores, evaluate_cases
from editscale.eval.scoring import harmonic_mean
from editscale.experiment.config import sample_cases
from editscale.json_values import json_ready
from editscale.progress import progress_bar

METRICS = ("efficacy", "paraphrase", "neighborhood", "efficacy_correct")
Z95 = 1.96
UNEDITED = "unedited"  # the label of the unedited model's line and relation rows


@dataclass(frozen=True)
class Estimate:
    """A mean over records with its 95% interval (``low``, ``high``; NaN for fewer than 2 records)."""

    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Estimate:
        nan = float("nan")
        return cls(*(nan if d.get(k) is None else float(d[k]) for k in ("mean", "low", "high")), int(d["n"]))


def estimate(values: Sequence[float]) -> Estimate:
    """Mean +- 1.96 standard errors (sample standard deviation) over the finite ``values``."""
    xs = [v for v in values if not math.isnan(v)]
    n = len(xs)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, float("nan"), float("nan"), n)
    half = Z95 * math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n)
    return Estimate(mean, mean - half, mean + half, n)


def score_estimate(parts: Sequence[Estimate]) -> Estimate:
    """The Score (harmonic mean of the parts' means); its band the harmonic means of the parts' interval ends
    (clipped to [0, 1])."""
    def hm(values: list[float]) -> float:
        return float("nan") if any(math.isnan(v) for v in values) else harmonic_mean(values)

    clip = lambda v: min(max(v, 0.0), 1.0)
    return Estimate(hm([p.mean for p in parts]), hm([clip(p.low) for p in parts]), hm([clip(p.high) for p in parts]),
                    min((p.n for p in parts), default=0))


def estimates(scores: Sequence[CaseScores], metrics: Sequence[str] = METRICS) -> dict[str, Estimate]:
    """Each metric's estimate over ``scores``, and the Score's (when all its parts were measured)."""
    out = {m: estimate([s.values.get(m, float("nan")) for s in scores]) for m in metrics}
    if all(m in out for m in SCORE_OF):
        out["score"] = score_estimate([out[m] for m in SCORE_OF])
    return out


@dataclass
class ScalingPoint:
    """One line's point: ``n`` records edited at once by ``method`` (or the unedited model), scored."""

    method: str
    n: int
    metrics: dict[str, Estimate]
    edit_seconds: float = 0.0
    eval_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "n": self.n, **{k: v.to_dict() for k, v in self.metrics.items()},
                "edit_seconds": self.edit_seconds, "eval_seconds": self.eval_seconds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScalingPoint:
        metrics = {k: Estimate.from_dict(v) for k, v in d.items() if isinstance(v, Mapping)}
        return cls(d["method"], int(d["n"]), metrics, float(d.get("edit_seconds", 0.0)),
                   float(d.get("eval_seconds", 0.0)))


@dataclass
class ScalingResult:
    """Every point of every line (the unedited model's first), the relation breakdown at the largest n (per
    line label: rows of relation, count and the metrics' means), and what produced them."""

    sizes: list[int]
    methods: list[str]
    seed: int
    case_ids: list[str]
    points: list[ScalingPoint]
    relations: dict[str, list[dict[str, Any]]]
    unique: str = "subject"  # what no two records of the sample share: "subject" (the papers) or "fact"
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    target_cache: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)  # model, data, threads: what the caller adds

    @property
    def lines(self) -> list[str]:
        """The line labels in drawing order: the unedited model, then the methods."""
        return list(dict.fromkeys(p.method for p in self.points))

    def line(self, label: str) -> list[ScalingPoint]:
        return sorted((p for p in self.points if p.method == label), key=lambda p: p.n)

    def to_dict(self) -> dict[str, Any]:
        return {**self.info, "sizes": self.sizes, "methods": self.methods, "seed": self.seed, "unique": self.unique,
                "metrics": list(METRICS), "interval": "mean +- 1.96 standard errors over records",
                "case_ids": self.case_ids, "points": [p.to_dict() for p in self.points],
                "relations": self.relations, "hparams": self.hparams, "target_cache": self.target_cache,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScalingResult:
        known = {"sizes", "methods", "seed", "unique", "metrics", "interval", "case_ids", "points", "relations",
                 "hparams", "target_cache", "seconds"}
        return cls(list(d["sizes"]), list(d["methods"]), int(d["seed"]), list(d["case_ids"]),
                   [ScalingPoint.from_dict(p) for p in d["points"]], dict(d["relations"]), str(d.get("unique", "subject")),
                   dict(d.get("hparams", {})), dict(d.get("target_cache", {})), float(d.get("seconds", 0.0)),
                   {k: v for k, v in d.items() if k not in known})


def parse_sizes(text: str) -> list[int]:
    """``"1,10,100"`` as sorted distinct positive sizes; a one-line ``ConfigError`` otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ConfigError("--sizes: no size given; give numbers of edits, e.g. --sizes 1,10,100")
    sizes = []
    for p in parts:
        if not (p.isascii() and p.isdigit()) or int(p) < 1:
            raise ConfigError(f"--sizes: {p!r} is not a positive whole number of edits (e.g. --sizes 1,10,100)")
        sizes.append(int(p))
    return sorted(set(sizes))


def scaling_sample(cases: Sequence[EditCase], sizes: Sequence[int], seed: int,
                   unique: str = "subject") -> list[EditCase]:
    """The seeded sample of max(``sizes``) records with distinct subjects (``unique="fact"``: distinct subject
    and relation, so several facts of one subject) whose prefixes every n edits; a one-line ``ConfigError``
    when the data has fewer."""
    if not sizes or min(sizes) < 1:
        raise ConfigError("--sizes: give positive numbers of edits, e.g. --sizes 1,10,100")
    if unique not in ("subject", "fact"):
        raise ConfigError(f"--unique: {unique!r} is neither 'subject' nor 'fact'")
    largest = max(sizes)
    keys = {(c.request.subject.strip().lower(),) + ((c.request.relation_id or c.request.prompt,)
                                                     if unique == "fact" else ()) for c in cases}
    if largest > len(keys):
        hint = "; or --unique fact to allow other facts of one subject" if unique == "subject" else ""
        raise ConfigError(f"--sizes: {largest} edits asked for, but the data has only {len(keys)} records with "
                          f"distinct {unique}s; give smaller sizes or more records{hint}")
    return sample_cases(list(cases), largest, seed, unique=unique)


def relation_rows(cases: Sequence[EditCase], scores: Sequence[CaseScores]) -> list[dict[str, Any]]:
    """Per relation (``relation_id``; "-" where a record has none), by count: its records and mean metrics."""
    groups: dict[str, list[CaseScores]] = {}
    for case, s in zip(cases, scores):
        groups.setdefault(case.request.relation_id or "-", []).append(s)
    rows = []
    for rel, group in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        est = estimates(group, SCORE_OF)
        rows.append({"relation": rel, "count": len(group), **{m: est[m].mean for m in SCORE_OF}})
    return rows


def scaling_curve(
    model: nn.Module,
    tokenizer,
    cases: Sequence[EditCase],
    sizes: Sequence[int],
    methods: Sequence[str],
    *,
    seed: int = 0,
    unique: str = "subject",
    hparams: Mapping[str, Any] | None = None,
    cache_targets: bool = True,
    targets_file: str | Path | None = None,
    stats_cache: Any = "default",
    corpus: Any = None,
    batch_size: int = 64,
    progress: bool | None = None,
    on_point: Callable[[ScalingPoint], None] | None = None,
) -> ScalingResult:
    """The curve of every method in ``methods`` over ``sizes`` (see the module docstring).

    ``cases``: the records the sample is drawn from (``seed``: the sample's and the context prefixes' seed;
    ``unique``: what no two records of the sample share, ``"subject"`` as the papers or ``"fact"``);
    ``hparams``: per method name, its overrides (a mapping, an Hparams object or a YAML file); ``stats_cache``
    and ``corpus`` as ``Editor``'s; ``targets_file``: a SQLite file that keeps the target vectors as they are
    optimised and serves those it holds (a stopped curve run again optimises only the rest); ``on_point`` is called with each method's point as soon as it is measured
    (the CLI prints it, so a log keeps the points of a curve that is stopped before its end). The model is
    left unedited.
    """
    from editscale.eval.lengths import EDIT_RESERVE, check_cases_fit
    from editscale.methods.base import EditState
    from editscale.methods.context import EditContext
    from editscale.methods.editor import Editor
    from editscale.methods.target_cache import TargetCache

    started = time.perf_counter()
    sizes = sorted({int(n) for n in sizes})
    sample = scaling_sample(cases, sizes, seed, unique)
    check_cases_fit(model, tokenizer, sample, reserve=EDIT_RESERVE)
    ctx = EditContext(model, tokenizer, stats_cache=stats_cache, corpus=corpus, seed=seed, progress=progress)
    if targets_file is not None and not cache_targets:
        raise ConfigError("a targets file keeps the target cache's vectors: it needs the cache on")
    ctx.target_cache = TargetCache(targets_file) if cache_targets else None
    editors = {m: Editor(model, tokenizer, m, (hparams or {}).get(m), context=ctx) for m in methods}

    points: list[ScalingPoint] = []
    relations: dict[str, list[dict[str, Any]]] = {}
    with progress_bar("scaling: the unedited model, score (records)", len(sample), progress) as advance:
        base = evaluate_cases(model, tokenizer, sample, metrics=METRICS, batch_size=batch_size).cases
        advance(len(sample))
    points += [ScalingPoint(UNEDITED, n, estimates(base[:n])) for n in sizes]  # one scoring for every n
    relations[UNEDITED] = relation_rows(sample, base)

    for method, editor in editors.items():
        editor.prepare()
        with progress_bar(f"scaling: {method}, edit n at once, score, revert (edits)", sum(sizes),
                          progress) as advance:
            for n in sizes:
                chunk = sample[:n]
                editor.state = EditState()  # every n starts from the unedited model, with no earlier edits
                t0 = time.perf_counter()
                delta = editor.edit(chunk)
                t1 = time.perf_counter()
                try:
                    scores = evaluate_cases(model, tokenizer, chunk, metrics=METRICS, batch_size=batch_size).cases
                finally:
                    delta.revert(model)
                points.append(ScalingPoint(method, n, estimates(scores), t1 - t0, time.perf_counter() - t1))
                if on_point is not None:
                    on_point(points[-1])
                advance(n)
        relations[method] = relation_rows(chunk, scores)

    if ctx.target_cache is not None:
        ctx.target_cache.close()
    return ScalingResult(
        sizes=sizes, methods=list(methods), seed=seed, unique=unique, case_ids=[c.case_id for c in sample],
        points=points,
        relations=relations, hparams={m: e.hparams.to_dict() for m, e in editors.items()},
        target_cache={"enabled": cache_targets, **(ctx.target_cache.stats() if ctx.target_cache else {})},
        seconds=time.perf_counter() - started)


def write_json(result: ScalingResult, path: str | Path) -> Path:
    """``result`` as JSON (NaN as null)."""
    import json

    p = Path(path)
    p.write_text(json.dumps(json_ready(result.to_dict()), indent=1) + "\n", encoding="utf-8")
    return p
