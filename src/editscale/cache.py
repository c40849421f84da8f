"""Where editscale keeps what it builds, and building a cached directory safely.

- ``cache_root()``: ``$EDITSCALE_HOME``, else ``~/.cache/editscale``; testbed models, converted models and
  statistics live below it;
- ``file_lock(path)``: an exclusive lock held by one process at a time (``fcntl.flock``);
- ``build_dir(path, build, ready)``: the directory ``path``, built first unless ``ready(path)``: under a lock
  beside it, into a temporary directory renamed into place at the end, so a killed build leaves nothing
  half-written and concurrent callers build once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """The editscale cache root: ``$EDITSCALE_HOME`` or ``~/.cache/editscale``."""
    env = os.environ.get("EDITSCALE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "editscale"


@contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) for the duration of the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_dir(path: Path, build: Callable[[Path], object], ready: Callable[[Path], bool], *,
              force: bool = False) -> Path:
    """The directory ``path``, first built by ``build(tmp_dir)`` unless ``ready(path)`` (or ``force``).

    The build runs under the lock ``PATH.lock`` into a temporary directory beside ``path``, which replaces
    ``path`` only when ``build`` returns; whatever it raises leaves ``path`` as it was. A caller that waited for
    another process's build of the same directory finds it ready and returns it.
    """
    if ready(path) and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        if ready(path) and not force:  # built by another process while we waited
            return path
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        try:
            build(tmp)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return path
