"""The results store: round trip, one transaction per write, truncation for resume, pandas."""

import math
import sqlite3

import pandas as pd
import pytest

from editscale.errors import RunStateError
from editscale.experiment.store import EDIT_METRICS, RunStore


def _edit(i: int, **kw) -> dict:
    return {"edit_idx": i, "case_id": f"c{i}", **{m: 1.0 for m in EDIT_METRICS}, **kw}


def _dist(param: str, frob: float) -> dict:
    return {"param": param, "layer": 0, "n_neurons": 64, "frobenius": frob, "normalized": frob / 64,
            "update_norm": 0.5}


def _fill(store: RunStore, n: int) -> None:
    for u in range(1, n + 1):
        store.record_update(u, u, 0.1, 0.05, 3.0, 0.9, False, [_edit(u, paraphrase=float("nan"))],
                            [_dist("w", 0.1 * u)], [])
    store.record_recheck(2, 2, {1: True})
    store.record_downstream(0, 0, {"sst2": {"f1": 0.9, "n": 200}})
    store.record_downstream(2, 2, {"sst2": {"f1": 0.8, "n": 200}})


def test_round_trip_and_pandas(tmp_path):
    with RunStore.in_dir(tmp_path, create=True) as store:
        store.set_meta(config={"edits": 3}, fingerprint="abc", versions={"torch": "x"})
        store.write_plan([(1, 1, "c1", "S", {"x": 1}), (2, 1, "c2", "T", {"x": 2})])
        _fill(store, 3)
        store.record_update(4, 4, 0.1, 0.05, None, None, True, [_edit(4)], [_dist("w", 0.3)],
                            [{"edit_idx": 4, "kind": "flagged", "rule": "update_norm", "value": 9.0,
                              "threshold": 1.0, "detail": "big"}])
    with RunStore.in_dir(tmp_path) as store:
        assert store.meta()["fingerprint"] == "abc" and store.meta()["config"] == {"edits": 3}
        assert store.plan() == [{"x": 1}, {"x": 2}]
        edits = store.frame("edits")
        assert list(edits.edit_idx) == [1, 2, 3, 4] and edits.refused.tolist() == [0, 0, 0, 1]
        assert math.isnan(edits.paraphrase[0]) and edits.efficacy[0] == 1.0
        assert store.frame("rechecks").forgotten_pct.tolist() == [0.0]
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
            store.record_update(3, 3, 0.1, 0.05, None, None, False, [_edit(2)], [_dist("w", 0.3)], [])
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
