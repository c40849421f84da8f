"""Fetching named datasets (``editscale.data.fetch``, ``editscale data list|fetch``) from a local HTTP server.

The server runs in a thread and serves a temporary folder laid out like the data home; it answers Range
requests (206) unless told not to, and can be told to announce a whole file but close the connection early.
Everything is offline and the files are a few hundred bytes.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import json
import socket
import threading
import urllib.parse
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from editscale.data import fetch as fetch_mod
from editscale.data import sources
from editscale.errors import DataLoadError, StorageError

REL = "counterfact/counterfact-val.json"
RECORDS = [
    {"case_id": 0, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
     "target_new": "English", "ground_truth": "French", "rephrase_prompt": "Danielle Darrieux's mother tongue is",
     "locality_prompt": "The mother tongue of Léon Blum is", "locality_ground_truth": "French"},
    {"case_id": 1, "prompt": "Toko Yasuda plays the", "subject": "Toko Yasuda", "target_new": "piano",
     "ground_truth": "guitar", "rephrase_prompt": "The instrument Toko Yasuda plays is the",
     "locality_prompt": "Jimmy Page plays the", "locality_ground_truth": "guitar"},
]
BODY = (json.dumps(RECORDS, indent=1, ensure_ascii=False) + "\n").encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET with Range support; ``server.cut[rel] = n`` sends n bytes of the next answer for ``rel`` (after
    announcing them all) and closes; ``server.ranges = False`` ignores Range (always 200)."""

    def do_GET(self) -> None:
        srv = self.server
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path.lstrip("/"))
        rng = self.headers.get("Range")
        srv.log.append((rel, rng))
        file = srv.root / rel
        if not file.is_file():
            self.send_error(404)
            return
        body, start = file.read_bytes(), 0
        if rng and srv.ranges:
            start = int(rng.removeprefix("bytes=").partition("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        data = body[start:]
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        cut = srv.cut.pop(rel, None)
        self.wfile.write(data if cut is None else data[:cut])
        self.wfile.flush()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server(tmp_path, monkeypatch):
    """A local HTTP server of a data-home-shaped folder; EDITSCALE_DATA_MIRROR points at it, EDITSCALE_HOME at
    an empty folder, progress bars off."""
    root = tmp_path / "mirror"
    (root / "counterfact").mkdir(parents=True)
    (root / REL).write_bytes(BODY)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.root, srv.log, srv.cut, srv.ranges = root, [], {}, True
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    monkeypatch.setenv("EDITSCALE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(sources.MIRROR_ENV, srv.url)
    monkeypatch.setenv("EDITSCALE_PROGRESS", "0")
    yield srv
    srv.shutdown()
    srv.server_close()


def _home() -> Path:
    return sources.data_home()


def _manifest() -> dict:
    path = _home() / "manifest.json"
    return json.loads(path.read_text())["sources"] if path.exists() else {}


def _leftovers() -> list[str]:
    return sorted(p.name for p in _home().rglob("*") if p.is_file() and p.name.endswith((".part", ".part.json")))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_fetched_source_resolves_loads_and_is_in_the_manifest(server):
    from editscale.names import load_cases, resolve_data_path

    with pytest.raises(DataLoadError, match="editscale data fetch counterfact-val"):
        resolve_data_path("counterfact-val")
    path = fetch_mod.fetch("counterfact-val", progress=False)
    assert path == _home() / REL and path.read_bytes() == BODY
    assert resolve_data_path("counterfact-val") == str(path)
    cases = load_cases("counterfact-val")
    assert [c.request.subject for c in cases] == ["Danielle Darrieux", "Toko Yasuda"]
    entry = _manifest()["counterfact-val"]
    assert entry["sha256"] == hashlib.sha256(BODY).hexdigest() and entry["size"] == len(BODY)
    assert entry["url"] == f"{server.url}/{REL}" and entry["path"] == REL and entry["fetched"].endswith("Z")
    assert _leftovers() == []
    row = {r["name"]: r for r in fetch_mod.status(verify=True)}["counterfact-val"]
    assert row["fetched"] and row["verified"] is True and row["size"] == len(BODY)
    assert row["sha256"] == entry["sha256"] and row["partial"] is None
    assert not {r["name"]: r for r in fetch_mod.status()}["zsre"]["fetched"]
    n = len(server.log)
    assert fetch_mod.fetch("counterfact-val") == path and len(server.log) == n  # fetched already: no request
    path.write_bytes(BODY.replace(b"English", b"Spanish"))  # same size, other bytes: only a hash check sees it
    assert {r["name"]: r for r in fetch_mod.status()}["counterfact-val"]["verified"] is None
    assert {r["name"]: r for r in fetch_mod.status(verify=True)}["counterfact-val"]["verified"] is False
    path.write_bytes(BODY[:-1])  # another size: seen without reading it
    assert {r["name"]: r for r in fetch_mod.status()}["counterfact-val"]["verified"] is False


def test_a_truncated_transfer_leaves_only_the_partial_and_the_next_fetch_resumes(server):
    server.cut[REL] = 100
    with pytest.raises(DataLoadError) as info:
        fetch_mod.fetch("counterfact-val")
    msg = str(info.value)
    assert "\n" not in msg and f"stopped after 100 of {len(BODY):,} bytes" in msg
    assert "editscale data fetch counterfact-val" in msg and "resume" in msg
    assert not (_home() / REL).exists() and "counterfact-val" not in _manifest()
    part = _home() / "counterfact" / ".counterfact-val.json.part"
    assert part.read_bytes() == BODY[:100]
    assert {r["name"]: r for r in fetch_mod.status()}["counterfact-val"]["partial"] == 100
    path = fetch_mod.fetch("counterfact-val")
    assert server.log[-1] == (REL, "bytes=100-")
    assert path.read_bytes() == BODY and _leftovers() == []
    assert _manifest()["counterfact-val"]["sha256"] == hashlib.sha256(BODY).hexdigest()


def test_a_server_that_ignores_range_restarts_from_zero(server):
    server.cut[REL] = 100
    with pytest.raises(DataLoadError):
        fetch_mod.fetch("counterfact-val")
    server.ranges = False  # answers 200 with the whole file
    assert fetch_mod.fetch("counterfact-val").read_bytes() == BODY
    assert server.log[-1] == (REL, "bytes=100-") and _leftovers() == []


def test_a_whole_partial_is_fetched_again(server):
    """A process that died between the last byte and the rename: the server answers 416 to the Range."""
    part = _home() / "counterfact" / ".counterfact-val.json.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY)
    part.with_name(part.name + ".json").write_text(json.dumps({"url": f"{server.url}/{REL}", "validator": None}))
    assert fetch_mod.fetch("counterfact-val").read_bytes() == BODY
    assert [r for _, r in server.log] == [f"bytes={len(BODY)}-", None] and _leftovers() == []


def test_a_checksum_mismatch_is_one_line_and_leaves_nothing(server, monkeypatch):
    src = sources.SOURCES["counterfact-val"]
    monkeypatch.setitem(sources.SOURCES, "counterfact-val", replace(src, sha256="0" * 64))
    with pytest.raises(DataLoadError) as info:
        fetch_mod.fetch("counterfact-val")
    msg = str(info.value)
    assert "\n" not in msg and "sha256" in msg and "0" * 64 in msg and hashlib.sha256(BODY).hexdigest() in msg
    assert not (_home() / REL).exists() and _leftovers() == [] and _manifest() == {}
    monkeypatch.setitem(sources.SOURCES, "counterfact-val", replace(src, sha256=hashlib.sha256(BODY).hexdigest()))
    assert fetch_mod.fetch("counterfact-val").read_bytes() == BODY


def test_offline_is_one_line_naming_the_url_and_the_alternatives(server, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv(sources.MIRROR_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(DataLoadError) as info:
        fetch_mod.fetch("counterfact-val")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"could not download counterfact-val from http://127.0.0.1:{port}/{REL} (")
    assert "check the network" in msg and sources.MIRROR_ENV in msg and "pass a local file instead" in msg
    assert not (_home() / REL).exists() and _leftovers() == [] and _manifest() == {}


def test_unknown_names_and_missing_files_on_the_mirror(server):
    with pytest.raises(DataLoadError, match=r"unknown dataset 'nope'; known: counterfact, .*zsre"):
        fetch_mod.fetch("nope")
    with pytest.raises(DataLoadError, match=r"could not download zsre from .*zsre_mend_eval.json \(HTTP 404"):
        fetch_mod.fetch("zsre")


@pytest.mark.parametrize("as_uri", [True, False])
def test_a_file_mirror_or_a_folder(server, monkeypatch, as_uri):
    monkeypatch.setenv(sources.MIRROR_ENV, server.root.as_uri() if as_uri else str(server.root))
    assert fetch_mod.fetch("counterfact-val").read_bytes() == BODY
    assert _manifest()["counterfact-val"]["url"].startswith("file://") and server.log == []


def test_storage_errors_are_one_line_and_keep_only_resumable_partials(server, monkeypatch):
    part = _home() / "counterfact" / ".counterfact-val.json.part"

    def fail(code):
        def _finish(*args):
            raise OSError(code, "simulated")
        return _finish

    monkeypatch.setattr(fetch_mod, "_finish", fail(errno.ENOSPC))
    with pytest.raises(StorageError) as info:
        fetch_mod.fetch("counterfact-val")
    assert "\n" not in str(info.value) and "storage full" in str(info.value) and "resume" in str(info.value)
    assert part.is_file() and not (_home() / REL).exists()
    monkeypatch.setattr(fetch_mod, "_finish", fail(errno.EFBIG))
    with pytest.raises(StorageError, match="file too large"):
        fetch_mod.fetch("counterfact-val", force=True)
    assert _leftovers() == [] and not (_home() / REL).exists()


def test_a_zip_from_the_source_url_gives_its_member(server, monkeypatch):
    dev = b"sentence\tlabel\na fine film .\t1\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("SST-2/train.tsv", b"sentence\tlabel\nother .\t0\n")
        z.writestr("SST-2/dev.tsv", dev)
    (server.root / "SST-2.zip").write_bytes(buf.getvalue())
    monkeypatch.delenv(sources.MIRROR_ENV)
    monkeypatch.setitem(sources.SOURCES, "sst2", replace(sources.SOURCES["sst2"], url=f"{server.url}/SST-2.zip"))
    path = fetch_mod.fetch("sst2")
    assert path == _home() / "glue" / "SST-2" / "dev.tsv" and path.read_bytes() == dev
    assert _manifest()["sst2"]["url"] == f"{server.url}/SST-2.zip" and _leftovers() == []
    assert sorted(p.name for p in path.parent.iterdir()) == [".dev.tsv.lock", "dev.tsv"]


def test_parquet_rows_from_the_source_url_give_the_text(server, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = ["", " = Homarus = \n", "", " Homarus is a lobster .\n"]
    pq.write_table(pa.table({"text": rows}), server.root / "rows.parquet")
    monkeypatch.delenv(sources.MIRROR_ENV)
    for name in ("wikitext-2", "wikitext-2-valid"):
        monkeypatch.setitem(sources.SOURCES, name, replace(sources.SOURCES[name], url=f"{server.url}/rows.parquet"))
    # the tokenized line file again (blank lines " "), and the "\n\n"-joined rows its name says
    assert fetch_mod.fetch("wikitext-2-valid").read_text() == " \n = Homarus = \n \n Homarus is a lobster .\n"
    assert fetch_mod.fetch("wikitext-2").read_text() == "\n\n".join(rows)
    assert _leftovers() == []


def test_parquet_without_pyarrow_says_how(server, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pyarrow" else find_spec(n, *a))
    monkeypatch.delenv(sources.MIRROR_ENV)
    with pytest.raises(DataLoadError) as info:
        fetch_mod.fetch("wikitext-2-valid")
    msg = str(info.value)
    assert "\n" not in msg and "pip install pyarrow" in msg and sources.MIRROR_ENV in msg and "local file" in msg


# --- the CLI ---------------------------------------------------------------------------------------------------
def test_cli_data_list_and_fetch(server, cli):
    code, out, err = cli("data", "list")
    assert code == 0 and "counterfact-val" in out and "not fetched" in out
    code, out, err = cli("data", "fetch", "counterfact-val")
    assert code == 0 and out.strip().splitlines() == [str(_home() / REL)]
    code, out, err = cli("data", "fetch", "counterfact-val")
    assert code == 0 and "fetched already" in err and out.strip() == str(_home() / REL)
    code, out, err = cli("data", "list", "--json", "--verify")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["counterfact-val"]["fetched"] and rows["counterfact-val"]["verified"] is True
    assert not rows["sst2"]["fetched"] and set(rows) == set(sources.SOURCES)


def test_cli_fetch_shows_progress_and_errors_are_one_line(server, cli, monkeypatch):
    monkeypatch.setenv("EDITSCALE_PROGRESS", "1")
    code, out, err = cli("data", "fetch", "counterfact-val", "--force")
    assert code == 0 and "downloading counterfact-val" in err and out.strip() == str(_home() / REL)
    monkeypatch.setenv("EDITSCALE_PROGRESS", "0")
    code, out, err = cli("data", "fetch", "counterfact-val", "nope")
    assert code == 2 and out == "" and err.strip().splitlines() == [
        f"error: unknown dataset 'nope'; known: {', '.join(sorted(sources.SOURCES))}"]
    monkeypatch.setenv(sources.MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}")
    code, out, err = cli("data", "fetch", "zsre")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: could not download zsre from http://")
    assert "pass a local file instead" in lines[0]


def test_cli_help_explains(cli):
    code, out, _ = cli("data", "--help")
    assert code == 0 and "EDITSCALE_DATA_MIRROR" in out and "fetch" in out and "list" in out
    code, out, _ = cli("data", "fetch", "--help")
    assert code == 0 and "--force" in out and "resume" in out
