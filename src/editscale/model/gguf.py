"""GGUF files as model directories: converted once into safetensors, with a manifest, and reused afterwards.

transformers reads a GGUF file (``from_pretrained(dir, gguf_file=NAME)``, with the ``gguf`` and ``accelerate``
packages) and dequantises its weights to float32; editscale saves the result with ``save_pretrained`` so that
everything else treats it as any Hugging Face model directory (``load_model``).

- ``ensure_converted(sources, directory)``: the converted directory, built first when it is missing, has no
  manifest (a killed or partial conversion) or was made from other source files (their size or modification
  time changed), or whose files do not have the sizes its files manifest records (a damaged conversion). A
  conversion writes into a temporary directory beside ``directory`` under a lock and renames it into place at
  the end (``editscale.cache.build_dir``); the files manifest (sha256 of every file) is the last file written.
- ``sources`` is one ``.gguf`` file, or the chunks of one in order (a GGUF split across several packages),
  which are joined into one file for the conversion and left out of the result.
- ``conversion_state(sources, directory)``: ``"converted"``, ``"stale"`` or ``"missing"``, without converting.

The manifest (``MANIFEST_FILE``) records the source files with their size and modification time, the sha256
of the GGUF they make, the editscale and transformers versions and how long the conversion took.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from editscale.cache import adopt, build_dir_status, entry_damage
from editscale.errors import ModelLoadError
from editscale.progress import progress_bar

MANIFEST_FILE = "editscale_gguf.json"
_SOURCE_FILE = "source.gguf"  # chunks joined into one file inside the temporary build directory


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _stat(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha256_of(paths: Sequence[Path]) -> str:
    """sha256 of the files' bytes, one after the other (of the GGUF that chunks make)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@contextmanager
def _quiet_gguf_reader(advance=None) -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar per tensor; editscale's one progress line counts the
    megabytes of the tensors read instead (``advance(n)`` per tensor), so a 30-50 s conversion is not silent and
    its ETA is not thrown by a large first tensor (the embedding) or many small ones (the norms)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as reader
    except ImportError:
        yield
        return
    bar = getattr(reader, "tqdm", None)

    def counted(iterable, *args, **kwargs):
        for item in iterable:
            yield item
            if advance is not None:
                advance(_megabytes(item))

    if bar is not None:
        reader.tqdm = counted
    try:
        yield
    finally:
        if bar is not None:
            reader.tqdm = bar


def read_conversion_manifest(directory: Path) -> dict | None:
    """The conversion manifest of ``directory``, or None when it has none or an unreadable one."""
    path = Path(directory) / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _sources(sources: Path | str | Sequence[Path | str]) -> list[Path]:
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    if not paths:
        raise ModelLoadError("no GGUF file given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ModelLoadError(f"GGUF file {missing[0]} does not exist")
    return [p.resolve() for p in paths]


def conversion_state(sources: Path | str | Sequence[Path | str], directory: Path) -> str:
    """``"converted"`` (a manifest whose sources match the files as they are now), ``"stale"`` (a conversion
    of other files, or of these before they changed) or ``"missing"``."""
    manifest = read_conversion_manifest(directory)
    if manifest is None:
        return "missing"
    try:
        now = [_stat(p) for p in _sources(sources)]
    except ModelLoadError:
        return "stale"
    return "converted" if manifest.get("sources") == now else "stale"


def ensure_converted(sources: Path | str | Sequence[Path | str], directory: Path, *,
                     progress: bool | None = None, sha256: str | None = None) -> Path:
    """The model directory converted from ``sources`` (a GGUF file, or its chunks in order), converting first
    unless ``directory`` holds a conversion of these files as they are now. ``sha256``: what the GGUF's
    publisher gives for it, checked before converting."""
    paths = _sources(sources)
    need = 8 * sum(p.stat().st_size for p in paths)  # dequantised to float32: up to 8x a 4-bit file
    directory = build_dir_status(Path(directory),
                                 lambda tmp: convert_gguf(paths, tmp, progress=progress, sha256=sha256),
                                 lambda d: conversion_state(paths, d) == "converted" and not entry_damage(d),
                                 need_bytes=need)[0]
    adopt(directory, MANIFEST_FILE)  # a conversion by an older editscale gets its files manifest once
    return directory


def _megabytes(tensor) -> int:
    """A GGUF tensor's size in whole megabytes, at least 1 (what the conversion's progress counts)."""
    return max(1, round(int(getattr(tensor, "n_bytes", 0)) / 1e6))


def _count_megabytes(path: Path) -> int | None:
    """The megabytes of the tensors a GGUF file holds (its header says), for the conversion's progress; None if
    unreadable."""
    try:
        from gguf import GGUFReader

        return sum(_megabytes(t) for t in GGUFReader(str(path)).tensors)
    except Exception:  # noqa: BLE001 - the conversion itself reports a file it cannot read
        return None


def convert_gguf(sources: Path | str | Sequence[Path | str], out_dir: Path, *,
                 progress: bool | None = None, sha256: str | None = None) -> dict:
    """Convert a GGUF file (or its chunks) into the existing directory ``out_dir``: the dequantised float32
    model and its tokenizer (``save_pretrained``), then the manifest, last. Returns the manifest."""
    try:
        import gguf  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ModelLoadError("reading GGUF files needs the gguf and accelerate packages: "
                             "pip install gguf accelerate") from None
    import torch

    paths = _sources(sources)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    stats = [_stat(p) for p in paths]
    digest = sha256_of(paths)
    if sha256 is not None and digest != sha256:
        raise ModelLoadError(f"{paths[0].name}{' and the other chunks' if len(paths) > 1 else ''} do not make the "
                             f"published GGUF (sha256 {digest[:12]}..., expected {sha256[:12]}...); reinstall them")
    if len(paths) == 1:
        source = paths[0]
    else:
        source = out_dir / _SOURCE_FILE
        with open(source, "wb") as out:
            for p in paths:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        what = paths[0].name if len(paths) == 1 else paths[0].name.rsplit(".part", 1)[0]
        megabytes = _count_megabytes(source)
        # two lines: reading the file and building the model (a minute for Gemma 3, before any tensor), then
        # the tensors, whose clock starts at the first one so their ETA is theirs
        reading, tensors = contextlib.ExitStack(), contextlib.ExitStack()
        reading.enter_context(progress_bar(f"converting {what} (once): reading the file", None, progress))
        advance_tensors = []

        def advance(n: int) -> None:
            if not advance_tensors:
                reading.close()
                advance_tensors.append(tensors.enter_context(
                    progress_bar(f"converting {what} (once): MB of tensors", megabytes, progress)))
            advance_tensors[0](n)

        with reading, tensors, _quiet_gguf_reader(advance):
            tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
            model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 -- any failure to read the file is the file's: one line, not a trace
        raise ModelLoadError(f"transformers could not read the GGUF file {paths[0]}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    packed = sorted({str(p.dtype) for p in model.parameters() if not p.dtype.is_floating_point})
    if packed:
        raise ModelLoadError(f"{paths[0]} loaded with packed ({', '.join(packed)}) weights, not dequantised ones; "
                             "editscale edits float weights only")
    # the weights are plain float32 now: drop what marks the model as quantized, so it saves and reloads plainly
    for obj in (model, model.config):
        if hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    if source.parent == out_dir:
        source.unlink()
    manifest = {
        "sources": stats,
        "sha256": digest,
        "size": sum(s["size"] for s in stats),
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "editscale": _version("editscale"),
        "transformers": _version("transformers"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    tmp = out_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out_dir / MANIFEST_FILE)
    return manifest
