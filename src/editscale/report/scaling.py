"""The scaling curve's figure and tables (``editscale scaling``; ``experiment.scaling`` computes them).

- ``scaling.png``, in the style of the MEMIT paper's Figure 5: x the number of edits made at once (log axis),
  panels efficacy, paraphrase, neighborhood and Score; one line per method with its 95% band, the unedited
  model dashed;
- ``point_rows`` / ``relation_table_rows``: the points and the per-relation breakdown at the largest n as rows of
  formatted cells, which the CLI prints as a table or, with ``markdown_table``, as Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from editscale.eval.metrics import METRICS as DECLARED
from editscale.experiment.scaling import UNEDITED, Estimate, ScalingPoint, ScalingResult

PANELS = ("efficacy", "paraphrase", "neighborhood", "score")
LABELS = {"score": "Score (harmonic mean)"}
TABLE_METRICS = ("efficacy", "paraphrase", "neighborhood", "efficacy_correct", "score")


def label(metric: str) -> str:
    return LABELS.get(metric) or (DECLARED[metric].label if metric in DECLARED else metric)


def plot_scaling(result: ScalingResult, path: str | Path, title: str = "") -> Path:
    """Draw ``result`` (Figure 5's layout) into ``path``."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = [m for m in result.lines if m != UNEDITED]
    for ax, metric in zip(axes[0], PANELS):
        for line in result.lines:
            pts = [p for p in result.line(line) if metric in p.metrics]
            if not pts:
                continue
            x = [p.n for p in pts]
            est = [p.metrics[metric] for p in pts]
            mean = [100 * e.mean for e in est]
            if line == UNEDITED:
                ax.plot(x, mean, ls="--", color="0.45", lw=1.2, label=line)
                continue
            color = colors[methods.index(line) % len(colors)]
            ax.plot(x, mean, marker="o", ms=3.5, color=color, label=line)
            lo = [100 * max(e.low, 0.0) if math.isfinite(e.low) else math.nan for e in est]
            hi = [100 * min(e.high, 1.0) if math.isfinite(e.high) else math.nan for e in est]
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
        ax.set_xscale("log")
        ax.set_xticks(result.sizes, [str(n) for n in result.sizes])
        ax.minorticks_off()
        ax.set_ylim(-2, 102)
        ax.set_title(label(metric))
        ax.set_xlabel("edits made at once (n)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("% (95% interval shaded)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=max(1, len(names)), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def cell(e: Estimate | None, interval: bool = True) -> str:
    """``"87.5 ± 3.2"`` (percent; ± half the 95% interval), ``"87.5"`` without an interval, ``"-"`` unmeasured."""
    if e is None or math.isnan(e.mean):
        return "-"
    if not interval or math.isnan(e.low) or math.isnan(e.high):
        return f"{100 * e.mean:.1f}"
    return f"{100 * e.mean:.1f} ± {50 * (e.high - e.low):.1f}"


def point_line(p: ScalingPoint) -> str:
    """One measured point as a line of text: ``memit n=100: efficacy 98.0 ± 2.7, ... (edit 640.1 s, ...)``."""
    scores = ", ".join(f"{label(m)} {cell(p.metrics.get(m))}" for m in TABLE_METRICS)
    return f"{p.method} n={p.n}: {scores} (edit {p.edit_seconds:.1f} s, score {p.eval_seconds:.1f} s)"


def point_rows(result: ScalingResult) -> list[dict[str, str]]:
    """One row per line and n: the metrics in percent with their intervals, and the seconds spent."""
    rows = []
    for line in result.lines:
        for p in result.line(line):
            row = {"line": line, "n": str(p.n)}
            row.update({label(m): cell(p.metrics.get(m)) for m in TABLE_METRICS})
            row["edit s"] = f"{p.edit_seconds:.2f}" if line != UNEDITED else "-"
            row["score s"] = f"{p.eval_seconds:.2f}" if line != UNEDITED else "-"
            rows.append(row)
    return rows


def relation_table_rows(result: ScalingResult) -> list[dict[str, str]]:
    """One row per line and relation at the largest n: its records and mean metrics in percent."""
    rows = []
    for line, rels in result.relations.items():
        for r in rels:
            row = {"line": line, "relation": str(r["relation"]), "records": str(r["count"])}
            for m in ("efficacy", "paraphrase", "neighborhood"):
                v = r.get(m)
                row[label(m)] = "-" if v is None or math.isnan(v) else f"{100 * v:.1f}"
            rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` (same keys) as a Markdown table."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(lines)
