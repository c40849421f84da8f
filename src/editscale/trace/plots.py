"""Causal-tracing heatmaps in the ROME paper's style (matplotlib Agg); the files ``editscale trace`` writes.

- ``trace_{kind}.png``: the average indirect effect over the traced facts, token rows grouped as the paper's
  Figure 2 (first / middle / last subject token, first subsequent token, further tokens, last token), layers
  across; purple for hidden states, green for MLP, red for attention (the paper's colours);
- ``fact{i}_{kind}.png``: single facts as the paper's Figure 1: the probability of the answer with the state
  at (token, layer) restored, subject tokens starred, shaded from the corrupted run's probability upwards;
- ``trace.json``: ``TraceSummary.to_json()``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from editscale.trace.causal import GROUPS, FactTrace
from editscale.trace.summary import TraceSummary

CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
TITLES = {
    "hidden": "single restored layer",
    "mlp": "center of interval of {w} restored MLP layers",
    "attn": "center of interval of {w} restored attention layers",
}


def _heatmap(
    values: np.ndarray,
    labels: list[str],
    kind: str,
    window: int,
    title: str,
    cbar: str,
    path: Path,
    vmin: float | None = None,
) -> Path:
    rows, n_layers = values.shape
    fig, ax = plt.subplots(figsize=(3.2 + 0.09 * n_layers, 0.6 + 0.24 * rows), dpi=110)
    masked = np.ma.masked_invalid(values)
    h = ax.pcolormesh(masked, cmap=CMAPS[kind], vmin=vmin)
    ax.invert_yaxis()
    ax.set_yticks([0.5 + i for i in range(rows)])
    ax.set_yticklabels(labels, fontsize=7)
    step = max(1, math.ceil(n_layers / 8))
    ax.set_xticks([0.5 + i for i in range(0, n_layers, step)])
    ax.set_xticklabels([str(i) for i in range(0, n_layers, step)], fontsize=7)
    ax.set_xlabel(TITLES[kind].format(w=window), fontsize=7)
    ax.set_title(title, fontsize=8)
    cb = fig.colorbar(h)
    cb.ax.tick_params(labelsize=6)
    cb.set_label(cbar, fontsize=7)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_average(summary: TraceSummary, kind: str, path: Path, model_name: str = "") -> Path:
    """The paper's Figure 2 panel for one kind: average indirect effect by token group and layer."""
    what = {"hidden": "hidden state", "mlp": "MLP", "attn": "attention"}[kind]
    name = Path(model_name.rstrip("/")).name if model_name else ""
    title = f"restoring {what}{' in ' + name if name else ''}\naverage over {summary.n_facts} facts"
    return _heatmap(summary.grouped[kind], list(GROUPS), kind, summary.window, title, "AIE", path)


def plot_fact(trace: FactTrace, kind: str, path: Path) -> Path:
    """One fact's trace for one kind: P(answer) with each (token, layer) state restored."""
    labels = [
        repr(t)[1:-1] + ("*" if trace.subject_range[0] <= i < trace.subject_range[1] else "")
        for i, t in enumerate(trace.tokens)
    ]
    probs = trace.effects[kind] + trace.p_corrupted
    text = trace.fact.text if len(trace.fact.text) <= 60 else trace.fact.text[:57] + "..."
    title = f"restoring {kind}\n{text}"
    return _heatmap(
        probs, labels, kind, trace.window, title, f"p({trace.answer.strip()!r})", path, vmin=trace.p_corrupted
    )


def write_outputs(
    summary: TraceSummary, out_dir: str | Path, *, model_name: str = "", single_facts: int = 3
) -> list[Path]:
    """Write the average heatmaps, ``single_facts`` single-fact heatmaps per kind, and ``trace.json``."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_average(summary, k, out / f"trace_{k}.png", model_name) for k in summary.kinds]
    for i, tr in enumerate(summary.facts[:single_facts]):
        written += [plot_fact(tr, k, out / f"fact{i}_{k}.png") for k in summary.kinds]
    data = summary.to_json()
    data["model"] = model_name
    data["facts"] = [
        {
            "case_id": t.fact.case_id,
            "prompt": t.fact.text,
            "subject": t.fact.subject,
            "object": t.fact.object,
            "answer": t.answer,
            "p_clean": t.p_clean,
            "p_corrupted": t.p_corrupted,
            "seconds": t.seconds,
        }
        for t in summary.facts
    ]
    path = out / "trace.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return [*written, path]
