"""Typed errors raised at editscale's boundaries.

Every error carries a one-line message that says what is wrong and how to fix it. The CLI prints
``error: <message>`` and exits with status 2 for any of them.
"""

from __future__ import annotations


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
