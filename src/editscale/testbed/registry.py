"""Where built testbed models live, and building them on first use.

A model is cached under ``$EDITSCALE_HOME/testbed/NAME-SPECHASH`` (``EDITSCALE_HOME`` defaults to
``~/.cache/editscale``). A build writes into a temporary directory beside it and renames it into place at
the end, under a file lock (``editscale.cache.build_dir``), so a killed build leaves nothing half-written and
concurrent callers build once.
"""

from __future__ import annotations

from pathlib import Path

from editscale.cache import build_dir, cache_root
from editscale.model.loading import MANIFEST_FILE
from editscale.testbed.specs import SPECS, get_spec
from editscale.testbed.train import build


def known() -> list[str]:
    return list(SPECS)


def model_path(name: str, root: Path | None = None) -> Path:
    """The directory testbed ``name`` is (or would be) cached in."""
    spec = get_spec(name)
    return (root or cache_root()) / "testbed" / f"{spec.name}-{spec.hash}"


def is_built(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def ensure_built(name: str, *, force: bool = False, root: Path | None = None, threads: int | None = None,
                 progress: bool | None = None) -> Path:
    """The directory of testbed ``name``, building it first if it is not cached (or ``force``)."""
    spec = get_spec(name)
    return build_dir(model_path(name, root), lambda tmp: build(spec, tmp, threads=threads, progress=progress),
                     is_built, force=force)
