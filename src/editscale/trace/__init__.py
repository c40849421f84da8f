"""Causal tracing: where a model recalls a fact (ROME's section 3), on every architecture in the anatomy."""

from editscale.trace.causal import (
    GROUPS,
    KINDS,
    FactTrace,
    default_window,
    embedding_noise,
    known_mask,
    trace_fact,
    window_range,
)
from editscale.trace.summary import RULE, TraceSummary, causal_trace, recommend, summarize

__all__ = ["GROUPS", "KINDS", "RULE", "FactTrace", "TraceSummary", "causal_trace", "default_window",
           "embedding_noise", "known_mask", "recommend", "summarize", "trace_fact",
           "window_range"]
