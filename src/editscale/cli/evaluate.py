"""``editscale eval``: CounterFact-style scores of a model on edit records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json, print_scores
from editscale.cli.edit import CorpusOpt, HparamsOpt, SeedOpt, SetOpt, StatsDirOpt, load_edit_cases
from editscale.methods.catalog import method_help

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="testbed:tiny, testbed:demo, smollm2-135m, "
                                                               "gemma-3-270m (editscale models), a .gguf file, a "
                                                               "local model directory, or a Hugging Face hub name.")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="A records file (CounterFact, EasyEdit, zsRE or "
                                                             "editscale JSON/JSONL) or testbed:NAME.")]


def parse_metrics(text: str | None) -> tuple[str, ...] | None:
    """``--metrics a,b`` as declared metric names (a one-line error naming an unknown one); None: all."""
    if text is None:
        return None
    from editscale.errors import ConfigError
    from editscale.eval.metrics import edit_metric_names

    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    known = edit_metric_names()
    if not names or (bad := [m for m in names if m not in known]):
        what = f"unknown per-edit metric {bad[0]!r}" if names else "no metric given"
        raise ConfigError(f"--metrics: {what}; known: {', '.join(known)}")
    return names


@app.command("eval")
def eval_command(
    model: ModelOpt,
    data: DataOpt,
    limit: Annotated[int | None, typer.Option(help="Use only the first N records.", min=1)] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.", min=1)] = 64,
    dtype: Annotated[str | None, typer.Option(help="float32, float16 or bfloat16 (default: as saved).")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cpu or cuda:0.")] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Leave out malformed records instead of stopping.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    method: Annotated[str | None, typer.Option(help=method_help("Also edit: each record (or batch) with this "
                                                                 "method on the unedited model, scored, then "
                                                                 "reverted."))] = None,
    batch: Annotated[int, typer.Option(help="With --method: records per edit (MEMIT: one batched edit).",
                                       min=1)] = 1,
    hparams: HparamsOpt = None,
    set_: SetOpt = None,
    corpus: CorpusOpt = None,
    stats_dir: StatsDirOpt = None,
    seed: SeedOpt = 0,
    metrics: Annotated[str | None, typer.Option(
        help="Comma-separated per-edit metrics to score (default: all; e.g. efficacy,paraphrase,neighborhood "
             "leaves out the sampled generations, the slow part on a real model).")] = None,
    save: Annotated[Path | None, typer.Option(
        help="With --method: keep each edit's scores in this file as they are measured; the same command run "
             "again continues after the last saved edit (a file of another model, records or settings is "
             "refused).")] = None,
) -> None:
    """Efficacy, paraphrase and neighborhood scores of MODEL on the records in DATA.

    Without --method, of the unedited model. With --method, the papers' single-edit protocol: each record
    (or each batch of --batch records) is edited into the unedited model, scored and reverted; the pre- and
    post-edit scores are printed.
    """
    from editscale.eval.counterfact import evaluate_cases
    from editscale.names import load_model

    chosen = parse_metrics(metrics)
    if save is not None and method is None:
        from editscale.errors import ConfigError

        raise ConfigError("--save keeps the scores of edits: give --method (the unedited model's scores take "
                          "one pass and need no saving)")
    if save is not None:  # before the model loads: a place that cannot hold the file is one line, not a traceback
        from editscale.experiment.score_log import check_save_file

        check_save_file(save)
    cases = load_edit_cases(method, data, limit, skip_invalid)  # without MEND's training records
    lm, tok, _ = load_model(model, dtype=dtype, device=device)
    if method is not None:
        from editscale.api import evaluate_edits
        from editscale.cli.edit import make_editor

        editor = make_editor(lm, tok, method, hparams, set_, corpus, stats_dir, seed)
        result = evaluate_edits(editor, cases, batch=batch, batch_size=batch_size, metrics=chosen, save=save)
        if json_out:  # with the resolved hyperparameters: a saved result says what produced it
            print_json({**{k: result[k] for k in ("method", "n", "pre", "post")}, "batch": batch,
                        "hparams": editor.hparams.model_dump(mode="json")})
        else:
            print_scores(f"{model} on {data}: {method}, {batch} record(s) per edit, each from the unedited model",
                         {"unedited": result["pre"], method: result["post"]})
        return
    from editscale.eval.lengths import check_cases_fit

    check_cases_fit(lm, tok, cases)  # where records meet the model, once (not in every evaluation a run makes)
    summary = evaluate_cases(lm, tok, cases, batch_size=batch_size, metrics=chosen).summary()
    if json_out:
        print_json(summary)
    else:
        print_scores(f"{model} on {data} (unedited)", {"unedited": summary})
