"""One place that turns names into files: models, edit records and statistics corpora.

Below this module every layer takes plain paths (a model directory, a records file, a text file) or hub
names; the user-facing layers (API, CLI, experiments, benchmarks) resolve what they are given here first.

Models (``resolve_model_path``):

- ``testbed:NAME``: a model editscale trains itself, built on first use (``editscale.testbed.registry``);
- anything else (a model directory, a hub name) is returned as given.

Data (``resolve_data_path``): ``testbed:NAME`` is that testbed's facts (``world.jsonl``, built on first use);
anything else is a records file. Statistics corpora (``resolve_corpus_path``): ``testbed:NAME`` is that
testbed's directory (its ``corpus.txt``); anything else is returned as given.

``load_model`` and ``load_cases`` resolve and load in one call; ``editscale.load_model`` is this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from editscale.data.readers import load_cases as _read_cases
from editscale.data.records import EditCase
from editscale.model.anatomy import Anatomy
from editscale.model.loading import load_model as _load_directory

TESTBED_PREFIX = "testbed:"

T = TypeVar("T")


def _testbed_dir(name: str, progress: bool | None = None) -> Path:
    from editscale.testbed.registry import ensure_built

    return ensure_built(name[len(TESTBED_PREFIX):], progress=progress)


def resolve_model_path(name_or_path: str | Path, *, progress: bool | None = None) -> str:
    """A model directory (built or converted first where the name asks for it) or a hub name."""
    name = str(name_or_path)
    if name.startswith(TESTBED_PREFIX):
        return str(_testbed_dir(name, progress))
    return name


def resolve_data_path(spec: str | Path) -> str:
    """A records file: ``testbed:NAME`` is that testbed's ``world.jsonl`` (built if needed)."""
    spec = str(spec)
    if spec.startswith(TESTBED_PREFIX):
        from editscale.testbed.train import WORLD_FILE

        return str(_testbed_dir(spec) / WORLD_FILE)
    return spec


def resolve_corpus_path(spec: T) -> T | str:
    """A statistics corpus spec for ``editscale.stats``: ``testbed:NAME`` becomes that testbed's directory
    (whose ``corpus.txt`` is read); anything else (a file, ``hub:NAME``, a list of texts) is returned."""
    if isinstance(spec, str) and spec.startswith(TESTBED_PREFIX):
        return str(_testbed_dir(spec))
    return spec


def load_model(name_or_path: str | Path, **options: Any) -> tuple[nn.Module, Any, Anatomy]:
    """``editscale.model.loading.load_model`` for any name: ``testbed:NAME``, a model directory or a hub name.

    ``options`` are those of ``editscale.model.loading.load_model`` (dtype, device, device_map,
    trust_remote_code).
    """
    return _load_directory(resolve_model_path(name_or_path), **options)


def load_cases(spec: str | Path, limit: int | None = None, skip_invalid: bool = False) -> list[EditCase]:
    """Edit records from a file, or ``testbed:NAME`` for that testbed's facts (built if needed)."""
    return _read_cases(resolve_data_path(spec), limit, skip_invalid)
