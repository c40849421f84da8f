"""``editscale eval``: CounterFact-style scores of a model on edit records."""

from __future__ import annotations

from typing import Annotated

import typer

from editscale.cli import app
from editscale.cli.common import print_json, print_scores

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="testbed:tiny, testbed:demo, a local model "
                                                               "directory, or a Hugging Face hub name.")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="A records file (CounterFact, EasyEdit, zsRE or "
                                                             "editscale JSON/JSONL) or testbed:NAME.")]


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
) -> None:
    """Efficacy, paraphrase and neighborhood scores of MODEL on the records in DATA (no editing)."""
    from editscale.data import load_cases
    from editscale.eval.counterfact import evaluate_cases
    from editscale.model.loading import load_model

    cases = load_cases(data, limit=limit, skip_invalid=skip_invalid)
    lm, tok, _ = load_model(model, dtype=dtype, device=device)
    summary = evaluate_cases(lm, tok, cases, batch_size=batch_size).summary()
    if json_out:
        print_json(summary)
    else:
        print_scores(f"{model} on {data} (unedited)", {"unedited": summary})
