"""The ``editscale`` command: thin wrappers that parse, call the library and print.

Each verb lives in its own module and registers itself on ``app``. ``error_line`` is the one place that turns
a library error into one line, ``error: ...``: an ``EditscaleError`` with exit status 2, storage that fails
under a command (full, a file-size limit, read-only, not permitted) with status 1. Usage errors of the CLI
framework are one line too (status 2), with the command's ``--help`` to see.

``main`` chooses the CPU threads before torch is imported (``editscale.threads``): ``--threads N`` before the
command or ``EDITSCALE_THREADS``, else the cores the load average leaves free, with OpenMP's passive wait
policy.
"""

from __future__ import annotations

import errno
import sys

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
    scaling,  # noqa: F401
    sweep,  # noqa: F401
    testbed,  # noqa: F401
    trace,  # noqa: F401
)
from editscale.cli.app import _CHOSEN, app


def main(argv: list[str] | None = None) -> None:
    from editscale import threads

    args = list(sys.argv[1:] if argv is None else argv)
    _CHOSEN["threads"] = threads.prepare_environment(args)  # before torch starts its thread pool
    from typer._click import exceptions as click  # typer's own click

    try:
        from editscale.progress import interval

        interval()  # a bad EDITSCALE_PROGRESS_INTERVAL is refused before any work, not at the first progress line
        code = app(args=args, prog_name="editscale", standalone_mode=False)
    except click.NoArgsIsHelpError:  # a group named alone: its help is printed already
        sys.exit(2)
    except click.UsageError as e:
        print(usage_line(e, args), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        line = error_line(e)
        if line is None:
            raise
        print(line[1], file=sys.stderr)
        sys.exit(line[0])
    sys.exit(code if isinstance(code, int) else 0)


def usage_line(e, args: list[str]) -> str:
    """A usage error of the CLI framework as one line (click prints a box of five or six)."""
    command = e.ctx.command_path if getattr(e, "ctx", None) is not None else "editscale"
    return f"error: {e.format_message()} (see `{command} --help`)"


_STORAGE_ERRNOS = {errno.ENOSPC: "storage full", errno.EDQUOT: "disk quota exceeded",
                   errno.EFBIG: "file too large for this storage (a file-size limit)",
                   errno.EROFS: "read-only storage", errno.EACCES: "permission denied", errno.EPERM: "not permitted"}


def error_line(e: BaseException) -> tuple[int, str] | None:
    """The one place that turns a library error into the CLI's one line: (exit status, line), or None for an
    error that is a bug (printed with its traceback). ``EditscaleError``: status 2; storage that fails under a
    command (full, a file-size limit, read-only, not permitted; SQLite's "database or disk is full" too):
    status 1."""
    import sqlite3

    from editscale.errors import EditscaleError

    if isinstance(e, EditscaleError):
        return 2, f"error: {e}"
    if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
        where = f" at {e.filename}" if e.filename else ""
        return 1, f"error: {_STORAGE_ERRNOS[e.errno]}{where} ({e.strerror}); free space or choose another place"
    if isinstance(e, sqlite3.OperationalError) and "full" in str(e):
        return 1, f"error: storage full ({e}); free space and resume the run (`editscale run --resume DIR`)"
    if isinstance(e, RecursionError):
        return 2, "error: input nested too deeply to read"
    return None


if __name__ == "__main__":
    main()
