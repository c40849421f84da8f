"""``editscale models``: the model names editscale knows, and whether each is installed, built or converted."""

from __future__ import annotations

from typing import Annotated

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json


@app.command("models")
def models_command(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON list instead of a table.")] = False,
) -> None:
    """The known model names (testbed models, real models installed from the package index) and for each
    whether it is installed, built or converted, and where. Any --model also takes a model directory, a
    .gguf file or a hub name."""
    from rich.console import Console
    from rich.table import Table

    from editscale.names import model_listing

    rows = model_listing()
    if json_out:
        print_json(rows)
        return
    table = Table(title="models (any --model also takes a model directory, a .gguf file or a hub name)")
    for col in ("name", "state", "where"):
        table.add_column(col, overflow="fold")
    for r in rows:
        state = r["state"] if r["installed"] else f"{r['state']}: {r['install']}"
        table.add_row(r["name"], state, r["path"])
    Console().print(table)
