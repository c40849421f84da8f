"""The cache (issue 16 part 6): a files manifest (size and sha256 of every file) written last by the builder,
sizes checked on every load and hashes on ``editscale cache verify``, entries of an older editscale adopted
without a rebuild, a waiter on a build lock that says it waited, and ``editscale cache list|verify|clean``."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from editscale import cache
from editscale.cache import (
    FILES_MANIFEST,
    build_dir_status,
    entry_problems,
    read_files_manifest,
    write_files_manifest,
)
from editscale.errors import ModelLoadError
from editscale.model.loading import MANIFEST_FILE
from editscale.testbed import registry


def _fake_build(tmp: Path) -> None:
    (tmp / "a.txt").write_text("alpha\n")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "b.bin").write_bytes(b"\0" * 100)


def _ready(path: Path) -> bool:
    return (path / "a.txt").is_file()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITSCALE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_build_ends_with_its_manifest_and_damage_is_named(tmp_path):
    path, state = build_dir_status(tmp_path / "entry", _fake_build, _ready)
    assert state == "built" and sorted(p.name for p in path.parent.iterdir()) == ["entry", "entry.lock"]
    manifest = read_files_manifest(path)
    assert set(manifest["files"]) == {"a.txt", "sub/b.bin"}
    assert manifest["files"]["a.txt"]["size"] == 6 and len(manifest["files"]["a.txt"]["sha256"]) == 64
    assert entry_problems(path) == [] and entry_problems(path, hashes=True) == []
    assert build_dir_status(path, _fake_build, _ready) == (path, "cached")
    (path / "a.txt").write_text("ALPHA\n")  # same size, other bytes: only a hash check sees it
    assert entry_problems(path) == []
    assert entry_problems(path, hashes=True) == ["a.txt has changed (sha256 differs from its manifest)"]
    (path / "sub" / "b.bin").write_bytes(b"\0" * 50)
    (path / "extra.txt").write_text("x")
    problems = entry_problems(path)
    assert "sub/b.bin is 50 bytes, its manifest says 100" in problems
    assert "extra.txt was not written by the builder" in problems
    (path / "a.txt").unlink()
    assert "a.txt is missing" in entry_problems(path)
    assert entry_problems(tmp_path) is None  # no manifest


def test_a_failed_build_leaves_nothing(tmp_path):
    def broken(tmp: Path) -> None:
        _fake_build(tmp)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_dir_status(tmp_path / "entry", broken, _ready)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even an empty lock file


def test_a_waiter_on_the_build_lock_says_it_waited(tmp_path):
    started = threading.Event()

    def slow(tmp: Path) -> None:
        started.set()
        time.sleep(0.5)
        _fake_build(tmp)

    def must_not_build(tmp: Path) -> None:
        raise AssertionError("the waiter built again")

    first: list[tuple[Path, str]] = []
    builder = threading.Thread(target=lambda: first.append(build_dir_status(tmp_path / "e", slow, _ready)))
    builder.start()
    started.wait(10)
    assert cache.lock_is_held(tmp_path / "e.lock")
    assert build_dir_status(tmp_path / "e", must_not_build, _ready)[1] == "waited"
    builder.join()
    assert first[0][1] == "built" and not cache.lock_is_held(tmp_path / "e.lock")


def _legacy_copy(tiny_testbed: Path, home: Path) -> Path:
    """testbed:tiny as an older editscale left it in the cache: no files manifest."""
    entry = registry.model_path("tiny")
    shutil.copytree(tiny_testbed, entry, ignore=shutil.ignore_patterns(FILES_MANIFEST))
    return entry


def test_an_older_build_is_adopted_not_rebuilt(tiny_testbed, home, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a complete build of an older editscale was rebuilt")

    monkeypatch.setattr(registry, "build", no_build)
    entry = _legacy_copy(tiny_testbed, home)
    assert registry.ensure_built_status("tiny") == (entry, "cached")
    assert set(read_files_manifest(entry)["files"]) == {p.name for p in entry.iterdir()} - {FILES_MANIFEST}
    assert entry_problems(entry, hashes=True) == []


def test_a_damaged_cached_testbed_is_refused_in_one_line(tiny_testbed, home, monkeypatch):
    monkeypatch.setattr(registry, "build", lambda *a, **k: pytest.fail("rebuilt without --force"))
    entry = _legacy_copy(tiny_testbed, home)
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # an older build, truncated: its header gives it away
    with pytest.raises(ModelLoadError, match="damaged .*model.safetensors is truncated.*--force"):
        registry.ensure_built("tiny")
    assert read_files_manifest(entry) is None  # a damaged entry is not adopted


def test_cli_build_reports_a_wait_for_another_build(tiny_testbed, home, monkeypatch, cli):
    started = threading.Event()

    def slow_copy(spec, tmp, **kwargs):
        started.set()
        time.sleep(0.5)
        for p in tiny_testbed.iterdir():
            if p.name != FILES_MANIFEST:
                shutil.copy(p, tmp / p.name)

    monkeypatch.setattr(registry, "build", slow_copy)
    builder = threading.Thread(target=registry.ensure_built, args=("tiny",))
    builder.start()
    started.wait(10)
    code, out, err = cli("testbed", "build", "tiny", "--json")
    builder.join()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["state"] == "waited" and summary["cached"] is True
    code, out, _ = cli("testbed", "build", "tiny")
    assert code == 0 and "(cached;" in out


def test_cache_list_verify_clean(tiny_testbed, home, cli):
    from editscale.cache_entries import list_entries

    good = registry.model_path("tiny")
    shutil.copytree(tiny_testbed, good, ignore=shutil.ignore_patterns(FILES_MANIFEST))  # an older build
    broken = good.with_name("tiny-000000000000")  # another spec's build, damaged since
    shutil.copytree(tiny_testbed, broken, ignore=shutil.ignore_patterns(FILES_MANIFEST))
    write_files_manifest(broken)
    (broken / "world.jsonl").write_text("edited by hand\n")
    killed = good.with_name(f".{good.name}-abcd1234")  # a killed build's temporary directory
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"\0" * 10)
    stats = home / "stats"
    stats.mkdir()
    import torch
    from safetensors.torch import save_file

    from editscale.stats.second_moment import _checksum

    matrix = torch.eye(4)
    save_file({"mom2": matrix}, str(stats / "mom2_L0_x.safetensors"), metadata={"sha256": _checksum(matrix)})
    states = {e.path.name: e.state for e in list_entries()}
    assert states == {good.name: "complete, no file hashes", broken.name: "damaged", killed.name: "incomplete",
                      "mom2_L0_x.safetensors": "complete"}

    code, out, _ = cli("cache", "list", "--json")
    assert code == 0 and {e["name"] for e in json.loads(out)} == {"testbed:tiny", "mom2_L0_x.safetensors"}
    code, out, _ = cli("cache", "verify", "tiny", "--json")  # the older build gets its manifest; the damaged fails
    assert code == 1
    verified = {Path(e["path"]).name: e["state"] for e in json.loads(out)}
    assert verified == {good.name: "complete", broken.name: "damaged", killed.name: "incomplete"}
    assert read_files_manifest(good) is not None
    code, out, _ = cli("cache", "verify", "testbed:tiny")
    assert code == 1 and "2 damaged or incomplete" in out
    code, out, _ = cli("cache", "clean", "--dry-run")
    assert code == 0 and "would remove 2 entries" in out and broken.exists()
    code, out, _ = cli("cache", "clean")
    assert code == 0 and not broken.exists() and not killed.exists() and good.exists()
    code, out, _ = cli("cache", "verify")
    assert code == 0 and "2 sound, 0 damaged" in out
    with (stats / "mom2_L0_x.safetensors").open("r+b") as f:  # one byte of the matrix changed in place
        f.seek(-1, 2)
        f.write(b"\x01")
    assert cli("cache", "verify", "stats")[0] == 1
    assert cli("cache", "list")[0] == 0  # sizes alone cannot see it


def test_cache_clean_keeps_a_build_in_progress(home, cli):
    from editscale.cache import file_lock

    entry = home / "testbed" / "demo-0123456789ab"
    tmp = entry.with_name(f".{entry.name}-zzzz")
    tmp.mkdir(parents=True)
    with file_lock(entry.with_name(entry.name + ".lock")):
        _, out, _ = cli("cache", "list", "--json")
        assert [e["state"] for e in json.loads(out)] == ["building"]
        assert cli("cache", "clean", "--all")[0] == 0 and tmp.exists()
    assert cli("cache", "clean")[0] == 0 and not tmp.exists()


def test_manifest_is_the_last_file_written(tmp_path, monkeypatch):
    order: list[str] = []
    real = cache.os.replace

    def record(src, dst):
        order.append(Path(dst).name)
        return real(src, dst)

    monkeypatch.setattr(cache.os, "replace", record)
    build_dir_status(tmp_path / "entry", _fake_build, _ready)
    assert order == [FILES_MANIFEST, "entry"]  # the manifest, then the directory's rename into place
    assert not (tmp_path / "entry" / MANIFEST_FILE).exists()
