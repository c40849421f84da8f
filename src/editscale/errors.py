"""Typed errors raised at editscale's boundaries.

Every error carries a one-line message that says what is wrong and how to fix it. The CLI prints
``error: <message>`` and exits with status 2 for any of them.
"""

from __future__ import annotations

from typing import Any


class EditscaleError(Exception):
    """Base class: a problem the user can fix (bad input, config, model name)."""


class RecordError(EditscaleError, ValueError):
    """A malformed edit record or data file."""


class SubjectNotInPromptError(RecordError):
    """A record whose subject does not occur in its prompt."""


class ConfigError(EditscaleError, ValueError):
    """A bad configuration or hyperparameter value."""


class ModelLoadError(EditscaleError):
    """A model or tokenizer that cannot be loaded (unknown name, no network, bad directory)."""


class UnsupportedModelError(EditscaleError):
    """A model architecture editscale has no anatomy entry for."""


class DataLoadError(EditscaleError):
    """A dataset that cannot be found or read."""


class RunStateError(EditscaleError):
    """An experiment run directory that is missing, incomplete or inconsistent."""


class EditError(EditscaleError):
    """An edit whose update cannot be kept (it leaves NaN or infinite weights); it was undone."""


class StorageError(EditscaleError):
    """A place to write that cannot be written (read-only, full, not permitted), found before the work."""


class RunInUseError(RunStateError):
    """A run directory another process is running in (it holds the run's lock). ``fact`` is the message without
    its advice (a sweep that skips the cell reports it so)."""

    def __init__(self, fact: str, advice: str) -> None:
        super().__init__(f"{fact}; {advice}")
        self.fact, self.advice = fact, advice

    def __reduce__(self):  # pickled as its two parts (a Ray worker's error reaches the driver so)
        return type(self), (self.fact, self.advice)


def config_error(source: str, err: Any) -> ConfigError:
    """A pydantic ``ValidationError`` as a one-line ``ConfigError`` naming its first bad field, e.g.
    ``run config field 'forget_every': Input should be greater than or equal to 1 (got 0)``."""
    problems = err.errors()
    first = problems[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "missing":
        text = f"field '{field}' is missing"
    elif first["type"] == "extra_forbidden":
        text = f"has an unknown field '{field}'"
    else:
        got = first.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
        text = f"field '{field}': {first['msg']}{shown}"
    more = len(problems) - 1
    extra = f"; and {more} more problem{'s' * (more > 1)}" if more else ""
    return ConfigError(f"{source} {text}{extra}")
