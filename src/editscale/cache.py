"""Where editscale keeps what it builds, and building a cached directory safely.

- ``cache_root()``: ``$EDITSCALE_HOME``, else ``~/.cache/editscale``; testbed models, converted models and
  statistics live below it;
- ``file_lock(path)``: an exclusive lock held by one process at a time (``fcntl.flock``);
- ``build_dir(path, build, ready)``: the directory ``path``, built first unless ``ready(path)``: under a lock
  beside it, into a temporary directory renamed into place at the end, so a killed build leaves nothing
  half-written and concurrent callers build once; ``build_dir_status`` also says whether this call built it,
  found it, or waited for another process's build;
- a built directory's manifest (``FILES_MANIFEST``): every file's size and sha256, written last by
  ``build_dir``. ``entry_problems`` checks sizes (cheap: every load) or hashes too (``editscale cache
  verify``); an entry without one is incomplete, except one whose builder manifest an older editscale wrote
  (``adopt``: given a manifest once its safetensors files are checked whole);
- ``check_writable(path)``: raises a one-line ``StorageError`` when ``path`` cannot be written or its storage is
  nearly full, before any expensive work, writing nothing; ``refuse_inside_cache(path)``: nothing but the
  builders writes inside the cache; ``check_out_dir`` / ``staged_output``: a command's output folder checked
  before the work and written whole or not at all.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from editscale.errors import ConfigError, StorageError

FILES_MANIFEST = "editscale_files.json"  # a cache entry's files with size and sha256, written last
MIN_FREE_BYTES = 16 << 20  # what a place to write must have free at least, checked before the work


def cache_root() -> Path:
    """The editscale cache root: ``$EDITSCALE_HOME`` or ``~/.cache/editscale``."""
    env = os.environ.get("EDITSCALE_HOME")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "editscale"
    if root.exists() and not root.is_dir():
        raise ConfigError(f"editscale's cache {root} is a file, not a folder; point EDITSCALE_HOME at a folder "
                          "(or unset it for ~/.cache/editscale)")
    return root


@contextmanager
def file_lock(lock_path: Path, *, remove: Callable[[], bool] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) for the duration of the block. With ``remove``,
    the lock file is deleted at the end, while still held, when ``remove()`` says so (a failed build leaves no
    empty lock file behind); a process that waited on the deleted file takes the file now there instead."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(lock_path, "a")  # noqa: SIM115 - closed below, or kept open for the block
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            same = os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    try:
        yield
    finally:
        if remove is not None and remove():
            lock_path.unlink(missing_ok=True)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def build_dir(path: Path, build: Callable[[Path], object], ready: Callable[[Path], bool], *,
              force: bool = False) -> Path:
    """The directory ``path``, first built by ``build(tmp_dir)`` unless ``ready(path)`` (or ``force``).

    The build runs under the lock ``PATH.lock`` into a temporary directory beside ``path``; the files manifest
    (``FILES_MANIFEST``) is written last into it, and it replaces ``path`` only then; whatever ``build``
    raises leaves ``path`` as it was. A caller that waited for another process's build of the same directory
    finds it ready and returns it.
    """
    return build_dir_status(path, build, ready, force=force)[0]


def build_dir_status(path: Path, build: Callable[[Path], object], ready: Callable[[Path], bool], *,
                     force: bool = False, need_bytes: int = MIN_FREE_BYTES) -> tuple[Path, str]:
    """``build_dir``, and what happened: ``"cached"`` (it was ready), ``"built"`` (this call built it) or
    ``"waited"`` (another process built it while this one waited for the lock). Before building, the cache's
    storage must be writable with ``need_bytes`` free (a one-line ``StorageError`` otherwise)."""
    if ready(path) and not force:
        return path, "cached"
    check_writable(path.parent, "the cache folder", need_bytes=need_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock"), remove=lambda: not path.exists()):
        if ready(path) and not force:  # built by another process while we waited
            return path, "waited"
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        try:
            build(tmp)
            write_files_manifest(tmp)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return path, "built"


def lock_is_held(lock_path: Path) -> bool:
    """Whether another process holds ``lock_path`` now (a build in progress); never waits."""
    if not lock_path.is_file():
        return False
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


# --- manifests of built directories -----------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entry_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != FILES_MANIFEST)


def write_files_manifest(directory: Path) -> dict:
    """Write ``directory``'s manifest: every file's size and sha256 (the manifest itself written last, by a
    rename). Returns it."""
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in _entry_files(directory)}
    manifest = {"format": 1, "files": files}
    tmp = directory / (FILES_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, directory / FILES_MANIFEST)
    return manifest


def read_files_manifest(directory: Path) -> dict | None:
    """The manifest of a built directory, or None when it has none (or an unreadable one)."""
    try:
        manifest = json.loads((Path(directory) / FILES_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole (its header does not parse, or the data it declares does not end
    where the file ends), or None. Reads the header only."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is {size} bytes, too short for a safetensors file"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name} is truncated or not a safetensors file ({size} bytes, its header says it " \
                       f"needs {n + 8} for the header alone)"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"{path.name} is not a readable safetensors file ({e})"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    need = 8 + n + max(ends, default=0)
    if need != size:
        return f"{path.name} is {'truncated' if size < need else 'longer than its header says'} ({size} bytes, " \
               f"its header needs {need})"
    return None


def entry_problems(directory: Path, *, hashes: bool = False) -> list[str] | None:
    """What is wrong with a built directory against its manifest: missing files, other sizes (and with
    ``hashes``, other contents) and files the builder did not write. None: it has no manifest."""
    directory = Path(directory)
    manifest = read_files_manifest(directory)
    if manifest is None:
        return None
    problems = []
    for rel, want in manifest["files"].items():
        p = directory / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif p.stat().st_size != want["size"]:
            problems.append(f"{rel} is {p.stat().st_size} bytes, its manifest says {want['size']}")
        elif hashes and sha256_file(p) != want["sha256"]:
            problems.append(f"{rel} has changed (sha256 differs from its manifest)")
    extra = [p.relative_to(directory).as_posix() for p in _entry_files(directory)
             if p.relative_to(directory).as_posix() not in manifest["files"]]
    problems += [f"{rel} was not written by the builder" for rel in extra]
    return problems


def legacy_problems(directory: Path) -> list[str]:
    """The checks an entry without a files manifest (built by an older editscale) gets: its safetensors files
    are whole."""
    return [p for f in sorted(Path(directory).glob("*.safetensors")) if (p := safetensors_problem(f))]


def entry_damage(directory: Path) -> list[str]:
    """The size checks every load makes: against the files manifest, or (an older editscale's entry without
    one) of its safetensors files against their headers. Empty: nothing wrong found."""
    problems = entry_problems(directory)
    return legacy_problems(directory) if problems is None else problems


def adopt(directory: Path, builder_manifest: str) -> bool:
    """Give a complete entry of an older editscale (its builder's manifest, written last, but no files
    manifest) a files manifest, under its build lock, once its safetensors files are checked whole. Returns
    whether it did; read-only storage or a damaged entry leaves it as it is."""
    directory = Path(directory)
    if not (directory / builder_manifest).is_file() or read_files_manifest(directory) is not None:
        return False
    try:
        with file_lock(directory.with_name(directory.name + ".lock")):
            if read_files_manifest(directory) is not None or legacy_problems(directory):
                return False
            write_files_manifest(directory)
            return True
    except OSError:
        return False


# --- where output may go ------------------------------------------------------------------------------------
def inside_cache(path: Path) -> bool:
    root = cache_root().expanduser().resolve()
    target = Path(path).expanduser().resolve()
    return target == root or root in target.parents


def refuse_inside_cache(path: Path, what: str) -> None:
    """A one-line ``ConfigError`` when ``path`` lies inside editscale's cache, where only the builders write
    (an edited model saved over a cached one would be served as the original afterwards)."""
    if inside_cache(path):
        raise ConfigError(f"{what} {path} is inside editscale's cache ({cache_root()}), where only editscale's "
                          "builders write; choose a directory outside it")


def check_writable(path: Path, what: str, need_bytes: int = MIN_FREE_BYTES) -> None:
    """Before the expensive work: ``path`` (a directory, existing or to be created) can be written and its
    storage has ``need_bytes`` free. Writes a probe file into the nearest existing directory and deletes it;
    creates nothing. Raises a one-line ``StorageError`` naming ``what``."""
    target = Path(path).expanduser()
    base = target if target.is_dir() else target.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise StorageError(f"{what} {path}: {base} is a file, not a directory")
    clean_leftovers(base)
    if target.is_dir() and target != base:
        clean_leftovers(target)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".editscale-probe-{os.getpid()}-", dir=base)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise StorageError(_storage_message(what, path, e)) from None
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        raise StorageError(f"{what} {path}: its storage is full ({free >> 20} MiB free, about "
                           f"{max(1, need_bytes >> 20)} MiB needed); free some space or choose another place")


def _storage_message(what: str, path: Path, e: OSError) -> str:
    if e.errno == errno.EROFS:
        why = "its storage is read-only"
    elif e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "its storage is full"
    elif e.errno == errno.EFBIG:
        why = "a file would exceed this storage's file-size limit"
    elif e.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied"
    else:
        why = e.strerror or str(e)
    return f"{what} {path} cannot be written: {why}; choose another place"


OUTPUT_MARKER = ".editscale-output.json"  # which command wrote an output folder (its files may be rewritten)


def check_out_dir(path: Path, what: str, command: str, *, names: Sequence[str] = (), force: bool = False,
                  need_bytes: int = MIN_FREE_BYTES) -> None:
    """Before the work, an output folder: not a file, not inside the cache, writable, and not holding another
    command's files (another command's marker, or without one a file of the ``names`` this command writes)
    unless ``force``. One-line ``ConfigError`` / ``StorageError``."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder; give a folder (new or {command}'s own)")
    refuse_inside_cache(target, what)
    check_writable(target, what, need_bytes)
    if force or not target.is_dir():
        return
    marker = target / OUTPUT_MARKER
    owner = None
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text()).get("command")
        except (ValueError, AttributeError, OSError):
            owner = "?"
    if owner == command:
        return
    clash = sorted(p.name for n in names for p in target.glob(n))
    if owner is not None or clash:
        whose = f"`editscale {owner}`'s output" if owner not in (None, "?") else f"files of the same names ({', '.join(clash[:3])})"
        raise ConfigError(f"{what} {path} holds {whose}; choose another folder, or pass --force to write over it")


@contextmanager
def staged_output(path: Path, command: str) -> Iterator[Path]:
    """A temporary folder beside ``path`` to write a command's outputs into; on success each file is moved
    into ``path`` (whole files only: a rename each) with the command's marker, on failure the temporary folder is
    removed and ``path`` is as it was."""
    target = Path(path).expanduser()
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=leftover_prefix(target.name, "writing"), dir=parent))
    try:
        yield tmp
        target.mkdir(exist_ok=True)
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"command": command}) + "\n")
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                dest = target / f.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_LEFTOVER = re.compile(r"^\.(?:editscale-probe|.+\.(?:saving|writing))-(\d+)-")


def leftover_prefix(name: str, what: str) -> str:
    """The prefix of a temporary file or folder this process writes beside ``name`` (``clean_leftovers`` removes
    it once this process is gone, if a kill left it)."""
    return f".{name}.{what}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(directory: Path) -> list[Path]:
    """Remove the temporary files and folders (storage probes, models being saved, outputs being written) that
    processes no longer running left in ``directory`` when they were killed; returns what was removed."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _LEFTOVER.match(p.name)
        if m is None or _alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
