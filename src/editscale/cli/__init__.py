"""The ``editscale`` command: thin wrappers that parse, call the library and print.

Each verb lives in its own module and registers itself on ``app``. Every ``EditscaleError`` is printed as
one line, ``error: ...``, with exit status 2; usage errors are click's (also status 2).
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="editscale",
    help="Edit facts inside transformer language models and measure what editing at scale does to them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Edit facts inside transformer language models and measure what editing at scale does to them.

    Start with `editscale demo` (builds the testbed model, runs ROME, r-ROME, MEMIT and FT-L sequentially,
    writes a report). Every command that prints results takes --json.
    """


# verbs register themselves on ``app`` when imported; one line per verb module
from editscale.cli import (
    downstream,  # noqa: F401
    edit,  # noqa: F401
    evaluate,  # noqa: F401
    models,  # noqa: F401
    run,  # noqa: F401
    testbed,  # noqa: F401
    trace,  # noqa: F401
)


def main(argv: list[str] | None = None) -> None:
    from editscale.errors import EditscaleError

    try:
        app(args=argv, standalone_mode=True)
    except EditscaleError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
