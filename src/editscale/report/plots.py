"""Plots of sequential-editing runs in the style of Gupta et al. 2024, several runs overlaid (matplotlib Agg).

- ``proficiency.png`` (Figure 1a-c): efficacy, paraphrase and neighborhood of each new edit against the number
  of edits, averaged over the last 5 edits (dotted) and the last 50 (solid);
- ``forgetting.png`` (Figure 1d): % of earlier successful edits forgotten at each re-check;
- ``downstream.png`` (Figure 2a-c): downstream F1 per task;
- ``distance.png`` (Figure 2d): normalized distance of every edited matrix from its original, one panel per run.

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

from editscale.experiment.store import RunStore

PROFICIENCY = ("efficacy", "paraphrase", "neighborhood")
WINDOWS = ((5, ":"), (50, "-"))


@dataclass
class RunData:
    """What the plots need from one run, read from its database."""

    label: str
    edit_idx: np.ndarray
    scores: dict[str, np.ndarray]  # metric -> per edit (NaN where not measured)
    recheck_edits: np.ndarray
    forgotten_pct: np.ndarray
    downstream: dict[str, tuple[np.ndarray, np.ndarray]]  # task -> (n_edits, f1)
    distances: dict[str, tuple[np.ndarray, np.ndarray]]  # param -> (n_edits, normalized distance)
    layers: dict[str, int | None] = field(default_factory=dict)
    flagged: list[int] = field(default_factory=list)  # edit numbers of flagged updates
    unedited_mcc: dict[str, float] = field(default_factory=dict)  # task -> Matthews correlation before editing


def load_run(run_dir: str | Path, label: str | None = None) -> RunData:
    with RunStore.in_dir(run_dir) as store:
        meta = store.meta()
        cols = ", ".join(PROFICIENCY)
        rows = store.rows(f"SELECT edit_idx, {cols} FROM edits ORDER BY edit_idx")
        arr = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float).reshape(-1, 4)
        rc = np.array(store.rows("SELECT n_edits, forgotten_pct FROM rechecks WHERE forgotten_pct IS NOT NULL "
                                 "ORDER BY update_idx"), dtype=float).reshape(-1, 2)
        down: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for task, n, v in store.rows("SELECT task, n_edits, value FROM downstream WHERE metric = 'f1' "
                                     "ORDER BY update_idx"):
            down[task].append((n, np.nan if v is None else v))
        mcc0 = {task: v for task, v in store.rows("SELECT task, value FROM downstream WHERE metric = 'mcc' "
                                                   "AND update_idx = 0 AND value IS NOT NULL")}
        dist: dict[str, list[tuple[int, float]]] = defaultdict(list)
        layers: dict[str, int | None] = {}
        for param, layer, n, v in store.rows(
                "SELECT d.param, d.layer, u.n_edits, d.normalized FROM distances d "
                "JOIN updates u ON u.update_idx = d.update_idx ORDER BY d.update_idx"):
            dist[param].append((n, v))
            layers[param] = layer
        flagged = [r[0] for r in store.rows(
            "SELECT DISTINCT edit_idx FROM events WHERE kind = 'flagged' ORDER BY edit_idx")]
    return RunData(
        label=label or meta["config"]["method"]["name"], edit_idx=arr[:, 0],
        scores={m: arr[:, i + 1] for i, m in enumerate(PROFICIENCY)},
        recheck_edits=rc[:, 0], forgotten_pct=rc[:, 1],
        downstream={t: (np.array([p[0] for p in v]), np.array([p[1] for p in v])) for t, v in down.items()},
        distances={p: (np.array([x[0] for x in v]), np.array([x[1] for x in v])) for p, v in dist.items()},
        layers=layers, flagged=flagged, unedited_mcc=mcc0)


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


def plot_proficiency(runs: list[RunData], path: Path) -> Path:
    colors = _colors(len(runs))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharex=True)
    for ax, metric in zip(axes, PROFICIENCY):
        for run, color in zip(runs, colors):
            for window, ls in WINDOWS:
                y = 100 * trailing_mean(run.scores[metric], window)
                ax.plot(run.edit_idx, y, ls=ls, color=color, lw=1.0 if window == 5 else 1.8,
                        alpha=0.6 if window == 5 else 1.0)
            _mark_flagged(ax, run, run.edit_idx, 100 * trailing_mean(run.scores[metric], 50), color)
        ax.set_title(f"{metric.capitalize()} score")
        ax.set_xlabel("number of edits")
        ax.set_ylabel(f"{metric} (%)")
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
        ax.plot(run.recheck_edits, run.forgotten_pct, color=color, lw=1.8, label=run.label)
        _mark_flagged(ax, run, run.recheck_edits, run.forgotten_pct, color)
    ax.set_title("Earlier edits forgotten")
    ax.set_xlabel("number of edits")
    ax.set_ylabel("% of earlier successful edits forgotten")
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
        ax.set_title(task)
        ax.set_xlabel("number of edits")
        ax.set_ylabel("F1")
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
    runs = [r for r in runs if r.distances]
    if not runs:
        return None
    colors = _colors(len(runs))
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.4), squeeze=False)
    for ax, run, color in zip(axes[0], runs, colors):
        params = sorted(run.distances, key=lambda p: (run.layers.get(p) is None, run.layers.get(p) or 0, p))
        shades = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(params)))
        for param, shade in zip(params, shades):
            x, y = run.distances[param]
            ax.plot(x, y, color=shade if len(params) > 1 else color, lw=1.6,
                    label=_param_label(param, run.layers.get(param)))
            _mark_flagged(ax, run, x, y, color)
        ax.set_title(f"{run.label}: distance from original")
        ax.set_xlabel("number of edits")
        ax.set_ylabel("||W - W_orig||_F / neurons")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
    return _finish(fig, path)


def write_plots(runs: list[RunData], out_dir: Path) -> list[Path]:
    """All plots for these runs into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_proficiency(runs, out_dir / "proficiency.png"),
               plot_forgetting(runs, out_dir / "forgetting.png"),
               plot_downstream(runs, out_dir / "downstream.png"),
               plot_distance(runs, out_dir / "distance.png")]
    return [p for p in written if p is not None]
