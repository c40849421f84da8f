"""Write one results page from run directories: its table is what `editscale report RUN... --markdown` prints,
its figures the report's own, beside the commands and config that made the runs and the machine and threads
they ran on. Pages are never edited by hand: run this again.

    python docs/results/make_page.py PAGE --title T --about TEXT --command CMD [--command CMD ...] \
        --machine TEXT RUN_DIR [RUN_DIR ...]
    python docs/results/make_page.py PAGE ... --eval RESULT.json [--eval RESULT.json ...]
    python docs/results/make_page.py PAGE ... --scaling SCALING_DIR [--scaling SCALING_DIR ...]

PAGE is the page's name (docs/results/PAGE.md; its figures go to docs/results/PAGE/). With ``--eval``, the
table is the single-edit protocol's: one row per `editscale eval --method M --json` result file, and the
unedited model's row from the first. With ``--scaling``, the tables are those `editscale scaling --markdown`
prints, from the folder's scaling.json, and its scaling.png and scaling.json are copied beside the page.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIGURES = ("forgetting.png", "proficiency.png", "downstream.png", "distance.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("page")
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--eval", action="append", default=[],
                    help="an `editscale eval --json` result, or LABEL=FILE to name its row (default: the method)")
    ap.add_argument("--scaling", action="append", type=Path, default=[],
                    help="an `editscale scaling` output folder (several: a section each, named by the folder)")
    ap.add_argument("--figure", action="append", type=Path, default=[],
                    help="a figure a command wrote (e.g. trace_mlp.png), copied beside the page and shown")
    ap.add_argument("--title", required=True)
    ap.add_argument("--about", required=True, help="what the study is and what to read in it (markdown)")
    ap.add_argument("--command", action="append", required=True, help="a command that made the runs")
    ap.add_argument("--machine", required=True, help="the machine, the threads, and what else ran")
    ap.add_argument("--notes", default="", help="what the table shows (markdown), written after it")
    args = ap.parse_args()

    if args.eval:
        write(args, eval_table(args.eval), copy_figures(args.figure, HERE / args.page), [])
        return
    if args.scaling:
        names = ["scaling"] if len(args.scaling) == 1 else [folder.name for folder in args.scaling]
        tables = [scaling_tables(folder, HERE / args.page, name) for folder, name in zip(args.scaling, names)]
        if len(names) > 1:
            tables = [f"### {name}\n\n{table}" for name, table in zip(names, tables)]
        shown = [f"{name}.png" for name in names] + copy_figures(args.figure, HERE / args.page)
        write(args, "\n\n".join(tables), shown, [])
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["editscale", "report", *map(str, args.runs), "--out", f"{tmp}/report", "--markdown"],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(out.stderr.strip())
        table = "\n".join(line for line in out.stdout.splitlines() if not line.startswith("report: ")).strip()
        figures = HERE / args.page  # also holds what the page was made from (stores, result files): kept
        figures.mkdir(exist_ok=True)
        for old in figures.glob("*.png"):
            old.unlink()
        shown = []
        for name in FIGURES:
            if (Path(tmp) / "report" / name).is_file():
                shutil.copy(Path(tmp) / "report" / name, figures / name)
                shown.append(name)
    write(args, table, shown, [f"editscale report {' '.join(str(r) for r in args.runs)} --markdown"])


def copy_figures(paths: list[Path], folder: Path) -> list[str]:
    """Copy each figure into the page's folder; their names, to show."""
    if paths:
        folder.mkdir(exist_ok=True)
    for p in paths:
        shutil.copy(p, folder / p.name)
    return [p.name for p in paths]


def scaling_tables(folder: Path, figures: Path, name: str = "scaling") -> str:
    """The scaling command's tables (points, relations at the largest n) from ``folder/scaling.json``; its
    figure and result file copied into ``figures`` as NAME.png and NAME.json."""
    import json

    from editscale.experiment.scaling import ScalingResult
    from editscale.report.scaling import markdown_table, point_rows, relation_table_rows

    result = ScalingResult.from_dict(json.loads((folder / "scaling.json").read_text()))
    figures.mkdir(exist_ok=True)
    for suffix in (".png", ".json"):
        shutil.copy(folder / f"scaling{suffix}", figures / f"{name}{suffix}")
    cache = result.target_cache
    lead = (f"{len(result.case_ids)} records (seed {result.seed}, distinct {result.unique}s), "
            f"{result.info.get('threads')} CPU threads, {_took(result.seconds)}; target vectors optimised "
            f"{cache.get('optimised')}, reused {cache.get('served')}.")
    return (f"{lead}\n\nScores (%, ± half the 95% interval):\n\n{markdown_table(point_rows(result))}\n\n"
            f"By relation at n = {max(result.sizes)} (%):\n\n{markdown_table(relation_table_rows(result))}")


def _took(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.0f} min"


EVAL_COLUMNS = ("efficacy", "paraphrase", "neighborhood", "efficacy_correct")


def eval_table(paths: list[str]) -> str:
    """The single-edit protocol's table: per result, its post-edit scores (%); the unedited model's first."""
    import json

    labelled = [str(p).split("=", 1) if "=" in str(p) else [None, str(p)] for p in paths]
    results = [{**json.loads(Path(path).read_text()), **({"method": label} if label else {})}
               for label, path in labelled]
    lines = ["| method | records per edit | n | " + " | ".join(EVAL_COLUMNS) + " |", "|" + "---|" * (3 + len(EVAL_COLUMNS))]
    pre = results[0]["pre"]
    lines.append(f"| unedited | - | {pre['n']} | " + " | ".join(_pct(pre.get(c)) for c in EVAL_COLUMNS) + " |")
    for r in results:
        lines.append(f"| {r['method']} | {r['batch']} | {r['post']['n']} | "
                     + " | ".join(_pct(r["post"].get(c)) for c in EVAL_COLUMNS) + " |")
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def write(args, table: str, shown: list[str], extra_commands: list[str]) -> None:
    commands = "\n".join([*args.command, *extra_commands])
    page = f"""# {args.title}

{args.about}

```bash
{commands}
```

Machine: {args.machine}. Page written {date.today().isoformat()} by `python docs/results/make_page.py`.

{table}

{args.notes}

""" + "\n".join(f"![{n[:-4]}]({args.page}/{n})" for n in shown) + "\n"
    (HERE / f"{args.page}.md").write_text(page)
    print(HERE / f"{args.page}.md")


if __name__ == "__main__":
    main()
