"""``editscale scaling``: the batch-size curve (MEMIT paper, Figure 5) and the relation breakdown."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json
from editscale.cli.edit import CorpusOpt, SetOpt, StatsDirOpt
from editscale.cli.evaluate import DataOpt, ModelOpt
from editscale.errors import ConfigError

OUT_NAMES = ("scaling*.json", "scaling*.png")


def parse_methods(text: str) -> list[str]:
    """``--methods a,b`` as registered method names (read from the sources: no torch), in order."""
    from editscale.methods.catalog import declared

    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    known = [d.name for d in declared()]
    if not names:
        raise ConfigError(f"--methods: no method given; known: {', '.join(known)}")
    if bad := [m for m in names if m not in known]:
        raise ConfigError(f"--methods: unknown method {bad[0]!r}; known: {', '.join(known)}")
    return names


def split_overrides(sets: list[str] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--set KEY=VALUE`` pairs, each given to every chosen method whose hyperparameters have KEY; a KEY that
    none of them has is a one-line error."""
    from editscale.cli.edit import parse_overrides
    from editscale.methods.base import get_method_class

    overrides = parse_overrides(None, sets)
    fields = {m: set(get_method_class(m).Hparams.model_fields) | {"layer"} for m in methods}
    if bad := [k for k in overrides if not any(k in f for f in fields.values())]:
        raise ConfigError(f"--set {bad[0]}: no hyperparameter of {', '.join(methods)} is called so")
    return {m: {k: v for k, v in overrides.items() if k in fields[m]} for m in methods}


@app.command("scaling")
def scaling_command(
    model: ModelOpt,
    data: DataOpt,
    sizes: Annotated[str, typer.Option("--sizes", help="Comma-separated numbers of edits made at once, e.g. "
                                                       "1,10,100,1000 (the first n records of one sample).")],
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated methods, one line each "
                                                           "(`editscale methods` lists them).")] = "memit,rome,ft-w",
    seed: Annotated[int, typer.Option(help="Seed of the sample and of the context prefixes.")] = 0,
    unique: Annotated[str, typer.Option(help="What no two records of the sample share: subject (the papers: "
                                             "no knowledge conflict) or fact (subject and relation, so "
                                             "several facts of one subject).")] = "subject",
    set_: SetOpt = None,
    corpus: CorpusOpt = None,
    stats_dir: StatsDirOpt = None,
    no_target_cache: Annotated[bool, typer.Option(
        "--no-target-cache", help="Optimise every record's target vector again for each n (slower; for "
                                  "checking the cache).")] = False,
    targets: Annotated[Path | None, typer.Option(
        "--targets", help="A file (SQLite) that keeps every optimised target vector as it is made: the same "
                          "command run again after a stop, or with larger sizes, optimises only what the file "
                          "lacks.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass when scoring.", min=1)] = 64,
    dtype: Annotated[str | None, typer.Option(help="float32, float16 or bfloat16 (default: as saved).")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cpu or cuda:0.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: ./scaling-MODEL).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into --out even where it holds another command's "
                                                         "files or files of the same names.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the tables as Markdown.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object (every point) instead.")] = False,
) -> None:
    """For each method and each n in --sizes, insert the first n records of one seeded sample (distinct
    subjects, or facts with --unique fact) into the unedited model at once, score them (efficacy, paraphrase, neighborhood, edit correct;
    mean +- 1.96 standard errors) and revert.

    Writes scaling.png (the MEMIT paper's Figure 5: a panel per metric and the Score, n on a log axis, a band
    per method) and scaling.json (every point, the relation breakdown, the hyperparameters); prints the points
    and, for the largest n, each relation's scores. Each record's target vector is optimised once for all n.
    """
    from editscale.cache import check_out_dir, staged_output
    from editscale.experiment.scaling import parse_sizes, scaling_sample

    size_list = parse_sizes(sizes)
    method_list = parse_methods(methods)
    out_dir = out or Path(f"scaling-{re.sub(r'[^A-Za-z0-9._-]+', '_', model).strip('_')}")
    check_out_dir(out_dir, "scaling folder", "scaling", names=OUT_NAMES, force=force)  # before the work
    from editscale.methods.base import usable_cases
    from editscale.names import load_cases

    cases = load_cases(data)
    for m in method_list:  # one sample for every line: without any method's own training records (MEND's)
        cases = usable_cases(m, data, cases)
    scaling_sample(cases, size_list, seed, unique)  # too few records: said now, before the model is loaded
    if targets is not None:  # likewise a targets file that is not one
        if no_target_cache:
            raise ConfigError("--targets keeps the target cache's vectors; drop --no-target-cache")
        from editscale.methods.target_cache import TargetCache

        TargetCache(targets).close()
    overrides = split_overrides(set_, method_list)

    import torch

    from editscale.experiment.scaling import scaling_curve, write_json
    from editscale.model.loading import model_device
    from editscale.names import load_model, resolve_corpus_path
    from editscale.report.scaling import plot_scaling, point_line

    lm, tok, _ = load_model(model, dtype=dtype, device=device)
    print(f"editscale scaling: {', '.join(method_list)} x n in {size_list} on {model} ({data}), "
          f"{torch.get_num_threads()} CPU threads", file=sys.stderr)
    result = scaling_curve(lm, tok, cases, size_list, method_list, seed=seed, unique=unique, hparams=overrides,
                           cache_targets=not no_target_cache, targets_file=targets,
                           corpus=resolve_corpus_path(corpus),
                           stats_cache=stats_dir if stats_dir is not None else "default", batch_size=batch_size,
                           on_point=lambda p: print(f"scaling: {point_line(p)}", file=sys.stderr, flush=True))
    result.info = {"model": model, "data": data, "threads": torch.get_num_threads(),
                   "device": str(model_device(lm))}
    with staged_output(out_dir, "scaling") as tmp:
        write_json(result, tmp / "scaling.json")
        plot_scaling(result, tmp / "scaling.png", title=f"{model}: edits made at once")
    files = [str(out_dir / "scaling.png"), str(out_dir / "scaling.json")]
    if json_out:
        print_json({**result.to_dict(), "out": str(out_dir), "files": files})
        return
    _print_tables(result, model, markdown)
    print(f"wrote {', '.join(files)}")


def _print_tables(result, model: str, markdown: bool) -> None:
    from editscale.report.scaling import markdown_table, point_rows, relation_table_rows

    cache = result.target_cache
    lead = (f"{model}: {len(result.case_ids)} records (seed {result.seed}, distinct {result.unique}s), "
            f"{result.info.get('threads')} CPU "
            f"threads, {result.seconds:.1f} s; ")
    lead += (f"target vectors optimised {cache.get('optimised')}, reused {cache.get('served')}"
             if cache.get("enabled") else "target cache off")
    points, relations = point_rows(result), relation_table_rows(result)
    rel_title = f"by relation at n = {max(result.sizes)} (%)"
    if markdown:
        print(lead + "\n\nscores (%, ± half the 95% interval)\n\n" + markdown_table(points) + f"\n\n{rel_title}\n\n"
              + markdown_table(relations))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    console.print(lead)
    for title, rows in (("scores (%, ± half the 95% interval)", points), (rel_title, relations)):
        table = Table(title=title)
        for col in rows[0]:
            table.add_column(col, justify="left" if col in ("line", "relation") else "right")
        for r in rows:
            table.add_row(*r.values())
        console.print(table)
