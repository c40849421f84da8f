"""The ``editscale`` command: thin wrappers that parse, call the library and print.

Each verb lives in its own module and registers itself on ``app``. Every ``EditscaleError`` is printed as
one line, ``error: ...``, with exit status 2; usage errors are click's (also status 2). Storage that fails
under a command (full, read-only, not permitted) is one line too, with status 1.

``main`` chooses the CPU threads before torch is imported (``editscale.threads``): ``--threads N`` before the
command or ``EDITSCALE_THREADS``, else the cores the load average leaves free, with OpenMP's passive wait
policy.
"""

from __future__ import annotations

import errno
import sys
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


# verbs register themselves on ``app`` when imported; one line per verb module
from editscale.cli import (
    cache,  # noqa: F401
    data,  # noqa: F401
    downstream,  # noqa: F401
    edit,  # noqa: F401
    evaluate,  # noqa: F401
    mend,  # noqa: F401
    methods,  # noqa: F401
    models,  # noqa: F401
    run,  # noqa: F401
    sweep,  # noqa: F401
    testbed,  # noqa: F401
    trace,  # noqa: F401
)

_STORAGE_ERRNOS = {errno.ENOSPC: "storage full", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only storage", errno.EACCES: "permission denied", errno.EPERM: "not permitted"}


def main(argv: list[str] | None = None) -> None:
    from editscale import threads

    args = list(sys.argv[1:] if argv is None else argv)
    _CHOSEN["threads"] = threads.prepare_environment(args)  # before torch starts its thread pool
    from editscale.errors import EditscaleError

    try:
        app(args=args, standalone_mode=True)
    except EditscaleError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in _STORAGE_ERRNOS:
            raise
        where = f" at {e.filename}" if e.filename else ""
        print(f"error: {_STORAGE_ERRNOS[e.errno]}{where} ({e.strerror}); free space or choose another place",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
