"""The ``editscale`` Typer application and its root options; each verb module registers itself on ``app``
(imported by ``editscale.cli``, which also holds ``main`` and the one-line errors)."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="editscale",
    help="Edit facts inside transformer language models and measure what editing at scale does to them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    threads: Annotated[int | None, typer.Option(
        "--threads", envvar="EDITSCALE_THREADS", min=1,
        help="CPU threads for torch (default: the cores the load average leaves free, at least 1).")] = None,
) -> None:
    """Edit facts inside transformer language models and measure what editing at scale does to them.

    Start with `editscale demo` (builds the testbed model, runs ROME, ENCORE, r-ROME, MEMIT and FT-L
    sequentially, writes a report). Every command that prints results takes --json.
    """
    from editscale import threads as _threads

    _threads.apply(threads or _CHOSEN.get("threads") or _threads.free_cores())


_CHOSEN: dict[str, int] = {}  # what main chose before torch was imported
