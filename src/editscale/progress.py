"""One progress bar for all long work (training, statistics, editing runs): rich, on stderr, with ETA."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def enabled_default() -> bool:
    """Bars are on unless EDITSCALE_PROGRESS=0 (tests and scripts may turn them off)."""
    return os.environ.get("EDITSCALE_PROGRESS", "1") != "0"


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool | None = None):
    """Yields ``advance(n=1, **fields)``; shows elapsed time and ETA on stderr."""
    if enabled is None:
        enabled = enabled_default()
    if not enabled:
        yield lambda n=1, **kw: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            bar.advance(task, n)
            if status is not None:
                bar.update(task, status=status)

        yield advance


def progress(items: Iterable[T], description: str, total: int | None = None,
             enabled: bool | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total, enabled) as advance:
        for item in items:
            yield item
            advance()
