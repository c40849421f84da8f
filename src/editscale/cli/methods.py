"""``editscale methods``: the editing methods, each as its class declares itself."""

from __future__ import annotations

from typing import Annotated

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json


@app.command("methods")
def methods_command(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON list instead of a table.")] = False,
) -> None:
    """The editing methods --method takes: for each what it does, its paper, what it prepares from the
    unedited model before the first edit, and its default layers on a model whose preset gives none."""
    from rich.console import Console
    from rich.table import Table

    from editscale.methods.base import method_listing

    rows = method_listing()
    if json_out:
        print_json(rows)
        return
    table = Table(title="methods (--method NAME; hyperparameters: --set KEY=VALUE or --hparams FILE)")
    table.add_column("name", no_wrap=True)
    table.add_column("what it does", overflow="fold")
    for r in rows:
        name = r["name"] + ("\n(default)" if r["default"] else "")
        about = (f"{r['description']}\n[dim]paper:[/dim] {r['paper']}\n[dim]prepares:[/dim] "
                 f"{', '.join(r['needs']) or 'nothing'}\n[dim]default layers:[/dim] {r['default_layers']}")
        table.add_row(name, about)
    Console().print(table)
