"""Plots of sequential-editing runs in the style of Gupta et al. 2024, several runs overlaid (matplotlib Agg).

The figures follow the metric declarations (``editscale.eval.metrics``): every per-edit metric names the
figure it is drawn in, one panel each.

- ``proficiency.png`` (Figure 1a-c): efficacy, paraphrase and neighborhood of each new edit against the number
  of edits, averaged over the last 5 edits (dotted) and the last 50 (solid);
- ``generation.png``: the generation-based metrics (greedy efficacy and paraphrase, generation entropy,
  reference score), likewise;
- ``forgetting.png`` (Figure 1d): % of earlier edits forgotten at each re-check, the scale paper's definition
  (solid) and editscale's P(new) > P(true) one (dashed);
- ``downstream.png`` (Figure 2a-c): downstream F1 per task (perplexity and known-fact retention for the probes);
- ``distance.png`` (Figure 2d): distance of every edited matrix from its original, per element (the paper's
  code and Table 2; top) and per neuron (its text; bottom), one column per run.

Flagged (possibly disabling) updates are marked on every plot with a cross in the run's colour.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from editscale.eval.metrics import METRICS, Metric, metrics_at
from editscale.eval.panel import LOWER_IS_BETTER, PRIMARY_METRIC, primary_metric, secondary_metric
from editscale.experiment.store import RunStore

WINDOWS = ((5, ":"), (50, "-"))
DISTANCES = ("distance_per_element", "distance_per_neuron")


def plotted(group: str) -> list[Metric]:
    """The per-edit metrics drawn in one figure."""
    return [m for m in metrics_at("edit") if m.plot == group]


@dataclass
class RunData:
    """What the plots need from one run, read from its database."""

    label: str
    edit_idx: np.ndarray
    scores: dict[str, np.ndarray]  # metric -> per edit (NaN where not measured)
    recheck_edits: np.ndarray
    forgotten: np.ndarray  # fractions, the paper's definition
    forgotten_prob: np.ndarray
    downstream: dict[str, tuple[np.ndarray, np.ndarray]]  # task -> (n_edits, its primary metric: F1, perplexity, ...)
    distances: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # metric -> param -> (n_edits, value)
    layers: dict[str, int | None] = field(default_factory=dict)
    flagged: list[int] = field(default_factory=list)  # edit numbers of flagged updates
    unedited_mcc: dict[str, float] = field(default_factory=dict)  # task -> Matthews correlation before editing
    # task -> (its secondary metric, n_edits, values): tabulated, not drawn (runs older than it have none)
    secondary: dict[str, tuple[str, np.ndarray, np.ndarray]] = field(default_factory=dict)


def load_run(run_dir: str | Path, label: str | None = None) -> RunData:
    names = [m.name for m in metrics_at("edit") if m.plot]
    with RunStore.in_dir(run_dir, readonly=True) as store:
        meta = store.meta()
        edit_idx, series = store.edit_series(names)
        rc = np.array(store.recheck_series(), dtype=float).reshape(-1, 3)
        down = store.downstream_series("f1")
        for task, metric in PRIMARY_METRIC.items():  # the probes, drawn by their own metric
            down.update({t: v for t, v in store.downstream_series(metric).items() if t == task})
        mcc0 = store.downstream_at(0, "mcc")
        by_metric = {m: store.downstream_series(m) for m in {secondary_metric(t) for t in down} - {None}}
        second = {t: (m, by_metric[m][t]) for t in down if (m := secondary_metric(t)) and t in by_metric[m]}
        dist: dict[str, dict[str, list[tuple[int, float]]]] = {}
        layers: dict[str, int | None] = {}
        for column in DISTANCES:
            per: dict[str, list[tuple[int, float]]] = defaultdict(list)
            for param, layer, n, v in store.distance_series(column):
                per[param].append((n, v))
                layers[param] = layer
            dist[column] = per
        flagged = store.event_edits("flagged")
    pair = lambda v: (np.array([p[0] for p in v], dtype=float), np.array([p[1] for p in v], dtype=float))
    return RunData(
        label=label or meta["config"]["method"]["name"], edit_idx=np.array(edit_idx, dtype=float),
        scores={m: np.array(v, dtype=float) for m, v in series.items()},
        recheck_edits=rc[:, 0], forgotten=rc[:, 1], forgotten_prob=rc[:, 2],
        downstream={t: pair(v) for t, v in down.items()},
        distances={c: {p: pair(v) for p, v in per.items()} for c, per in dist.items()},
        layers=layers, flagged=flagged, unedited_mcc=mcc0,
        secondary={t: (m, *pair(v)) for t, (m, v) in second.items()})


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each value and the ``window - 1`` before it (fewer at the start), NaNs left out."""
    ok = ~np.isnan(values)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, values, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(ok)])
    hi = np.arange(1, len(values) + 1)
    lo = np.maximum(0, hi - window)
    count = ccount[hi] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[hi] - csum[lo]) / np.maximum(count, 1), np.nan)


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _mark_flagged(ax, run: RunData, x: np.ndarray, y: np.ndarray, color) -> None:
    """Crosses at the flagged edits, on the run's curve (interpolated between measured points)."""
    ok = ~np.isnan(y)
    if not run.flagged or not ok.any():
        return
    flagged = np.array(run.flagged, dtype=float)
    ax.scatter(flagged, np.interp(flagged, x[ok], y[ok]), marker="x", s=50, color=color, zorder=5,
               linewidths=1.5)


def _finish(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _legend(fig, runs: list[RunData], colors: list, with_windows: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=2, label=r.label) for r, c in zip(runs, colors)]
    if with_windows:
        handles += [Line2D([], [], color="grey", ls=ls, label=f"last {w} edits") for w, ls in WINDOWS]
    if any(r.flagged for r in runs):
        handles.append(Line2D([], [], color="grey", marker="x", ls="", label="flagged edit"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)


def plot_edit_metrics(runs: list[RunData], metrics: list[Metric], path: Path) -> Path | None:
    """One panel per per-edit metric: each run's trailing means over the last 5 and 50 edits."""
    metrics = [m for m in metrics if any(np.isfinite(r.scores.get(m.name, np.array([]))).any() for r in runs)]
    if not metrics:
        return None
    colors = _colors(len(runs))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.6), sharex=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        scale = 100.0 if metric.percent else 1.0
        for run, color in zip(runs, colors):
            values = run.scores[metric.name]
            for window, ls in WINDOWS:
                y = scale * trailing_mean(values, window)
                ax.plot(run.edit_idx, y, ls=ls, color=color, lw=1.0 if window == 5 else 1.8,
                        alpha=0.6 if window == 5 else 1.0)
            _mark_flagged(ax, run, run.edit_idx, scale * trailing_mean(values, 50), color)
        ax.set_title(metric.label[:1].upper() + metric.label[1:])
        ax.set_xlabel("number of edits")
        ax.set_ylabel(metric.label + (" (%)" if metric.percent else ""))
        if metric.percent:
            ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    _legend(fig, runs, colors, with_windows=True)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_forgetting(runs: list[RunData], path: Path) -> Path:
    colors = _colors(len(runs))
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    for run, color in zip(runs, colors):
        ax.plot(run.recheck_edits, 100 * run.forgotten, color=color, lw=1.8, label=run.label)
        ax.plot(run.recheck_edits, 100 * run.forgotten_prob, color=color, lw=1.0, ls="--")
        _mark_flagged(ax, run, run.recheck_edits, 100 * run.forgotten, color)
    ax.plot([], [], color="grey", lw=1.8, label=METRICS["forgotten"].label.removesuffix(" %") + " (paper)")
    ax.plot([], [], color="grey", lw=1.0, ls="--", label=METRICS["forgotten_prob"].label.removesuffix(" %"))
    ax.set_title("Earlier edits forgotten")
    ax.set_xlabel("number of edits")
    ax.set_ylabel("% of earlier edits forgotten")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return _finish(fig, path)


def plot_downstream(runs: list[RunData], path: Path) -> Path | None:
    tasks = sorted({t for r in runs for t in r.downstream})
    if not tasks:
        return None
    colors = _colors(len(runs))
    ncols = min(4, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows + 0.6), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for run, color in zip(runs, colors):
            if task in run.downstream:
                x, y = run.downstream[task]
                ax.plot(x, y, color=color, lw=1.8, marker="o", ms=3)
                _mark_flagged(ax, run, x, y, color)
        metric = primary_metric(task)
        ax.set_title(task)
        ax.set_xlabel("number of edits")
        ax.set_ylabel({"f1": "F1", "retention": "share still right"}.get(metric, metric))
        if metric in LOWER_IS_BETTER:  # perplexity: a log scale, so a collapse (x1,000) leaves +5% readable
            ax.set_yscale("log")
        else:  # a fraction
            ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    _legend(fig, runs, colors, with_windows=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _param_label(param: str, layer: int | None) -> str:
    kind = param.rsplit(".", 2)[-2] if param.count(".") >= 2 else param
    return f"layer {layer} ({kind})" if layer is not None else param


def plot_distance(runs: list[RunData], path: Path) -> Path | None:
    runs = [r for r in runs if any(r.distances.get(c) for c in DISTANCES)]
    if not runs:
        return None
    colors = _colors(len(runs))
    fig, axes = plt.subplots(len(DISTANCES), len(runs), figsize=(5.2 * len(runs), 4.0 * len(DISTANCES)),
                             squeeze=False)
    for row, column in enumerate(DISTANCES):
        for ax, run, color in zip(axes[row], runs, colors):
            per = run.distances[column]
            params = sorted(per, key=lambda p: (run.layers.get(p) is None, run.layers.get(p) or 0, p))
            shades = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(params)))
            for param, shade in zip(params, shades):
                x, y = per[param]
                ax.plot(x, y, color=shade if len(params) > 1 else color, lw=1.6,
                        label=_param_label(param, run.layers.get(param)))
                _mark_flagged(ax, run, x, y, color)
            ax.set_title(f"{run.label}: {METRICS[column].label}")
            ax.set_xlabel("number of edits")
            ax.set_ylabel("||W - W_orig||_F / " + ("elements" if column.endswith("element") else "neurons"))
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            ax.grid(alpha=0.3)
            if len(params) <= 8:
                ax.legend(frameon=False, fontsize=8)
    return _finish(fig, path)


def write_plots(runs: list[RunData], out_dir: Path) -> list[Path]:
    """All plots for these runs into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = list(dict.fromkeys(m.plot for m in metrics_at("edit") if m.plot))
    written = [plot_edit_metrics(runs, plotted(g), out_dir / f"{g}.png") for g in groups]
    written += [plot_forgetting(runs, out_dir / "forgetting.png"),
                plot_downstream(runs, out_dir / "downstream.png"),
                plot_distance(runs, out_dir / "distance.png")]
    return [p for p in written if p is not None]
