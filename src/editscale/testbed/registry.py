"""Where built testbed models live, and building them on first use.

A model is cached under ``$EDITSCALE_HOME/testbed/NAME-SPECHASH`` (``EDITSCALE_HOME`` defaults to
``~/.cache/editscale``). A build writes into a temporary directory beside it and renames it into place at
the end, under a file lock (``editscale.cache.build_dir``), so a killed build leaves nothing half-written and
concurrent callers build once. The files manifest (``editscale.cache.FILES_MANIFEST``) is written last; every
load checks the files' sizes against it and refuses a damaged model in one line. A model built by an older
editscale (its testbed manifest, no files manifest) is complete: it gets a files manifest on first use, once
its safetensors files are checked whole, and is never rebuilt for the lack of one.
"""

from __future__ import annotations

from pathlib import Path

from editscale.cache import adopt, build_dir_status, cache_root, entry_damage, read_files_manifest
from editscale.errors import ModelLoadError
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
    """A complete build: the testbed manifest and the files manifest, or the testbed manifest alone (an older
    editscale's build, complete once its testbed manifest was written, its last file)."""
    return (path / MANIFEST_FILE).is_file()


def damage(path: Path) -> list[str]:
    """What is wrong with a built model's files (sizes against its files manifest; an older build's
    safetensors headers against their sizes); empty when nothing is, or when it is not built."""
    return entry_damage(path) if is_built(path) else []


def ensure_built(name: str, *, force: bool = False, root: Path | None = None, threads: int | None = None,
                 progress: bool | None = None) -> Path:
    """The directory of testbed ``name``, building it first if it is not cached (or ``force``)."""
    return ensure_built_status(name, force=force, root=root, threads=threads, progress=progress)[0]


def ensure_built_status(name: str, *, force: bool = False, root: Path | None = None, threads: int | None = None,
                        progress: bool | None = None) -> tuple[Path, str]:
    """``ensure_built`` and what happened: ``"cached"``, ``"built"`` or ``"waited"`` (built by another process
    while this one waited for its lock). A damaged cached build is a one-line ``ModelLoadError`` (``force``
    rebuilds it)."""
    spec = get_spec(name)
    path = model_path(name, root)
    if not force:
        problems = damage(path)
        if problems:
            raise ModelLoadError(f"the cached testbed:{name} in {path} is damaged ({problems[0]}"
                                 f"{f'; and {len(problems) - 1} more' if len(problems) > 1 else ''}); rebuild "
                                 f"it with `editscale testbed build {name} --force`")
        if is_built(path) and read_files_manifest(path) is None:
            adopt(path, MANIFEST_FILE)
    return build_dir_status(path, lambda tmp: build(spec, tmp, threads=threads, progress=progress), is_built,
                            force=force)
