"""Every metric editscale reports, declared once.

A ``Metric`` says what a number is (name, plain label, what it is computed on), at which level it is measured
(``edit``: each edit right after its update; ``update``: once per update; ``recheck``: at each re-check of
earlier edits; ``distance``: per update and edited matrix), whether higher is better, whether it is a fraction
(shown as a percentage), whether the run summary carries it and in which figure it is drawn. The run database's
columns, the run summary, the plots, the HTML tables and the CLI tables are derived from these declarations.

A per-edit metric also carries its computation: a function of a ``CaseView`` (the scored continuations of one
case's prompt groups, its greedy continuations, its sampled generations and the reference texts), and
declares what it reads, so an evaluation computes only what the requested metrics need. Adding a per-edit
metric is one ``register(Metric(...))`` and its test.

The definitions follow the papers' code (kmeng01/rome, kmeng01/memit, the scale paper's
scalable-model-editing/gradual-catastrophic-forgetting), where they differ from the papers' text:

- ``efficacy`` / ``paraphrase`` / ``neighborhood`` (ROME's ES / PS / NS): [P(new) > P(true)] with P the
  per-token geometric mean probability of a continuation (the mean NLL compared); neighbourhood the other way;
- ``efficacy_correct``: every token of the new target is the argmax after the edit prompt, teacher forced (the
  scale paper's ``rewrite_prompts_correct``); this is what its forgetting counts;
- ``attribute``: [P(new) > P(true)] on prompts about other subjects whose object IS the new target (ROME's
  attribute prompts; an edit should not disturb them);
- ``gen_efficacy`` / ``gen_paraphrase``: no teacher forcing: the model's own greedy continuation of the prompt
  begins with the new object (a word-boundary prefix match of the decoded text);
- ``gen_entropy``: ROME's n-gram entropy (weighted bi- and tri-gram entropy, bits) of top-k (5) sampled texts of
  at most 100 tokens, prompt included (the reference's ``generate_fast(max_out_len=100)``), of the case's
  generation prompts, or where a record has none, of its edit and paraphrase prompts;
- ``reference_score`` (ROME's consistency, RS): TF-IDF cosine between the sampled texts, joined, and the
  reference texts about the new object, joined. Reference texts: the record's own ``reference_texts``, else
  its attribute prompts completed with the new object (sentences about other subjects that hold it: for a
  testbed world exactly the world's sentences about the object). The vectorizer is fitted on the reference
  texts of all cases of the evaluation (the reference fits it on Wikipedia snippets). NaN where a case has none.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from editscale.data.records import EditCase
    from editscale.eval.scoring import ContinuationScores

Level = Literal["edit", "update", "recheck", "distance"]
Group = tuple[str, str]  # (prompt group, target): groups edit / paraphrase / neighborhood / attribute

SUMMARY_WINDOW = 50  # per-edit metrics are summarised as their mean over the last 50 edits, as the paper


def nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (NaN if none is)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


@dataclass
class CaseView:
    """What a per-edit metric may read about one case."""

    case: EditCase
    scores: dict[Group, ContinuationScores]  # scored continuations of each prompt group read
    greedy: dict[str, list[str]] = field(default_factory=dict)  # group -> greedy continuations (text only)
    samples: list[str] = field(default_factory=list)  # sampled texts, prompt included
    reference: Callable[[EditCase, Sequence[str]], float] | None = None

    def get(self, group: str, target: str) -> ContinuationScores | None:
        s = self.scores.get((group, target))
        return s if s is not None and len(s) else None


@dataclass(frozen=True)
class Metric:
    """One metric's declaration (see the module docstring)."""

    name: str
    level: Level
    label: str
    description: str
    higher_is_better: bool | None = True
    percent: bool = True  # a fraction in [0, 1], shown as a percentage
    summary: bool = True  # in the run summary and the report's table
    plot: str | None = None  # the figure it is drawn in (a per-edit metric: one panel)
    reads: tuple[Group, ...] = ()  # prompt groups a per-edit metric scores
    needs: frozenset[str] = frozenset()  # "greedy", "sampled", "reference"
    fn: Callable[[CaseView], float] | None = None
    sql_type: str = "REAL"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"metric name {self.name!r} must be lower_snake_case (it is a database column)")
        if self.level == "edit" and self.fn is None:
            raise ValueError(f"per-edit metric {self.name!r} needs a function of a CaseView")

    def format(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if self.percent:
            return f"{100 * value:.1f}"
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3f}"


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Declare a metric (its name must be new)."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    METRICS.pop(name, None)


def metrics_at(level: Level) -> list[Metric]:
    """The declared metrics of one level, in declaration order."""
    return [m for m in METRICS.values() if m.level == level]


def edit_metric_names() -> tuple[str, ...]:
    return tuple(m.name for m in metrics_at("edit"))


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        from editscale.errors import ConfigError

        raise ConfigError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


# ------------------------------------------------------------------------------------------------------------
# the computations of the per-edit metrics
# ------------------------------------------------------------------------------------------------------------
def compare(v: CaseView, good: Group, bad: Group | None) -> float:
    """Fraction of prompts where the good continuation is likelier (lower mean NLL) than the bad one; without
    a bad one (a record with no true target), the fraction whose good continuation is all argmax."""
    g = v.get(*good)
    if g is None:
        return float("nan")
    b = v.get(*bad) if bad is not None else None
    if b is None:
        return g.all_argmax.double().mean().item()
    return (g.mean_nll < b.mean_nll).double().mean().item()


def magnitude(v: CaseView, good: Group, bad: Group) -> float:
    """Mean probability gap P(good) - P(bad) (per-token geometric means)."""
    g, b = v.get(*good), v.get(*bad)
    if g is None or b is None:
        return float("nan")
    return (g.prob - b.prob).mean().item()


def token_accuracy(v: CaseView, group: Group) -> float:
    s = v.get(*group)
    return s.token_accuracy.mean().item() if s is not None else float("nan")


def all_correct(v: CaseView, group: Group) -> float:
    s = v.get(*group)
    return s.all_argmax.double().mean().item() if s is not None else float("nan")


def begins_with(text: str, target: str) -> bool:
    """Whether ``text`` (after leading space) begins with the word(s) ``target`` (not a longer word)."""
    text, target = text.lstrip(), target.strip()
    if not text.startswith(target):
        return False
    rest = text[len(target):]
    return not rest or not (rest[0].isalnum() or rest[0] == "_")


def generated_success(v: CaseView, group: str) -> float:
    conts = v.greedy.get(group, [])
    if not conts:
        return float("nan")
    target = v.case.request.target_new
    return sum(begins_with(c, target) for c in conts) / len(conts)


def reference_texts(case: EditCase) -> list[str]:
    """RS's reference texts of a case: its own, else its attribute prompts completed with the new object."""
    if case.reference_texts:
        return list(case.reference_texts)
    new = case.request.target_new
    return [f"{p} {new}" for p in case.attribute_prompts]


def _entropy(v: CaseView) -> float:
    from editscale.eval.scoring import mean_ngram_entropy

    return mean_ngram_entropy(v.samples)


def _reference_score(v: CaseView) -> float:
    if v.reference is None or not v.samples:
        return float("nan")
    return v.reference(v.case, v.samples)


E_NEW, E_TRUE = ("edit", "new"), ("edit", "true")
P_NEW, P_TRUE = ("paraphrase", "new"), ("paraphrase", "true")
N_TRUE, N_NEW = ("neighborhood", "true"), ("neighborhood", "new")
A_NEW, A_TRUE = ("attribute", "new"), ("attribute", "true")


def _edit(name: str, label: str, description: str, fn: Callable[[CaseView], float], reads: tuple[Group, ...] = (),
          *, needs: tuple[str, ...] = (), plot: str | None = None, summary: bool = True, percent: bool = True,
          higher_is_better: bool | None = True) -> Metric:
    return register(Metric(name, "edit", label, description, higher_is_better, percent, summary, plot, reads,
                           frozenset(needs), fn))


_edit("efficacy", "efficacy", "edit prompt: P(new) > P(true) (ROME's efficacy score)",
      lambda v: compare(v, E_NEW, E_TRUE), (E_NEW, E_TRUE), plot="proficiency")
_edit("efficacy_magnitude", "efficacy magnitude", "edit prompt: P(new) - P(true)",
      lambda v: magnitude(v, E_NEW, E_TRUE), (E_NEW, E_TRUE), summary=False, percent=False)
_edit("efficacy_acc", "efficacy token accuracy", "edit prompt: fraction of new-target tokens that are the argmax",
      lambda v: token_accuracy(v, E_NEW), (E_NEW,), summary=False)
_edit("efficacy_correct", "edit correct", "edit prompt: every new-target token is the argmax, teacher forced "
      "(the scale paper's rewrite_prompts_correct; what its forgetting counts)",
      lambda v: all_correct(v, E_NEW), (E_NEW,))
_edit("paraphrase", "paraphrase", "paraphrase prompts: P(new) > P(true), averaged (ROME's paraphrase score)",
      lambda v: compare(v, P_NEW, P_TRUE), (P_NEW, P_TRUE), plot="proficiency")
_edit("paraphrase_magnitude", "paraphrase magnitude", "paraphrase prompts: P(new) - P(true)",
      lambda v: magnitude(v, P_NEW, P_TRUE), (P_NEW, P_TRUE), summary=False, percent=False)
_edit("paraphrase_acc", "paraphrase token accuracy", "paraphrase prompts: new-target token accuracy",
      lambda v: token_accuracy(v, P_NEW), (P_NEW,), summary=False)
_edit("neighborhood", "neighborhood", "other subjects' prompts: P(their true object) > P(new), averaged "
      "(ROME's neighborhood score)", lambda v: compare(v, N_TRUE, N_NEW), (N_TRUE, N_NEW), plot="proficiency")
_edit("neighborhood_magnitude", "neighborhood magnitude", "other subjects' prompts: P(true) - P(new)",
      lambda v: magnitude(v, N_TRUE, N_NEW), (N_TRUE, N_NEW), summary=False, percent=False)
_edit("neighborhood_acc", "neighborhood token accuracy", "other subjects' prompts: true-object token accuracy",
      lambda v: token_accuracy(v, N_TRUE), (N_TRUE,), summary=False)
_edit("attribute", "attribute", "prompts about other subjects whose object is the new target: "
      "P(new) > P(true) (ROME's attribute prompts)", lambda v: compare(v, A_NEW, A_TRUE), (A_NEW, A_TRUE))
_edit("gen_efficacy", "generated efficacy", "the greedy continuation of the edit prompt begins with the new "
      "object (no teacher forcing)", lambda v: generated_success(v, "edit"), needs=("greedy",), plot="generation")
_edit("gen_paraphrase", "generated paraphrase", "greedy continuations of the paraphrase prompts that begin with "
      "the new object", lambda v: generated_success(v, "paraphrase"), needs=("greedy",), plot="generation")
_edit("gen_entropy", "generation entropy", "ROME's n-gram entropy (bits) of sampled 100-token texts of the "
      "generation prompts", _entropy, needs=("sampled",), plot="generation", percent=False)
_edit("reference_score", "reference score", "TF-IDF cosine of the sampled texts with reference texts about the "
      "new object (ROME's consistency, RS)", _reference_score, needs=("sampled", "reference"), plot="generation",
      percent=False)

# --- measured once per update ----------------------------------------------------------------------------
for _m in (
    Metric("seconds", "update", "seconds", "wall time of the update and its measurements", False, False, False),
    Metric("compute_seconds", "update", "method seconds", "of which in the method's compute", False, False, False),
    Metric("entropy", "update", "guard entropy", "the guard's generation entropy of fixed prompts (bits)",
           True, False, False),
    Metric("probe_neighborhood", "update", "probe neighborhood", "neighborhood score of the guard's fixed "
           "probe set of unrelated facts", True, True, False),
    # --- at each re-check ------------------------------------------------------------------------------------
    Metric("forgotten", "recheck", "forgotten %", "the scale paper's forgetting: of the edits correct when made "
           "(efficacy_correct) so far, the share that failed at any re-check since (counted from their first "
           "failure on)", False),
    Metric("forgotten_prob", "recheck", "forgotten (P) %", "editscale's earlier definition: of the earlier edits "
           "with P(new) > P(true) when made, the share failing it at this re-check", False),
    # --- per update and edited matrix --------------------------------------------------------------------------
    Metric("frobenius", "distance", "||W - W0||_F", "Frobenius norm of the change of the matrix since the start",
           None, False, False),
    Metric("distance_per_element", "distance", "distance / element", "Frobenius distance over the number of "
           "elements of the matrix (the scale paper's code and its Table 2)", None, False, True, "distance"),
    Metric("distance_per_neuron", "distance", "distance / neuron", "Frobenius distance over the layer's neurons "
           "(the larger side of the matrix; the scale paper's text)", None, False, True, "distance"),
    Metric("update_norm", "distance", "update norm", "Frobenius norm of this update of the matrix (0: untouched)",
           None, False, False),
):
    register(_m)
