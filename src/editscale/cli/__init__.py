"""The ``editscale`` command: thin wrappers that parse, call the library and print.

Each verb lives in its own module and registers itself on ``app``. Every ``EditscaleError`` is printed as
one line, ``error: ...``, with exit status 2.
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

# verbs register themselves on ``app`` when imported; one line per verb module
from editscale.cli import evaluate  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    from editscale.errors import EditscaleError

    try:
        app(args=argv, standalone_mode=False)
    except EditscaleError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
