"""The results store: round trip, one transaction per write, truncation for resume, pandas."""

import math
import sqlite3

import pandas as pd
import pytest

from editscale.errors import RunStateError
from editscale.eval.metrics import edit_metric_names
from editscale.experiment.store import RunStore

VALUES = {"seconds": 0.1, "compute_seconds": 0.05, "entropy": 3.0, "probe_neighborhood": 0.9}


def _edit(i: int, **kw) -> dict:
    return {"edit_idx": i, "case_id": f"c{i}", **{m: 1.0 for m in edit_metric_names()}, **kw}


def _dist(param: str, frob: float) -> dict:
    return {"param": param, "layer": 0, "n_neurons": 64, "n_elements": 64 * 16, "frobenius": frob,
            "distance_per_element": frob / (64 * 16), "distance_per_neuron": frob / 64, "update_norm": 0.5}


def _fill(store: RunStore, n: int) -> None:
    for u in range(1, n + 1):
        store.record_update(u, u, VALUES, False, [_edit(u, paraphrase=float("nan"))], [_dist("w", 0.1 * u)], [])
    store.record_recheck(2, 2, n_correct=2, n_forgotten=0, holds_prob={1: True}, correct={1: True})
    store.record_downstream(0, 0, {"sst2": {"f1": 0.9, "n": 200}})
    store.record_downstream(2, 2, {"sst2": {"f1": 0.8, "n": 200}})


def test_round_trip_and_pandas(tmp_path):
    with RunStore.in_dir(tmp_path, create=True) as store:
        store.set_meta(config={"edits": 3}, fingerprint="abc", versions={"torch": "x"})
        store.write_plan([(1, 1, "c1", "S", {"x": 1}), (2, 1, "c2", "T", {"x": 2})])
        _fill(store, 3)
        store.record_update(4, 4, {**VALUES, "entropy": None}, True, [_edit(4)], [_dist("w", 0.3)],
                            [{"edit_idx": 4, "kind": "flagged", "rule": "update_norm", "value": 9.0,
                              "threshold": 1.0, "detail": "big"}])
    with RunStore.in_dir(tmp_path) as store:
        assert store.meta()["fingerprint"] == "abc" and store.meta()["config"] == {"edits": 3}
        assert store.plan() == [{"x": 1}, {"x": 2}]
        edits = store.frame("edits")
        assert list(edits.edit_idx) == [1, 2, 3, 4] and edits.refused.tolist() == [0, 0, 0, 1]
        assert math.isnan(edits.paraphrase[0]) and edits.efficacy[0] == 1.0
        assert store.frame("rechecks").forgotten.tolist() == [0.0]
        assert store.frame("rechecks").forgotten_prob.tolist() == [0.0]
        assert store.frame("recheck_items").correct.tolist() == [1]
        events = pd.read_sql("SELECT * FROM events", store.connection)
        assert events.rule.tolist() == ["update_norm"] and events.value.tolist() == [9.0]
        assert store.frame("distances").frobenius.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.3])
        assert store.last_update() == 4
        with pytest.raises(RunStateError, match="no table"):
            store.frame("sqlite_master")


def test_a_failed_write_leaves_nothing(tmp_path):
    with RunStore.in_dir(tmp_path, create=True) as store:
        _fill(store, 2)
        with pytest.raises(sqlite3.IntegrityError):  # the edit row collides: the whole update is rolled back
            store.record_update(3, 3, VALUES, False, [_edit(2)], [_dist("w", 0.3)], [])
        assert store.last_update() == 2
        assert store.rows("SELECT COUNT(*) FROM distances")[0][0] == 2
        with pytest.raises(RuntimeError), store.transaction() as con:
            con.execute("DELETE FROM edits")
            raise RuntimeError("killed halfway")
        assert store.rows("SELECT COUNT(*) FROM edits")[0][0] == 2


def test_truncate_after_drops_later_updates(tmp_path):
    with RunStore.in_dir(tmp_path, create=True) as store:
        _fill(store, 3)
        store.record_checkpoint(2, 2, "checkpoints/update_000002")
        store.truncate_after(1)
        assert store.last_update() == 1
        assert store.rows("SELECT COUNT(*) FROM rechecks")[0][0] == 0
        assert store.rows("SELECT DISTINCT update_idx FROM downstream") == [(0,)]
        assert store.checkpoints() == []


def test_missing_database(tmp_path):
    with pytest.raises(RunStateError, match="no results database"):
        RunStore.in_dir(tmp_path)


def test_columns_follow_the_metric_declarations(tmp_path):
    with RunStore.in_dir(tmp_path, create=True) as store:
        cols = set(store.frame("edits").columns)
        assert set(edit_metric_names()) <= cols
        assert {"distance_per_element", "distance_per_neuron", "frobenius"} <= set(store.frame("distances").columns)
        assert store.edit_metrics == list(edit_metric_names())


def test_an_old_or_damaged_database_is_refused_in_one_line(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    con = sqlite3.connect(old / "results.sqlite")
    con.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);")
    con.close()
    with pytest.raises(RunStateError, match="another editscale version.*schema 1"):
        RunStore.in_dir(old)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RunStateError, match="not a readable editscale results database"):
        RunStore.in_dir(bad)


def test_read_only_storage_is_readable(tmp_path):
    import os
    import stat

    with RunStore.in_dir(tmp_path / "run", create=True) as store:
        _fill(store, 2)
    for p in [tmp_path / "run", *(tmp_path / "run").iterdir()]:
        os.chmod(p, stat.S_IRUSR | stat.S_IXUSR | (stat.S_IRUSR if p.is_file() else 0))
    try:
        with RunStore.in_dir(tmp_path / "run", readonly=True) as store:
            assert store.n_edits_done() == 2
    finally:
        for p in [tmp_path / "run", *(tmp_path / "run").iterdir()]:
            os.chmod(p, stat.S_IRWXU)
