"""Where built testbed models live, and building them on first use.

A model is cached under ``$EDITSCALE_HOME/testbed/NAME-SPECHASH`` (``EDITSCALE_HOME`` defaults to
``~/.cache/editscale``). A build writes into a temporary directory beside it and renames it into place at
the end, under a file lock, so a killed build leaves nothing half-written and concurrent callers build once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from editscale.testbed.specs import SPECS, TestbedSpec, get_spec
from editscale.testbed.train import MANIFEST_FILE, build


def home() -> Path:
    """The editscale cache root: ``$EDITSCALE_HOME`` or ``~/.cache/editscale``."""
    env = os.environ.get("EDITSCALE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "editscale"


def known() -> list[str]:
    return list(SPECS)


def model_path(name: str, root: Path | None = None) -> Path:
    """The directory testbed ``name`` is (or would be) cached in."""
    spec = get_spec(name)
    return (root or home()) / "testbed" / f"{spec.name}-{spec.hash}"


def is_built(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def read_manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_FILE).read_text())


@contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_built(name: str, *, force: bool = False, root: Path | None = None, threads: int | None = None,
                 progress: bool | None = None) -> Path:
    """The directory of testbed ``name``, building it first if it is not cached (or ``force``)."""
    spec = get_spec(name)
    path = model_path(name, root)
    if is_built(path) and not force:
        return path
    with _locked(path.with_name(path.name + ".lock")):
        if is_built(path) and not force:  # built by another process while we waited
            return path
        return _build_into(spec, path, threads, progress)


def _build_into(spec: TestbedSpec, path: Path, threads: int | None, progress: bool | None) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        build(spec, tmp, threads=threads, progress=progress)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
