"""The report of one or more runs: the PNG plots and one self-contained HTML page with a summary table."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from editscale.errors import RunInUseError, RunStateError
from editscale.eval.metrics import METRICS, metrics_at
from editscale.eval.panel import KNOWN_FACTS, PERPLEXITY, primary_metric
from editscale.experiment.rundir import check_free
from editscale.experiment.store import DB_NAME, RunStore
from editscale.experiment.summary import summarize
from editscale.report.limits import limit_row
from editscale.report.plots import RunData, load_run, write_plots

_CAPTIONS = {
    "proficiency.png": "Efficacy, paraphrase and neighborhood of each new edit, averaged over the last 5 edits "
                       "(dotted) and the last 50 (solid). Crosses: flagged (possibly disabling) edits.",
    "generation.png": "Without teacher forcing: whether the greedy continuation of the edit prompt (and of the "
                      "paraphrases) begins with the new object; generation entropy and reference score of "
                      "sampled texts. Last 5 edits dotted, last 50 solid.",
    "forgetting.png": "Percentage of earlier edits forgotten at each re-check. Solid: the scale paper's definition "
                      "(of the edits whose new target was all argmax when made, the share that failed at any "
                      "re-check since). Dashed: of the earlier edits with P(new) > P(true) when made, the share "
                      "failing it now.",
    "downstream.png": "Downstream F1 per task (edits = 0: the unedited model).",
    "distance.png": "Distance of each edited matrix from its original weights: Frobenius norm of W - W_orig over "
                    "the number of elements (top; the scale paper's code and Table 2) and over the layer's "
                    "neurons (bottom; its text).",
}


def _num(v: float | None, digits: int = 3, scale: float = 1.0) -> str:
    """``scale * v`` to ``digits`` decimals; "-" for a missing value (None or NaN)."""
    return "-" if v is None or math.isnan(v) else f"{scale * v:.{digits}f}"


def _pct(v: float | None) -> str:
    return _num(v, 1, 100.0)


# Pre-edit Matthews correlation below this: the unedited model is at chance on the task, so a later change of
# its F1 is noise, not lost ability (balanced binary tasks: MCC 0 is chance, 1 perfect).
CHANCE_MCC = 0.2


def _f1_changes(run: RunData) -> list[tuple[str, int, float, int, float, float | None]]:
    """Per task evaluated at least once: (task, edits at its first and last evaluation with their F1, and the
    unedited model's MCC), what the downstream table and the skill change both read."""
    return [(task, int(n[0]), f1[0], int(n[-1]), f1[-1], run.unedited_mcc.get(task))
            for task, (n, f1) in run.downstream.items() if len(f1) and primary_metric(task) == "f1"]


def probe_changes(run: RunData) -> dict[str, str]:
    """The general-ability probes from the unedited model to the last evaluation: perplexity's relative change
    and the share of known facts still right (``-`` where a probe was not evaluated before and after edits)."""
    out = {"perplexity change": "-", "known facts kept": "-"}
    ppl, known = run.downstream.get(PERPLEXITY), run.downstream.get(KNOWN_FACTS)
    if ppl is not None and len(ppl[1]) > 1 and ppl[0][0] == 0:
        out["perplexity change"] = f"{100 * (ppl[1][-1] / ppl[1][0] - 1):+.1f}%"
    if known is not None and len(known[1]) > 1 and known[0][0] == 0:
        out["known facts kept"] = f"{100 * known[1][-1]:.1f}"
    return out


def skill_f1_change(run: RunData) -> tuple[float, str | None, float]:
    """Downstream F1 from the unedited model to the last evaluation: the mean change over the tasks the unedited
    model is not at chance on (MCC at least ``CHANCE_MCC``), and the task that lost most with its change
    (NaN, None, NaN: no such task evaluated twice)."""
    changes = {task: last - first for task, n0, first, n1, last, mcc0 in _f1_changes(run)
               if n0 == 0 and n1 > 0 and mcc0 is not None and mcc0 >= CHANCE_MCC}
    if not changes:
        return float("nan"), None, float("nan")
    worst = min(changes, key=changes.__getitem__)
    return sum(changes.values()) / len(changes), worst, changes[worst]


def run_status(run_dir: Path, stored: str) -> str:
    """A run's status: the stored one, except that a run stored as running that no process holds was stopped
    (killed, or its store copied elsewhere): ``interrupted``, as ``editscale sweep --status`` says."""
    if stored != "running":
        return stored
    try:
        check_free(run_dir)
    except RunInUseError:
        return "running"
    return "interrupted"


def run_summary_row(run_dir: Path, run: RunData) -> dict[str, Any]:
    """One row of the summary table: the run, and every summarised metric as its declaration formats it."""
    s = summarize(run_dir)
    label = run.label
    with RunStore.in_dir(run_dir, readonly=True) as store:
        meta = store.meta()
        seconds = store.update_totals()["seconds"]
    skill, worst, worst_change = skill_f1_change(run)
    cfg = meta["config"]
    row: dict[str, Any] = {"run": label, "directory": str(run_dir), "method": cfg["method"]["name"],
                           "model": cfg["model"], "status": run_status(run_dir, meta.get("status", "?")),
                           "edits": s["edits"]}
    for m in metrics_at("edit"):
        if m.summary:
            row[m.label] = m.format(s.get(m.name))
    row["score"] = _pct(s["score"])
    for key in ("forgotten", "forgotten_prob"):
        row[METRICS[key].label] = METRICS[key].format(s[key])
    row.update({"first flagged edit": str(s["flagged"][0]) if s["flagged"] else "-",
                "flagged": str(len(s["flagged"])), "refused": str(len(s["refused"])),
                "skill F1 change": "-" if math.isnan(skill) else f"{skill:+.3f} (worst: {worst} {worst_change:+.3f})",
                **probe_changes(run),
                METRICS["distance_per_element"].label: METRICS["distance_per_element"].format(
                    s["distance_per_element"]),
                "method s / edit": _num(s["method_seconds_per_edit"], 2),
                "editing time": f"{seconds / 60:.1f} min", "threads": str(meta.get("threads", "?"))})
    return row


def downstream_rows(run: RunData) -> list[dict[str, str]]:
    """Per task: its metric (F1 then MCC; perplexity; retention then the known facts' mean margin) of
    the unedited model, at the last evaluation, the change, and a note when the unedited model was at chance (its
    MCC below ``CHANCE_MCC``)."""
    out = []
    series = []
    for task, (n, y) in run.downstream.items():  # each task's primary metric, then its secondary one
        series.append((task, primary_metric(task), n, y, True))
        if task in run.secondary:
            series.append((task, *run.secondary[task], False))
    for task, metric, n, y, primary in series:
        if not len(y):
            continue
        n0, first, n1, last, mcc0 = int(n[0]), y[0], int(n[-1]), y[-1], run.unedited_mcc.get(task)
        out.append({
            "run": run.label, "task": task, "metric": metric,
            "unedited": _num(first) if n0 == 0 else f"{_num(first)} ({n0} edits)",
            "last": f"{_num(last)} ({n1} edits)",
            "change": "-" if math.isnan(first) or math.isnan(last) else f"{last - first:+.3f}",
            "note": f"unedited model at chance (MCC {mcc0:.2f}): a change is noise, not lost ability"
                    if primary and mcc0 is not None and mcc0 < CHANCE_MCC else "",
        })
    return out


def _labels(run_dirs: list[Path]) -> list[str]:
    """Method names, made unique with the directory name where two runs share a method."""
    methods = []
    for d in run_dirs:
        with RunStore.in_dir(d, readonly=True) as store:
            methods.append(store.meta()["config"]["method"]["name"])
    return [m if methods.count(m) == 1 else f"{m} ({d.name})" for m, d in zip(methods, run_dirs)]


def expand_run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories from what a user names: a run directory as it is, a folder of run directories (the
    demo's, a sweep's cells) as its runs in name order."""
    out: list[Path] = []
    for p in map(Path, paths):
        inner = sorted(d for d in p.iterdir() if (d / DB_NAME).is_file()) if p.is_dir() and not (p / DB_NAME).exists() \
            else []
        out.extend(inner or [p])
    return out


def default_report_dir(given: list[Path], runs: list[Path]) -> Path:
    """RUN_DIR/report for one run (or a sweep), FOLDER/report for one folder of runs, else beside the first."""
    if len(given) == 1:
        return Path(given[0]) / "report"
    return Path(runs[0]).parent / "report"


MARKDOWN_SKIP = ("directory", "model")  # the table's columns a document leaves out (the page names them)


def _loaded(run_dirs: list[Path]) -> list[tuple[Path, RunData]]:
    dirs = [Path(d) for d in run_dirs]
    return [(d, load_run(d, label)) for d, label in zip(dirs, _labels(dirs))]


def summary_rows(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """The report's summary rows of these runs (labels made unique as the report makes them)."""
    return [run_summary_row(d, run) for d, run in _loaded(run_dirs)]


def _markdown(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(run_dirs: list[Path]) -> str:
    """What ``editscale report --markdown`` prints: the report's summary table, then where each run first
    crossed each bound (``report.limits``), as Markdown."""
    loaded = _loaded(run_dirs)
    rows = [run_summary_row(d, run) for d, run in loaded]
    cols = [c for c in rows[0] if c not in MARKDOWN_SKIP and (c in HEADLINE[:2] or any(
        str(r.get(c, "-")) not in ("-", "") for r in rows))]  # columns nothing was measured for are left out
    limits = [limit_row(run) for _, run in loaded]
    return f"{_markdown(rows, cols)}\n\n{LIMITS_LEAD}\n\n{_markdown(limits, list(limits[0]))}"


def write_report(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> Path:
    """Plots and ``report.html`` for these runs into ``out_dir`` (default: RUN_DIR/report for one run, else
    a ``report`` folder beside the first run). Returns the HTML file."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise RunStateError("no run directories given")
    for d in dirs:
        if not (d / DB_NAME).is_file():
            raise RunStateError(f"{d} is not a run directory (no {DB_NAME}); start one with `editscale run`")
    out = Path(out_dir) if out_dir is not None else (dirs[0] / "report" if len(dirs) == 1
                                                     else dirs[0].parent / "report")
    labels = _labels(dirs)
    runs = [load_run(d, label) for d, label in zip(dirs, labels)]
    images = write_plots(runs, out)
    rows = [run_summary_row(d, run) for d, run in zip(dirs, runs)]
    flagged = {label: flagged_rows(d) for d, label in zip(dirs, labels)}
    downstream = [r for run in runs for r in downstream_rows(run)]
    limits = [limit_row(run) for run in runs]
    page = out / "report.html"
    page.write_text(_page(rows, images, flagged, downstream, limits))
    return page


def flagged_rows(run_dir: Path, limit: int = 30) -> list[tuple[int, str, str]]:
    """The first flagged updates of a run: (edit, rules that fired, whether the guard refused it)."""
    with RunStore.in_dir(run_dir, readonly=True) as store:
        rows = store.flag_rows(limit)
    return [(e, rules, "refused" if refused else "kept") for e, rules, refused in rows]


def _flagged_section(flagged: dict[str, list[tuple[int, str, str]]]) -> str:
    parts = []
    for label, rows in flagged.items():
        if not rows:
            continue
        body = "".join(f"<tr><td>{e}</td><td>{html.escape(r)}</td><td>{k}</td></tr>" for e, r, k in rows)
        parts.append(f"<h3>{html.escape(label)}</h3><table><thead><tr><th>edit</th><th>rules that fired"
                     f"</th><th>update</th></tr></thead><tbody>{body}</tbody></table>")
    if not parts:
        return ""
    return ("<h2>Flagged edits</h2><p>Possible disabling edits; <code>editscale single-edit-test RUN_DIR</code> "
            "re-applies them alone to the unedited model.</p>" + "".join(parts))


# the summary table's columns in reading order: the headline (forgetting, ability lost, drift) before the
# per-edit scores; the directory is the run cell's tooltip, not a column
HEADLINE = ("run", "edits", "forgotten %", "skill F1 change", "perplexity change", "known facts kept",
            "distance / element", "flagged", "first flagged edit")
OFF_PAGE = ("directory", "model", "method", "status")


MAIN = ("efficacy", "edit correct", "paraphrase", "neighborhood", "score", "method s / edit")


def _summary_table(rows: list[dict[str, Any]], details: bool = False) -> str:
    """The summary table (the headline and the main per-edit scores, within a page's width), or with ``details``
    the run's other measurements."""
    shown = HEADLINE + MAIN
    cols = ([c for c in shown if c in rows[0]] if not details
            else ["run"] + [c for c in rows[0] if c not in shown and c not in OFF_PAGE])
    cols = [c for c in cols if c in HEADLINE[:2] or any(str(r.get(c, "-")) not in ("-", "") for r in rows)]
    if details and len(cols) == 1:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f'<td title="{html.escape(str(r.get("directory", "")))}">{html.escape(str(r[c]))}</td>'
                         if c == "run" else f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>"
        for r in rows)
    kind = "details" if details else "summary"
    return f'<div class="wide"><table class="{kind}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _downstream_section(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    return ("<h2>Downstream</h2><p>Each task's measure for the unedited model and at the last evaluation: few-shot "
            "F1 and Matthews correlation (F1 of the positive class rewards answering one label, about 0.67 on a "
            "balanced task, where MCC is 0 at chance), perplexity on held-out text (lower is better), the share of "
            "known facts still right and their "
            "mean margin (nats by which the right tokens beat the best other: facts lost while it holds are "
            "near-ties flipping, facts lost as it falls are every fact weakening). A few-shot task the unedited "
            "model is at chance on cannot show lost ability.</p>" + _table(rows))


LIMITS_LEAD = ("Where each run first left the bounds of editing without damage (efficacy over the trailing 100 "
               "edits, the paper's forgetting at each re-check, the panel's perplexity and known facts against the "
               "unedited model's): \"crossed at N (held at M)\" brackets the crossing by the measurements around "
               "it, \"held to N\" is the last measurement, all within the bound.")


def _page(rows: list[dict[str, Any]], images: list[Path], flagged: dict[str, list[tuple[int, str, str]]],
          downstream: list[dict[str, str]], limits: list[dict[str, str]]) -> str:
    figures = "".join(
        f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
        f"<figcaption>{html.escape(_CAPTIONS.get(p.name, ''))}</figcaption></figure>" for p in images)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>editscale report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 5px; text-align: right; }}
th {{ background: #f3f3f3; font-weight: 600; max-width: 6em; overflow-wrap: anywhere; }}
td:first-child {{ text-align: left; }}
.wide {{ max-width: 100%; overflow-x: auto; }}
table.summary td {{ white-space: nowrap; }}
table.summary td:first-child, table.summary td:nth-child(4) {{ white-space: normal; max-width: 11em; }}
figure {{ margin: 0 0 2em 0; }}
img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9em; }}
</style></head>
<body>
<h1>Sequential editing report</h1>
{_summary_table(rows)}
<p>Per-edit metrics are averaged over the last 50 edits (percentages, except entropy in bits and the reference
score, a cosine); score is their harmonic mean of efficacy, paraphrase and neighborhood. "forgotten %" is the
scale paper's forgetting at the last re-check (of the edits whose new target was all argmax when made, the share
that failed at a re-check since); "forgotten (P) %" is the share of earlier edits with P(new) &gt; P(true) when made
that fail it now. "skill F1 change" is the mean change of downstream F1 from the unedited model to the last
evaluation over the tasks the unedited model is not at chance on (MCC at least 0.2), with the task that lost most;
"distance / element" the edited weights' final distance from the original over every edited matrix (square root
of the summed squared Frobenius norms over their summed elements); "method s / edit" the method's own compute
time per edit (no scoring, re-checks or downstream). Flagged edits are possible disabling edits (see the events
table in each run's results.sqlite). A run's directory is its name's tooltip.</p>
{_summary_table(rows, details=True)}
<h2>Bounds</h2><p>{html.escape(LIMITS_LEAD)}</p>
{_table(limits)}
{_downstream_section(downstream)}
{figures}
{_flagged_section(flagged)}
</body></html>
"""
