"""The report of a sweep (``editscale report SWEEP_DIR``): its cells grouped by their values other than the seed
(a method, or a method on a model, ...), each group's curves averaged over its seeds with a min-max band, a
table per group of the final figures with their spread, and links to every cell's own report.

- ``sweep_proficiency.png`` (and one figure per other per-edit plot group): each metric's trailing mean over
  the last 50 edits, per seed; the line is the mean over the seeds, the shaded band their minimum to maximum;
- ``sweep_forgetting.png``: % of earlier edits forgotten at each re-check (the scale paper's definition),
  likewise;
- ``sweep_downstream.png``: downstream F1 per task, likewise.

The band is min-max over seeds (not a standard deviation: with four seeds a standard deviation says little);
the tables give both, with the mean, over the cells that have results.
"""

from __future__ import annotations

import html
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from editscale.errors import RunStateError
from editscale.eval.metrics import METRICS, Metric, metrics_at
from editscale.eval.panel import primary_metric
from editscale.experiment.store import DB_NAME, RunStore
from editscale.experiment.summary import summarize
from editscale.experiment.sweep_status import read_manifest
from editscale.report.html import _table, write_report
from editscale.report.plots import RunData, load_run, plotted, trailing_mean

WINDOW = 50  # trailing mean of the per-edit curves, as the single-run plots' solid lines
BAND = "min-max over seeds"
SUMMARY_ROWS = ("efficacy", "paraphrase", "neighborhood", "score", "forgotten", "forgotten_prob",
                "distance_per_element", "method_seconds_per_edit")


def band(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Per x over the union of the series' x values: the mean, minimum and maximum of the series measured there
    (NaN: left out) and how many there are. Returns ``(x, mean, lo, hi, n)``."""
    xs = np.unique(np.concatenate([np.asarray(x, dtype=float) for x, _ in series])) if series else np.array([])
    grid = np.full((len(series), len(xs)), np.nan)
    for row, (x, y) in zip(grid, series):
        row[np.searchsorted(xs, np.asarray(x, dtype=float))] = y
    n = (~np.isnan(grid)).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an x no series measured: NaN
        return xs, np.nanmean(grid, axis=0), np.nanmin(grid, axis=0), np.nanmax(grid, axis=0), n


def _groups(manifest: dict[str, Any], sweep_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Group label -> the cells with results, in the manifest's order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for cell in manifest["cells"]:
        if (sweep_dir / cell["name"] / DB_NAME).is_file():
            out.setdefault(cell["group"], []).append(cell)
    return out


def _plot_bands(ax, groups: dict[str, list[RunData]], series_of, scale: float, colors) -> None:
    for (label, runs), color in zip(groups.items(), colors):
        series = [s for s in (series_of(r) for r in runs) if s is not None and len(s[0])]
        if not series:
            continue
        x, mean, lo, hi, _ = band(series)
        ax.plot(x, scale * mean, color=color, lw=1.8, label=f"{label} ({len(series)} seeds)")
        if len(series) > 1:
            ax.fill_between(x, scale * lo, scale * hi, color=color, alpha=0.2, lw=0)


def _figure(panels: list[tuple[str, str, Any, float, bool]], groups: dict[str, list[RunData]], path: Path) -> Path:
    """One panel per (title, y label, series_of(run), scale, percent) with every group's mean and band."""
    import matplotlib.pyplot as plt

    from editscale.report.plots import _colors

    colors = _colors(len(groups))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (title, ylabel, series_of, scale, percent) in zip(axes[0], panels):
        _plot_bands(ax, groups, series_of, scale, colors)
        ax.set_title(title)
        ax.set_xlabel("number of edits")
        ax.set_ylabel(ylabel)
        if percent:
            ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    width, height = fig.get_size_inches()
    ncol = max(1, min(len(labels), int(width // 2.2)))  # as many labels a row as the figure's width holds
    rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False,
               title=f"line: mean over seeds; band: {BAND}")
    fig.tight_layout(rect=(0, min(0.5, (0.45 + 0.3 * rows) / height), 1, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _metric_panel(metric: Metric) -> tuple[str, str, Any, float, bool]:
    def series_of(run: RunData):
        values = run.scores.get(metric.name)
        if values is None or not np.isfinite(values).any():
            return None
        return run.edit_idx, trailing_mean(values, WINDOW)

    title = metric.label[:1].upper() + metric.label[1:] + f" (last {WINDOW} edits)"
    return title, metric.label + (" (%)" if metric.percent else ""), series_of, 100.0 if metric.percent else 1.0, \
        metric.percent


def write_sweep_plots(groups: dict[str, list[RunData]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for group in dict.fromkeys(m.plot for m in metrics_at("edit") if m.plot):
        metrics = [m for m in plotted(group)
                   if any(np.isfinite(r.scores.get(m.name, np.array([]))).any() for rs in groups.values() for r in rs)]
        if metrics:
            written.append(_figure([_metric_panel(m) for m in metrics], groups, out / f"sweep_{group}.png"))
    written.append(_figure([("Earlier edits forgotten (the scale paper's definition)", "% forgotten",
                             lambda r: (r.recheck_edits, r.forgotten), 100.0, True)], groups,
                           out / "sweep_forgetting.png"))
    tasks = sorted({t for rs in groups.values() for r in rs for t in r.downstream})
    if tasks:
        written.append(_figure([(task, primary_metric(task), lambda r, t=task: r.downstream.get(t), 1.0, False) for task in tasks],
                               groups, out / "sweep_downstream.png"))
    return written


def spread_rows(summaries: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Per summary figure over the seeds: mean, standard deviation (population), minimum, maximum."""
    rows = []
    for key in SUMMARY_ROWS:
        values = np.array([s[key] for s in summaries if s.get(key) is not None], dtype=float)
        metric = METRICS.get(key)
        if key == "method_seconds_per_edit":
            fmt, label = (lambda v: f"{v:.2f}"), "method s / edit"
        else:
            fmt = metric.format if metric is not None else (lambda v: "-" if v is None else f"{100 * v:.1f}")
            label = metric.label if metric is not None else key
            if (metric is None or metric.percent) and not label.endswith("%"):
                label += " %"
        if not len(values):
            rows.append({"figure": label, "mean": "-", "sd": "-", "min": "-", "max": "-", "seeds": "0"})
            continue
        rows.append({"figure": label,
                     "mean": fmt(float(values.mean())), "sd": fmt(float(values.std())),
                     "min": fmt(float(values.min())), "max": fmt(float(values.max())), "seeds": str(len(values))})
    return rows


def cell_dirs(sweep_dir: str | Path) -> list[Path]:
    """The run directories of the sweep's cells that have results, in the grid's order."""
    sweep = Path(sweep_dir)
    return [sweep / c["name"] for c in read_manifest(sweep)["cells"] if (sweep / c["name"] / DB_NAME).is_file()]


def write_sweep_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Plots, per-group tables and ``report.html`` of the sweep in ``sweep_dir`` (default: SWEEP_DIR/report),
    with every cell's own report under ``cells/CELL``. Returns the HTML file."""
    sweep = Path(sweep_dir)
    manifest = read_manifest(sweep)
    out = Path(out_dir) if out_dir is not None else sweep / "report"
    cells_by_group = _groups(manifest, sweep)
    if not cells_by_group:
        raise RunStateError(f"no cell of the sweep in {sweep} has results yet; run `editscale sweep` first")
    runs = {label: [load_run(sweep / c["name"], c["name"]) for c in cells] for label, cells in cells_by_group.items()}
    images = write_sweep_plots(runs, out)
    tables, links = [], []
    for label, cells in cells_by_group.items():
        summaries = [summarize(sweep / c["name"]) for c in cells]
        tables.append((label, cells, spread_rows(summaries)))
        for c, s in zip(cells, summaries):
            page = write_report([sweep / c["name"]], out / "cells" / c["name"])
            with RunStore.in_dir(sweep / c["name"], readonly=True) as store:
                status = store.meta().get("status", "?")
            links.append({"cell": c["name"], "group": label, "seed": c["config"].get("seed"), "status": status,
                          "edits": f"{s['edits']}/{c['config']['edits']}",
                          "href": os.path.relpath(page, out)})
    missing = [c["name"] for c in manifest["cells"] if not (sweep / c["name"] / DB_NAME).is_file()]
    page = out / "report.html"
    page.write_text(_page(manifest, images, tables, links, missing))
    return page


def _page(manifest: dict[str, Any], images: list[Path], tables, links: list[dict[str, Any]],
          missing: list[str]) -> str:
    grids = manifest["grid"] if isinstance(manifest["grid"], list) else [manifest["grid"]]
    grid = " + ".join("(" + ", ".join(f"{k}: {len(v)} values" for k, v in g.items()) + ")" for g in grids)
    sections = "".join(
        f"<h3>{html.escape(label)}</h3><p>{len(cells)} cell(s): "
        f"{html.escape(', '.join(c['name'] for c in cells))}</p>{_table(rows)}" for label, cells, rows in tables)
    link_rows = "".join(
        f"<tr><td><a href=\"{html.escape(r['href'])}\">{html.escape(r['cell'])}</a></td>"
        f"<td>{html.escape(r['group'])}</td><td>{r['seed']}</td><td>{html.escape(r['status'])}</td>"
        f"<td>{r['edits']}</td></tr>" for r in links)
    figures = "".join(f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"><figcaption>'
                      f"Line: mean over the seeds of each group; shaded band: {BAND}. Per-edit metrics as trailing "
                      f"means over the last {WINDOW} edits.</figcaption></figure>" for p in images)
    note = (f"<p>No results yet for: {html.escape(', '.join(missing))}.</p>" if missing else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>editscale sweep report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th {{ background: #f3f3f3; }}
td:first-child {{ text-align: left; }}
figure {{ margin: 0 0 2em 0; }}
img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9em; }}
</style></head>
<body>
<h1>Sweep report</h1>
<p>Grid {html.escape(grid)} ({len(manifest['cells'])} cells), from {html.escape(str(manifest.get('source')))}.
Cells are grouped by their values other than the seed; each group's curves are the mean over its seeds, with a
band from their minimum to their maximum ({BAND}).</p>
{note}
<h2>Final figures per group</h2>
<p>Over the seeds of each group: per-edit metrics averaged over the last 50 edits of each run, the Score (harmonic
mean of efficacy, paraphrase and neighborhood) and the share of earlier edits forgotten at the last re-check; mean,
standard deviation (sd, over the seeds), minimum and maximum.</p>
{sections}
{figures}
<h2>Single runs</h2>
<table><thead><tr><th>cell</th><th>group</th><th>seed</th><th>status</th><th>edits</th></tr></thead>
<tbody>{link_rows}</tbody></table>
</body></html>
"""
