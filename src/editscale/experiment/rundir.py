"""A run directory's life: one process at a time, an atomic setup, and a config it keeps.

- ``RunLock(run_dir)``: an OS file lock (``fcntl.flock``) on ``.NAME.lock`` beside the run directory, held for
  the run's life; the holder writes its pid into it and removes it at the end. A second process fails at once
  with a one-line ``RunInUseError`` naming that pid (``check_free`` asks the same without taking the lock).
- ``setup_dir(run_dir)``: the run directory is first built as ``.NAME.setup-XXXX`` beside it and renamed into
  place when its database holds the config and the plan, so a kill at any moment of the setup leaves either no
  run directory (a stale setup directory the next run removes) or one that ``--resume`` continues.
- ``config_hash``/``run_state``: a run keeps the sha256 of its config; ``run --out`` onto an existing run with
  another config refuses, with the same config it resumes, or says the run is complete.

Nothing here imports torch, so a refused second process answers in well under a second.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Self

from editscale.errors import EditscaleError, RunInUseError, RunStateError

DB_FILE = "results.sqlite"  # experiment.store.DB_NAME (not imported: the store imports the metrics)


def lock_path(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def _in_use(run_dir: Path) -> RunInUseError:
    return RunInUseError(f"{run_dir} is in use by another editscale process ({_holder(lock_path(run_dir))})",
                         "wait for it to finish, or choose another --out")


class RunLock:
    """Exclusive use of a run directory for the life of a run (``with RunLock(run_dir): ...``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self._file = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise _in_use(self.run_dir) from None
            try:  # the holder before us may have removed the file after we opened it: lock the one there now
                same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # while still held: nobody can have taken it since
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def check_free(run_dir: str | Path) -> None:
    """``RunInUseError`` if another process runs in ``run_dir`` now; takes nothing, writes nothing."""
    path = lock_path(Path(run_dir))
    if not path.is_file():
        return
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(Path(run_dir)) from None
        fcntl.flock(f, fcntl.LOCK_UN)
    remove_stale_lock(Path(run_dir))


def remove_stale_lock(run_dir: Path) -> None:
    """Remove the lock file a killed run left (nobody holds it), under the lock itself so that no process that
    takes it meanwhile loses it; the lock of a live run is left alone."""
    path = lock_path(run_dir)
    try:
        f = open(path)  # noqa: SIM115 - closed below by its with block
    except OSError:
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, OSError):
            return
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                path.unlink()
        except OSError:
            pass
        fcntl.flock(f, fcntl.LOCK_UN)


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of a run config's canonical JSON (every field, defaults included)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stored_config_hash(config: dict[str, Any], recorded_sha256: str, source: str) -> str:
    """The hash of a stored run config as this version reads it: a field added since takes its default, so a
    run or sweep of an earlier version stays the same config; a config this version cannot read keeps the hash
    recorded with it (and so is another config)."""
    from editscale.experiment.config import parse_config

    try:
        return config_hash(parse_config(config, source=source).to_dict())
    except EditscaleError:
        return recorded_sha256


def run_state(run_dir: str | Path, config: dict[str, Any]) -> Literal["new", "resume", "complete"]:
    """What ``run --out RUN_DIR`` with ``config`` (``RunConfig.to_dict()``) finds there: nothing (``new``), a
    run of the same config to continue (``resume``) or finished (``complete``). A run of another config, or a
    folder that is not a run directory, is a one-line ``RunStateError``."""
    from editscale.experiment.store import RunStore

    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "new"
    if not run_dir.is_dir():
        raise RunStateError(f"--out {run_dir} is a file, not a run directory; choose another --out")
    if not (run_dir / DB_FILE).is_file():
        if any(run_dir.iterdir()):
            raise RunStateError(f"{run_dir} exists and is not a run directory (no {DB_FILE}); choose another --out")
        return "new"
    with RunStore.in_dir(run_dir, readonly=True) as store:
        meta = store.meta()
    if "config" not in meta:
        raise RunStateError(f"{run_dir} holds no run config; the run directory is damaged: choose another --out")
    stored = stored_config_hash(meta["config"], meta.get("config_sha256", ""), f"stored config of {run_dir}")
    if stored != config_hash(config):
        raise RunStateError(f"{run_dir} holds a run of another config (config sha256 {stored[:12]}, this one "
                            f"{config_hash(config)[:12]}); choose another --out, or continue that run with "
                            f"`editscale run --resume {run_dir}`")
    return "complete" if meta.get("status") == "complete" else "resume"


def clean_setups(run_dir: str | Path) -> None:
    """Remove setup directories a killed setup left beside ``run_dir`` (call while holding its lock)."""
    run_dir = Path(run_dir)
    for stale in run_dir.parent.glob(f".{run_dir.name}.setup-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def setup_dir(run_dir: str | Path) -> Iterator[Path]:
    """A temporary directory beside ``run_dir`` to set the run up in; renamed to ``run_dir`` when the block
    ends normally (``run_dir`` must be absent or empty), removed when it raises."""
    run_dir = Path(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.setup-", dir=run_dir.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # as a plain mkdir would make it, not mkdtemp's 0700
    try:
        yield tmp
        os.replace(tmp, run_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
