"""One progress mechanism for all long work (training, statistics, editing runs, tracing), on stderr.

On a terminal it draws a rich bar with elapsed time and ETA. When stderr is not a terminal (``editscale demo >
log 2>&1``) it writes a plain line at most every ``EDITSCALE_PROGRESS_INTERVAL`` seconds (default 30) and one
at the end: the step, done/total, the rate and the ETA. ``EDITSCALE_PROGRESS=0`` turns both off.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """Plain progress lines for logs: ``description: done/total (pct) elapsed, rate, eta, status``."""

    def __init__(self, description: str, total: int | None, interval: float, stream=None,
                 completed: int = 0) -> None:
        self.description, self.total, self.interval = description, total, interval
        self.stream = stream if stream is not None else sys.stderr
        self.done, self.status = completed, ""
        self.completed = completed  # done before this process (a resumed run): counted, but not in the rate
        self.start = self.last = time.monotonic()
        self.emitted: tuple[int, str] | None = None

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = (self.done - self.completed) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}: {self.done}" + (f"/{self.total}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"elapsed {_duration(elapsed)}")
        if rate > 0:
            parts.append(f"{rate:.3g}/s" if rate >= 1 else f"{1 / rate:.3g} s each")
            if self.total and self.done < self.total:
                parts.append(f"eta {_duration((self.total - self.done) / rate)}")
        if self.status:
            parts.append(self.status)
        return ", ".join(parts)

    def advance(self, n: int = 1, status: str | None = None) -> None:
        self.done += n
        if status is not None:
            self.status = status
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.emit()

    def emit(self) -> None:
        if self.emitted == (self.done, self.status):  # nothing new since the last line
            return
        self.emitted = (self.done, self.status)
        print(self.line(), file=self.stream, flush=True)


def interval() -> float:
    """Seconds between plain progress lines: ``EDITSCALE_PROGRESS_INTERVAL`` (default 30); a value that is not a
    positive number is a one-line ``ConfigError``, as a bad ``EDITSCALE_THREADS`` is."""
    from editscale.errors import ConfigError

    raw = os.environ.get("EDITSCALE_PROGRESS_INTERVAL", "30")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"EDITSCALE_PROGRESS_INTERVAL={raw!r} is not a positive number of seconds; set it to "
                          "e.g. 30, or unset it")
    return value


def enabled_default() -> bool:
    """Bars are on unless EDITSCALE_PROGRESS=0 (tests and scripts may turn them off)."""
    return os.environ.get("EDITSCALE_PROGRESS", "1") != "0"


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool | None = None, completed: int = 0):
    """Yields ``advance(n=1, **fields)``; shows elapsed time and ETA on stderr.

    ``completed`` is work done before this process (a resumed run): it counts towards done/total but not towards
    the rate, so the ETA of a resumed run is not flattered by the edits its earlier process made."""
    if enabled is None:
        enabled = enabled_default()
    if not enabled:
        yield lambda n=1, **kw: None
        return
    if not sys.stderr.isatty():
        reporter = LineProgress(description, total, interval(), completed=completed)
        reporter.emit()
        try:
            yield reporter.advance
        finally:
            reporter.emit()
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
        task = bar.add_task(description, total=total, completed=completed, status="")

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
