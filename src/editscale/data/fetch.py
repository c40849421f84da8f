"""Downloading named sources (``editscale.data.sources``) into the data home, and what it holds.

``fetch(name)`` downloads one source with urllib into ``$EDITSCALE_HOME/data/<its path>``:

- from the source's own URL, or, when ``EDITSCALE_DATA_MIRROR`` is set, from ``MIRROR/<its path>`` (a mirror with
  the data home's layout: an http(s) or file:// URL, or a local folder);
- into a hidden partial file beside the target (``.NAME.part``), resumed with an HTTP Range request when a
  partial from the same URL exists and the server answers 206 (from zero when it answers 200); the bytes
  received are checked against Content-Length, so a transfer that stops early leaves only the partial, which
  the next fetch resumes;
- a source that declares a sha256 is checked (a mismatch removes the download), the final file appears by an
  atomic rename, and the data home's ``manifest.json`` (per name: url, path, size, sha256, fetched time) is
  updated last, atomically;
- a source whose own URL is an archive is converted on the way (the mirror holds plain files): a zip gives the
  member its path names (``SST-2/dev.tsv``), a parquet file of Hugging Face WikiText rows (needs pyarrow) the
  text again.

Every failure is one line: offline (with the URL, the mirror and the local-file alternatives), a transfer that
stopped (run again to resume), a checksum mismatch, full or read-only storage. ``status()`` lists every source:
fetched or not, its size, the manifest's sha256 and, when asked, whether the file still has it.
"""

from __future__ import annotations

import errno
import http.client
import importlib.util
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from editscale.cache import file_lock, sha256_file
from editscale.data import sources
from editscale.data.sources import MIRROR_ENV, Source
from editscale.errors import DataLoadError, StorageError
from editscale.progress import progress_bar

MANIFEST = "manifest.json"  # in the data home: what each fetch wrote, updated last
CHUNK = 1 << 16
TIMEOUT_S = 60.0  # for connecting and for each read
# storage errors: what to call them, and whether the partial download is kept to resume once fixed
_STORAGE = {errno.ENOSPC: ("storage full", True), errno.EDQUOT: ("disk quota exceeded", True),
            errno.EFBIG: ("file too large for this storage", False), errno.EROFS: ("read-only storage", False),
            errno.EACCES: ("permission denied", False)}


def source(name: str) -> Source:
    """The named source; a one-line ``DataLoadError`` listing the known names otherwise."""
    try:
        return sources.SOURCES[name]
    except KeyError:
        raise DataLoadError(f"unknown dataset {name!r}; known: {', '.join(sorted(sources.SOURCES))}") from None


def source_url(src: Source) -> tuple[str, str | None]:
    """Where ``src`` is downloaded from, and the conversion its file needs (``"zip"``, ``"parquet"`` or None):
    ``MIRROR/<path>`` as it is when ``EDITSCALE_DATA_MIRROR`` is set, else the source's own URL."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        if "://" not in mirror:  # a local folder
            mirror = Path(mirror).expanduser().resolve().as_uri()
        return f"{mirror.rstrip('/')}/{urllib.parse.quote(src.path)}", None
    suffix = urllib.parse.urlsplit(src.url).path.rpartition(".")[2].lower()
    return src.url, suffix if suffix in ("zip", "parquet") else None


def manifest_path() -> Path:
    return sources.data_home() / MANIFEST


def read_manifest() -> dict[str, Any]:
    """The data home's manifest: ``{"format": 1, "sources": {name: {url, path, size, sha256, fetched}}}``
    (empty when there is none or it cannot be read)."""
    try:
        manifest = json.loads(manifest_path().read_text())
        if isinstance(manifest, dict) and isinstance(manifest.get("sources"), dict):
            return manifest
    except (OSError, ValueError):
        pass
    return {"format": 1, "sources": {}}


def fetch(name: str, *, force: bool = False, progress: bool | None = None) -> Path:
    """Download the named source into the data home (unless it is there already, or ``force``); its path.

    ``progress``: a progress bar on stderr (None: unless ``EDITSCALE_PROGRESS=0``)."""
    src = source(name)
    target = sources.data_home() / src.path
    if target.is_file() and not force:
        return target
    url, convert = source_url(src)
    if convert == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise DataLoadError(f"{name} comes as a parquet file ({url}) and reading it needs pyarrow: "
                            f"pip install pyarrow, or set {MIRROR_ENV} to a mirror of plain files, "
                            f"or pass a local file instead")
    part = target.with_name(f".{target.name}{'.' + convert if convert else ''}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(target.with_name(f".{target.name}.lock")):  # one download of a file at a time
            if target.is_file() and not force:  # fetched by another process while this one waited
                return target
            if force:
                _remove(part, _meta_path(part))
            _download(name, url, part, progress)
            _finish(name, src, url, convert, part, target)
    except OSError as e:
        if e.errno not in _STORAGE:
            raise
        what, resumable = _STORAGE[e.errno]
        if not resumable:
            _remove(part, _meta_path(part))
        again = f"; then run `editscale data fetch {name}` again to resume" if resumable else ""
        raise StorageError(f"could not write {name} under {sources.data_home()} ({what}: {e.strerror}); "
                           f"free space or set EDITSCALE_HOME to another place{again}") from None
    return target


def _meta_path(part: Path) -> Path:
    """Beside a partial download: the URL it comes from and the server's validator (ETag or Last-Modified)."""
    return part.with_name(part.name + ".json")


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    reason = getattr(e, "reason", None) or e
    text = str(reason).strip().splitlines()
    return text[0] if text else type(reason).__name__


def _offline(name: str, url: str, reason: str) -> str:
    return (f"could not download {name} from {url} ({reason}); check the network, set {MIRROR_ENV} to a mirror, "
            f"or pass a local file instead")


def _download(name: str, url: str, part: Path, progress: bool | None) -> None:
    """``url`` into ``part``, resuming what ``part`` holds when it came from the same URL."""
    meta_path = _meta_path(part)
    offset = part.stat().st_size if part.is_file() else 0
    meta: dict[str, Any] = {}
    if offset:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("url") != url:  # a partial from elsewhere: start over
            offset = 0
    headers = {"User-Agent": "editscale", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # the partial is whole already (or longer than the file): start over
            _remove(part, meta_path)
            return _download(name, url, part, progress)
        raise DataLoadError(_offline(name, url, _reason(e))) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # DNS, refused, timeout, reset
        raise DataLoadError(_offline(name, url, _reason(e))) from None
    except ValueError as e:  # not a URL
        raise DataLoadError(f"cannot download {name} from {url!r} ({e}); set {MIRROR_ENV} to an http(s) or "
                            f"file:// URL, or pass a local file instead") from None
    with resp:
        status = getattr(resp, "status", None) or 200  # file:// answers without a status
        start = resp.headers.get("Content-Range", "").removeprefix("bytes ").partition("-")[0]
        if not (status == 206 and start == str(offset)):
            offset = 0
        length = resp.headers.get("Content-Length", "")
        total = offset + int(length) if length.isdigit() else None
        etag = resp.headers.get("ETag", "")
        validator = (etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")) \
            or (meta.get("validator") if offset else None)
        meta_path.write_text(json.dumps({"url": url, "validator": validator}))
        got = offset
        with open(part, "ab" if offset else "wb") as f, \
                progress_bar(f"downloading {name} (bytes)", total, progress, completed=offset) as advance:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (http.client.HTTPException, OSError) as e:  # the connection closed or timed out
                    raise DataLoadError(_stopped(name, url, got, total, _reason(e))) from None
                if not chunk:
                    break
                f.write(chunk)
                got += len(chunk)
                advance(len(chunk))
    if total is not None and got != total:
        raise DataLoadError(_stopped(name, url, got, total, "the connection closed early"))


def _stopped(name: str, url: str, got: int, total: int | None, reason: str) -> str:
    of = f" of {total:,}" if total is not None else ""
    return (f"the download of {name} from {url} stopped after {got:,}{of} bytes ({reason}); "
            f"run `editscale data fetch {name}` again to resume")


def _finish(name: str, src: Source, url: str, convert: str | None, part: Path, target: Path) -> None:
    """Convert, check the sha256, rename into place and record in the manifest, in that order."""
    done = part
    if convert:
        done = target.with_name(f".{target.name}.converting")
        try:
            (_from_zip if convert == "zip" else _from_parquet)(name, src, url, part, done)
        except DataLoadError:  # a whole but unusable file: not kept
            _remove(done, part, _meta_path(part))
            raise
        except BaseException:
            _remove(done)
            raise
    digest = sha256_file(done)
    if src.sha256 and digest != src.sha256.lower():
        _remove(done, part, _meta_path(part))
        raise DataLoadError(f"{name} from {url} has sha256 {digest}, not the expected {src.sha256}; the download "
                            f"was removed (check {MIRROR_ENV} or the source), or pass a local file instead")
    size = done.stat().st_size
    os.replace(done, target)
    _remove(part, _meta_path(part))
    _record(name, {"url": url, "path": src.path, "size": size, "sha256": digest,
                   "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def _record(name: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the manifest: under its lock, written to a temporary file and renamed over it."""
    path = manifest_path()
    with file_lock(path.with_name(f".{MANIFEST}.lock")):
        manifest = read_manifest()
        manifest["sources"][name] = entry
        tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)
        finally:
            _remove(tmp)


def _from_zip(name: str, src: Source, url: str, archive: Path, out: Path) -> None:
    """The archive's member that the source's path ends with (``glue/SST-2/dev.tsv``: ``SST-2/dev.tsv``)."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.namelist()
                       if not m.endswith("/") and f"/{src.path}".endswith("/" + m.lstrip("/"))]
            if not members:
                raise DataLoadError(f"the archive {url} for {name} has no member {Path(src.path).name} "
                                    f"matching {src.path}; pass a local file instead")
            with z.open(max(members, key=len)) as f, open(out, "wb") as w:
                shutil.copyfileobj(f, w)
    except zipfile.BadZipFile as e:
        raise DataLoadError(f"{name} from {url} is not a readable zip archive ({e}); "
                            f"run `editscale data fetch {name}` again, or pass a local file instead") from None


def _from_parquet(name: str, src: Source, url: str, parquet: Path, out: Path) -> None:
    """The text of Hugging Face WikiText rows (each a line of the original file; blank lines as ``""``):
    ``"\\n\\n"``-joined for a ``.hfjoined.`` file, as its name says; else the original line file again."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(parquet, columns=["text"]).column("text").to_pylist()
    except Exception as e:
        if isinstance(e, OSError) and e.errno in _STORAGE:
            raise
        raise DataLoadError(f"could not read the 'text' column of {name}'s parquet file from {url} "
                            f"({_reason(e)}); pass a local file instead") from None
    rows = [r or "" for r in rows]
    if ".hfjoined." in Path(src.path).name:
        text = "\n\n".join(rows)
    else:
        text = "".join((r if r.endswith("\n") else r + "\n") if r else " \n" for r in rows)
    with open(out, "w", encoding="utf-8", newline="") as w:
        w.write(text)


def status(*, verify: bool = False) -> list[dict[str, Any]]:
    """Every named source: name, about, url, path, fetched (bool), size, sha256 and fetched time (from the
    manifest), partial (bytes of a download to resume, or None) and verified: False when the file's size
    differs from the manifest's; with ``verify``, whether its sha256 matches (and a declared one); else None."""
    records = read_manifest()["sources"]
    home = sources.data_home()
    rows = []
    for src in sources.SOURCES.values():
        path = home / src.path
        rec = records.get(src.name) or {}
        fetched = path.is_file()
        size = path.stat().st_size if fetched else None
        verified = None
        if fetched and rec and rec.get("size") != size:
            verified = False
        elif fetched and verify and (rec or src.sha256):
            digest = sha256_file(path)
            verified = digest == rec.get("sha256", digest) and digest == (src.sha256 or digest).lower()
        partial = sum(p.stat().st_size for p in path.parent.glob(f".{path.name}*.part")) if path.parent.is_dir() \
            else 0
        rows.append({"name": src.name, "about": src.about, "url": src.url, "path": str(path), "fetched": fetched,
                     "size": size, "sha256": rec.get("sha256"), "fetched_at": rec.get("fetched"),
                     "partial": partial or None, "verified": verified})
    return rows
