"""What editscale's cache holds, and keeping it sound: ``editscale cache list|verify|clean``.

The cache (``editscale.cache.cache_root()``) keeps four kinds of entry, each written by its builder only:

- ``testbed/NAME-SPECHASH``: a testbed model (``editscale testbed build``), its testbed manifest and its files
  manifest (``cache.FILES_MANIFEST``: size and sha256 of every file) written last;
- ``models/NAME``: a GGUF model converted to a model directory, its conversion manifest and files manifest;
- ``stats/mom2_L*_KEY.safetensors``: one second-moment matrix, its key and sha256 in the file's own metadata
  (written whole, by a rename);
- ``mend/FINGERPRINT-KEY``: a trained MEND editor (``editscale mend train``) for the model of that
  fingerprint, its manifest (``editscale_mend.json``) and files manifest.

An entry's state: ``complete``; ``complete, no file hashes`` (built by an older editscale; ``verify`` gives it
a manifest once its safetensors files are checked whole); ``damaged`` (a size or, when verified, a hash that
differs from its manifest, a missing file, a file the builder did not write); ``incomplete`` (a build that was
killed); ``building`` (a build in progress: its lock is held). ``clean`` removes incomplete and damaged
entries (``everything=True``: all but the ones building), never one being built.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from editscale.cache import (
    adopt,
    cache_root,
    entry_problems,
    legacy_problems,
    lock_is_held,
    safetensors_problem,
)
from editscale.errors import ConfigError
from editscale.model.gguf import MANIFEST_FILE as GGUF_MANIFEST
from editscale.model.loading import MANIFEST_FILE as TESTBED_MANIFEST

# (MEND's manifest name is editscale.methods.mend.storage.MANIFEST_FILE, spelt out here: listing imports no
# torch)
KINDS = {"testbed": TESTBED_MANIFEST, "models": GGUF_MANIFEST, "mend": "editscale_mend.json"}


@dataclass
class Entry:
    kind: str  # testbed, model, stats, mend
    name: str  # testbed:tiny, smollm2-135m, the statistics file's name
    path: Path
    state: str  # complete, complete (no file hashes), damaged, incomplete, building
    size: int
    problems: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _directory_entry(kind: str, path: Path, builder_manifest: str, hashes: bool) -> Entry:
    base = path.name.lstrip(".")
    name = f"testbed:{base.rsplit('-', 2)[0] if path.name.startswith('.') else base.rsplit('-', 1)[0]}" \
        if kind == "testbed" else (base.rsplit("-", 1)[0] if path.name.startswith(".") else base)
    shown = "model" if kind == "models" else kind
    if path.name.startswith("."):  # a build's temporary directory: in progress, or left by a killed build
        target = base.rsplit("-", 1)[0]
        building = lock_is_held(path.parent / f"{target}.lock")
        return Entry(shown, name, path, "building" if building else "incomplete", _size(path),
                     note="build in progress" if building else "left by a build that did not finish")
    if not (path / builder_manifest).is_file():
        return Entry(shown, name, path, "incomplete", _size(path), note=f"no {builder_manifest}")
    problems = entry_problems(path, hashes=hashes)
    note = ""
    if kind == "testbed" and _current_testbed(name) != path.name:
        note = f"an older spec: {name} builds {_current_testbed(name) or 'nothing'} now"
    if problems is None:
        problems = legacy_problems(path)
        state = "damaged" if problems else "complete, no file hashes"
        if not problems:
            note = "; ".join(filter(None, [note, "built by an older editscale; `editscale cache verify` adds them"]))
        return Entry(shown, name, path, state, _size(path), problems, note)
    return Entry(shown, name, path, "damaged" if problems else "complete", _size(path), problems, note)


def _current_testbed(name: str) -> str | None:
    """The directory name testbed ``name`` (``testbed:NAME``) builds into with this version's spec."""
    from editscale.testbed.specs import SPECS

    spec = SPECS.get(name.removeprefix("testbed:"))
    return f"{spec.name}-{spec.hash}" if spec is not None else None


def _stats_entry(path: Path, hashes: bool) -> Entry:
    if path.suffix == ".tmp":
        return Entry("stats", path.name, path, "incomplete", _size(path), note="a write that did not finish")
    problem = safetensors_problem(path)
    problems = [problem] if problem else []
    if hashes and not problems:
        problems = _stats_hash_problems(path)
    return Entry("stats", path.name, path, "damaged" if problems else "complete", _size(path), problems)


def _stats_hash_problems(path: Path) -> list[str]:
    import hashlib

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            matrix = f.get_tensor("mom2")
    except Exception as e:  # noqa: BLE001 -- any failure to read it is the file's
        return [f"{path.name} is unreadable ({e})"]
    digest = hashlib.sha256(matrix.contiguous().numpy().tobytes()).hexdigest()
    return [] if meta.get("sha256") == digest else [f"{path.name} has changed (sha256 differs from its metadata)"]


def list_entries(*, hashes: bool = False, root: Path | None = None) -> list[Entry]:
    """Every entry of the cache with its state; ``hashes``: check every file's sha256 too (reads them all)."""
    root = Path(root) if root is not None else cache_root()
    out: list[Entry] = []
    for kind, manifest in KINDS.items():
        folder = root / kind
        if folder.is_dir():
            out += [_directory_entry(kind, p, manifest, hashes) for p in sorted(folder.iterdir()) if p.is_dir()]
    stats = root / "stats"
    if stats.is_dir():
        out += [_stats_entry(p, hashes) for p in sorted(stats.iterdir())
                if p.is_file() and (p.suffix in (".safetensors", ".tmp"))]
    return out


def _select(entries: list[Entry], names: list[str] | None) -> list[Entry]:
    if not names:
        return entries
    picked = []
    for name in names:
        hits = [e for e in entries if name in (e.name, e.name.removeprefix("testbed:"), e.kind, str(e.path),
                                                e.path.name)]
        if not hits:
            raise ConfigError(f"no cache entry named {name!r}; `editscale cache list` shows them")
        picked += [e for e in hits if e not in picked]
    return picked


def verify(names: list[str] | None = None, *, root: Path | None = None) -> list[Entry]:
    """Entries (all, or those ``names`` pick: ``testbed:tiny``, ``tiny``, ``smollm2-135m``, ``stats``, a path)
    with every file's sha256 checked; an older editscale's entry whose safetensors files are whole gets its
    files manifest now."""
    entries = _select(list_entries(hashes=True, root=root), names)
    for e in entries:
        if (e.state == "complete, no file hashes" and e.kind in ("testbed", "model")
                and adopt(e.path, KINDS["testbed" if e.kind == "testbed" else "models"])):
            e.state, e.note = "complete", "files manifest written now"
    return entries


def clean(*, everything: bool = False, dry_run: bool = False, root: Path | None = None) -> list[Entry]:
    """Remove incomplete and damaged entries (``everything``: every entry) except builds in progress; returns
    what was (``dry_run``: would be) removed."""
    gone = []
    for e in list_entries(root=root):
        if e.state == "building":
            continue
        if everything or e.state in ("incomplete", "damaged"):
            gone.append(e)
            if not dry_run:
                if e.path.is_dir():
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    e.path.unlink(missing_ok=True)
    return gone
