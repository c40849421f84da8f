"""Methods side by side at scale: one markdown row per finished (or partial) run directory, with the scale
paper's metrics (issue 17's table).

    python bench/side_by_side.py RUN_DIR [RUN_DIR ...]

Columns: edits made; efficacy, paraphrase and neighborhood over the last 50 edits (CounterFact's comparisons,
%); earlier edits forgotten at the last re-check (the scale paper's definition, and P(new) > P(true)); the
skill F1 change from the unedited model to the last downstream evaluation (mean over the tasks, and the worst
task; tasks the unedited model is at chance on, MCC below the report's 0.2, are left out: their change is noise); the distance of the edited weights from the original at the end (Frobenius norm over elements, the root
of the summed squares over every edited matrix divided by their summed elements); flagged edits; seconds per
edit (the method's compute, and wall time of the whole run including scoring, re-checks and downstream) and
the threads the run used.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def row(run_dir: Path) -> dict:
    from editscale.experiment.runner import summarize
    from editscale.experiment.store import RunStore
    from editscale.report.html import skill_f1_change
    from editscale.report.plots import load_run

    s = summarize(run_dir)
    with RunStore.in_dir(run_dir, readonly=True) as store:
        meta = store.meta()
        totals = store.update_totals()
    skill, worst, worst_change = skill_f1_change(load_run(run_dir))
    n = max(s["edits"], 1)
    return {
        "run": run_dir.name, "method": meta["config"]["method"]["name"], "edits": s["edits"],
        "efficacy": s.get("efficacy"), "paraphrase": s.get("paraphrase"), "neighborhood": s.get("neighborhood"),
        "forgotten": s["forgotten"], "forgotten_prob": s["forgotten_prob"],
        "f1_change": None if worst is None else skill, "f1_worst": None if worst is None else (worst, worst_change),
        "distance": s["distance_per_element"], "flagged": len(s["flagged"]),
        "s_edit": s["method_seconds_per_edit"] or 0.0,
        "wall_edit": (totals["seconds"] + totals["recheck_seconds"]) / n, "threads": s["threads"],
    }


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    print("| run | edits | efficacy | paraphrase | neighborhood | forgotten % (paper / P) | skill F1 change "
          "(mean; worst) | distance / element | flagged | s / edit (compute; run) | threads |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for d in args.runs:
        r = row(d)
        worst = "-" if r["f1_worst"] is None else f"{r['f1_worst'][0]} {r['f1_worst'][1]:+.3f}"
        mean = "-" if r["f1_change"] is None else f"{r['f1_change']:+.3f}"
        print(f"| {r['run']} ({r['method']}) | {r['edits']} | {pct(r['efficacy'])} | {pct(r['paraphrase'])} | "
              f"{pct(r['neighborhood'])} | {pct(r['forgotten'])} / {pct(r['forgotten_prob'])} | {mean}; {worst} | "
              f"{r['distance']:.2e} | {r['flagged']} | {r['s_edit']:.2f}; {r['wall_edit']:.2f} | {r['threads']} |")


if __name__ == "__main__":
    main()
