"""Causal tracing over many facts: ``causal_trace`` traces the first facts a model knows, averages their
effects (``TraceSummary``) and recommends the layers to edit (``recommend``); ``causal.py`` traces one fact.

Known facts are those whose object the unedited model predicts greedily (every token of it the argmax,
teacher-forced: its greedy continuation begins with the object). The averages follow the paper's figure: token
rows grouped as first subject token, middle subject tokens, last subject token, first subsequent token,
further tokens, last token (middle and further tokens pooled over facts, as the reference's notebook).

**Recommended layers** (``RULE``): the ROME layer is the layer l whose MLP restoration (window centred on l)
has the largest average indirect effect at the last subject token, as the ROME paper chose layer 17 of GPT-2
XL from its MLP trace; the MEMIT layers are the window the MEMIT paper took around its ROME layer in GPT-J
(layers 3-8 around 5: l-2 .. l+3), clipped to the model's layers. The last layer is never chosen (nothing
after it reads the subject position; editscale refuses edits there), and where the peak is below 5% of the
total effect the trace recommends no layer: the model does not recall the fact at the last subject token
(testbed:demo, whose invented names spread a subject over up to 9 tokens, is such a model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from editscale.data.records import EditCase, EditRequest, Fact
from editscale.errors import ConfigError
from editscale.model.anatomy import get_anatomy
from editscale.model.tokens import ensure_pad_token
from editscale.trace.causal import (
    GROUPS,
    KINDS,
    LAST_SUBJECT,
    LAST_TOKEN,
    FactTrace,
    _check,
    as_fact,
    default_window,
    embedding_noise,
    known_mask,
    trace_fact,
)

MEMIT_SPAN = (-2, 3)  # MEMIT's GPT-J layers 3-8 around ROME's 5
MIN_PEAK = 0.05  # below this share of the total effect, no layer is recommended
RULE = (
    "rome_layer: the layer (the last excepted) whose MLP restoration (window centred on it) has the largest "
    "average indirect effect at the last subject token, if that is at least 5% of the total effect; "
    "memit_layers: rome_layer-2 .. rome_layer+3 (the MEMIT paper's GPT-J layers 3-8 around ROME's 5), "
    "clipped to the layers before the last"
)



@dataclass
class TraceSummary:
    """Averages over the traced facts, the recommended edit layers, and the cost."""

    n_facts: int
    n_layers: int
    kinds: tuple[str, ...]
    samples: int
    window: int
    noise: float
    p_clean: float
    p_corrupted: float
    total_effect: float
    grouped: dict[str, np.ndarray]  # kind -> (6, L): average IE per token group (GROUPS) and layer
    recommended: dict
    cost: dict
    n_candidates: int = 0  # facts read
    n_known: int = 0  # of those, known to the model (before the --n limit)
    facts: list[FactTrace] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "n_facts": self.n_facts,
            "n_candidates": self.n_candidates,
            "n_known": self.n_known,
            "n_layers": self.n_layers,
            "kinds": list(self.kinds),
            "samples": self.samples,
            "window": self.window,
            "noise": self.noise,
            "p_clean": self.p_clean,
            "p_corrupted": self.p_corrupted,
            "total_effect": self.total_effect,
            "indirect_effect": {
                k: {
                    "last_subject_token": _floats(self.grouped[k][LAST_SUBJECT]),
                    "last_token": _floats(self.grouped[k][LAST_TOKEN]),
                }
                for k in self.kinds
            },
            "indirect_effect_by_token_group": {
                k: dict(zip(GROUPS, map(_floats, self.grouped[k]))) for k in self.kinds
            },
            "recommended": self.recommended,
            "cost": self.cost,
        }


def _floats(values: np.ndarray) -> list[float | None]:
    """JSON-ready: NaN (a token group no fact has) becomes None."""
    return [None if np.isnan(v) else float(v) for v in values]


def recommend(mlp: np.ndarray | None, total_effect: float) -> dict:
    """The ROME layer and MEMIT layers ``RULE`` picks from the MLP trace's token groups (``mlp``: (6, L)
    average IE, rows as ``GROUPS``), or None with the reason where the trace does not support a layer."""
    if mlp is None:
        return {"rome_layer": None, "memit_layers": None, "rule": RULE, "note": "needs the mlp kind"}
    n = mlp.shape[1]
    curve = mlp[
        LAST_SUBJECT, : max(1, n - 1)
    ]  # the last layer is never edited: nothing after it reads the subject
    rome = int(np.argmax(curve))
    subject = np.nan_to_num(mlp[: LAST_SUBJECT + 1], nan=-np.inf)
    g, layer = np.unravel_index(int(np.argmax(subject)), subject.shape)
    out = {
        "rome_layer": rome,
        "memit_layers": list(
            range(max(0, rome + MEMIT_SPAN[0]), min(max(0, n - 2), rome + MEMIT_SPAN[1]) + 1)
        ),
        "peak_indirect_effect": float(curve[rome]),
        "rule": RULE,
        "subject_peak": {
            "token": GROUPS[g],
            "layer": int(layer),
            "indirect_effect": float(subject[g, layer]),
        },
    }
    if not curve[rome] > MIN_PEAK * total_effect:
        out.update(
            rome_layer=None,
            memit_layers=None,
            note=(
                f"no MLP window at the last subject token carries {MIN_PEAK:.0%} of the total effect "
                f"({total_effect:.3f}); the fact is not recalled there, so the trace recommends no layer "
                "(subject_peak says where the MLP effect on the subject's tokens is)"
            ),
        )
    return out


def summarize(traces: Sequence[FactTrace], noise: float) -> TraceSummary:
    if not traces:
        raise ConfigError("no traced facts to summarize (none of the facts is known to the model?)")
    kinds = tuple(traces[0].effects)
    n = traces[0].n_layers
    grouped = {}
    for k in kinds:
        pools: list[list[np.ndarray]] = [[] for _ in GROUPS]
        for tr in traces:
            for pool, rows in zip(pools, tr.grouped(k)):
                pool.extend(rows)
        grouped[k] = np.stack([np.mean(p, 0) if p else np.full(n, np.nan) for p in pools])
    nf = len(traces)
    seconds = sum(t.seconds for t in traces)
    cost = {
        "seconds_per_fact": seconds / nf,
        "forward_calls_per_fact": sum(t.forward_calls for t in traces) / nf,
        "row_layers_per_fact": sum(t.row_layers for t in traces) / nf,
        "full_pass_equivalents_per_fact": sum(t.row_layers / ((t.samples + 1) * n) for t in traces) / nf,
        "reference_passes_per_fact": sum(t.reference_passes() for t in traces) / nf,
        "mean_tokens": sum(len(t.tokens) for t in traces) / nf,
    }
    p_clean = float(np.mean([t.p_clean for t in traces]))
    p_corr = float(np.mean([t.p_corrupted for t in traces]))
    return TraceSummary(
        n_facts=nf,
        n_layers=n,
        kinds=kinds,
        samples=traces[0].samples,
        window=traces[0].window,
        noise=noise,
        p_clean=p_clean,
        p_corrupted=p_corr,
        total_effect=p_clean - p_corr,
        grouped=grouped,
        recommended=recommend(grouped.get("mlp"), p_clean - p_corr),
        cost=cost,
        facts=list(traces),
    )


def causal_trace(
    model: nn.Module,
    tokenizer,
    facts: Sequence[Fact | EditRequest | EditCase],
    *,
    n: int | None = None,
    kinds: Sequence[str] = KINDS,
    samples: int = 10,
    window: int | None = None,
    noise_factor: float = 3.0,
    seed: int = 0,
    max_rows: int = 1024,
    known_only: bool = True,
    progress: bool | None = None,
) -> TraceSummary:
    """Trace the first ``n`` facts the model knows (all facts with ``known_only=False``) and average them.

    The noise level is measured over all given facts' subjects. Fact i's noise draws are seeded by
    ``(seed, i)``, so a fact's trace does not depend on which others are traced with it.
    """
    from editscale.progress import progress_bar

    if not math.isfinite(noise_factor) or noise_factor <= 0:
        raise ConfigError(f"noise_factor must be a positive finite number, got {noise_factor}")
    all_facts = [as_fact(f) for f in facts]
    if not all_facts:
        raise ConfigError("no facts to trace")
    anatomy = get_anatomy(model)
    n_layers = anatomy.n_layers(model)
    window = default_window(n_layers) if window is None else window
    kinds = _check(kinds, samples, window)
    ensure_pad_token(tokenizer)
    noise = embedding_noise(model, tokenizer, [f.subject for f in all_facts], noise_factor)
    chosen = list(enumerate(all_facts))
    n_known = len(chosen)
    if known_only:
        mask = known_mask(model, tokenizer, all_facts, progress=progress)
        chosen = [(i, f) for (i, f), k in zip(chosen, mask) if k]
        n_known = len(chosen)
    chosen = chosen[:n] if n is not None else chosen
    if not chosen:
        raise ConfigError(
            f"none of the {len(all_facts)} facts is known to the model (its greedy continuation "
            "never begins with the object); trace other facts, or all of them (known_only=False; --all-facts)"
        )
    traces = []
    with progress_bar("causal tracing", len(chosen), progress) as advance:
        for i, f in chosen:
            tr = trace_fact(
                model,
                tokenizer,
                f,
                noise=noise,
                kinds=kinds,
                samples=samples,
                window=window,
                seed=fact_seed(seed, i),
                max_rows=max_rows,
                anatomy=anatomy,
            )
            traces.append(tr)
            advance(status=f"{tr.seconds:.1f} s/fact")
    summary = summarize(traces, noise)
    summary.n_candidates, summary.n_known = len(all_facts), n_known
    return summary


def fact_seed(seed: int, index: int) -> int:
    """The noise seed of fact ``index`` in ``causal_trace``."""
    return seed * 1_000_003 + index
