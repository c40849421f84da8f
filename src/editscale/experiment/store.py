"""The results store of one run: a single SQLite database, every write one transaction, readable with pandas.

Tables (``pd.read_sql("SELECT * FROM edits", store.connection)`` or ``store.frame("edits")``):

- ``meta``: key -> JSON value: ``config``, ``versions``, ``fingerprint``, ``created``, ``status``, ...
- ``plan``: the sampled edits in order: ``edit_idx``, ``update_idx``, ``case_id``, ``subject``, ``case_json``.
- ``edits``: per edit, scored right after its update: efficacy / paraphrase / neighborhood, their magnitudes
  and top-1 accuracies, and ``refused`` (1 where the guard reverted the update).
- ``updates``: per update: edits so far, ``seconds`` in all and ``compute_seconds`` of them in the method,
  refused, and the guard's measurements (where taken):
  generation ``entropy`` and ``probe_neighborhood``, the neighborhood score of a fixed probe set.
- ``distances``: per update and edited matrix: ``frobenius`` = ||W - W_orig||_F, ``normalized`` =
  frobenius / ``n_neurons`` (the paper's distance), ``update_norm`` = ||this update||_F (0 where the matrix
  was not touched by this update), ``layer``.
- ``rechecks``: per re-check: how many earlier successful edits were checked, how many are forgotten, and
  the seconds it took.
- ``recheck_items``: per re-check and checked edit: ``holds`` (1/0).
- ``downstream``: long format ``update_idx, n_edits, task, metric, value`` (f1, accuracy, mcc, n, ...).
- ``events``: flagged / refused updates with the rule that fired, its value and threshold.
- ``checkpoints``: the update each checkpoint was taken after.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from editscale.errors import RunStateError

DB_NAME = "results.sqlite"

EDIT_METRICS = (
    "efficacy", "efficacy_magnitude", "efficacy_acc",
    "paraphrase", "paraphrase_magnitude", "paraphrase_acc",
    "neighborhood", "neighborhood_magnitude", "neighborhood_acc",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plan (
    edit_idx INTEGER PRIMARY KEY, update_idx INTEGER NOT NULL, case_id TEXT NOT NULL, subject TEXT NOT NULL,
    case_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS edits (
    edit_idx INTEGER PRIMARY KEY, update_idx INTEGER NOT NULL, case_id TEXT NOT NULL,
    {", ".join(f"{m} REAL" for m in EDIT_METRICS)}, refused INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS updates (
    update_idx INTEGER PRIMARY KEY, n_edits INTEGER NOT NULL, seconds REAL NOT NULL,
    compute_seconds REAL NOT NULL, entropy REAL,
    probe_neighborhood REAL, refused INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS distances (
    update_idx INTEGER NOT NULL, param TEXT NOT NULL, layer INTEGER, n_neurons INTEGER NOT NULL,
    frobenius REAL NOT NULL, normalized REAL NOT NULL, update_norm REAL NOT NULL,
    PRIMARY KEY (update_idx, param));
CREATE TABLE IF NOT EXISTS rechecks (
    update_idx INTEGER PRIMARY KEY, n_edits INTEGER NOT NULL, n_checked INTEGER NOT NULL,
    n_forgotten INTEGER NOT NULL, forgotten_pct REAL, seconds REAL);
CREATE TABLE IF NOT EXISTS recheck_items (
    update_idx INTEGER NOT NULL, edit_idx INTEGER NOT NULL, holds INTEGER NOT NULL,
    PRIMARY KEY (update_idx, edit_idx));
CREATE TABLE IF NOT EXISTS downstream (
    update_idx INTEGER NOT NULL, n_edits INTEGER NOT NULL, task TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, PRIMARY KEY (update_idx, task, metric));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, update_idx INTEGER NOT NULL, edit_idx INTEGER NOT NULL,
    kind TEXT NOT NULL, rule TEXT NOT NULL, value REAL, threshold REAL, detail TEXT);
CREATE TABLE IF NOT EXISTS checkpoints (
    update_idx INTEGER PRIMARY KEY, n_edits INTEGER NOT NULL, path TEXT NOT NULL);
"""

TABLES = ("meta", "plan", "edits", "updates", "distances", "rechecks", "recheck_items", "downstream", "events",
          "checkpoints")
# tables whose rows belong to one update, and are dropped when a resume redoes that update
_PER_UPDATE = ("edits", "updates", "distances", "rechecks", "recheck_items", "downstream", "events", "checkpoints")


def _nan_to_none(x: Any) -> Any:
    return None if isinstance(x, float) and math.isnan(x) else x


class RunStore:
    """One run's database. Open with ``RunStore(path)``; ``create=True`` makes a new one."""

    def __init__(self, path: str | Path, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise RunStateError(f"no results database at {self.path}; is this a run directory?")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(self.path, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")
        if create:
            self.connection.executescript(_SCHEMA)

    @classmethod
    def in_dir(cls, run_dir: str | Path, create: bool = False) -> RunStore:
        return cls(Path(run_dir) / DB_NAME, create=create)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside happen together or not at all."""
        con = self.connection
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # --- run description ---------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.transaction() as con:
            con.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            [(k, json.dumps(v)) for k, v in values.items()])

    def meta(self) -> dict[str, Any]:
        rows = self.connection.execute("SELECT key, value FROM meta").fetchall()
        return {k: json.loads(v) for k, v in rows}

    def write_plan(self, rows: Iterable[tuple[int, int, str, str, dict[str, Any]]]) -> None:
        """``(edit_idx, update_idx, case_id, subject, case_dict)`` for every planned edit."""
        with self.transaction() as con:
            con.execute("DELETE FROM plan")
            con.executemany("INSERT INTO plan VALUES (?, ?, ?, ?, ?)",
                            [(e, u, c, s, json.dumps(d)) for e, u, c, s, d in rows])

    def plan(self) -> list[dict[str, Any]]:
        rows = self.connection.execute("SELECT case_json FROM plan ORDER BY edit_idx").fetchall()
        return [json.loads(r[0]) for r in rows]

    # --- results -------------------------------------------------------------------------------------
    def record_update(
        self,
        update_idx: int,
        n_edits: int,
        seconds: float,
        compute_seconds: float,
        entropy: float | None,
        probe_neighborhood: float | None,
        refused: bool,
        edits: Sequence[dict[str, Any]],
        distances: Sequence[dict[str, Any]],
        events: Sequence[dict[str, Any]],
    ) -> None:
        """Everything measured for one update, in one transaction."""
        with self.transaction() as con:
            con.execute("INSERT INTO updates VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (update_idx, n_edits, seconds, compute_seconds, _nan_to_none(entropy),
                         _nan_to_none(probe_neighborhood), int(refused)))
            con.executemany(
                f"INSERT INTO edits VALUES (?, ?, ?, {', '.join('?' for _ in EDIT_METRICS)}, ?)",
                [(e["edit_idx"], update_idx, e["case_id"], *(_nan_to_none(e[m]) for m in EDIT_METRICS),
                  int(refused)) for e in edits])
            con.executemany(
                "INSERT INTO distances VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(update_idx, d["param"], d["layer"], d["n_neurons"], d["frobenius"], d["normalized"],
                  d["update_norm"]) for d in distances])
            self._insert_events(con, update_idx, events)

    @staticmethod
    def _insert_events(con: sqlite3.Connection, update_idx: int, events: Sequence[dict[str, Any]]) -> None:
        con.executemany(
            "INSERT INTO events (update_idx, edit_idx, kind, rule, value, threshold, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(update_idx, ev["edit_idx"], ev["kind"], ev["rule"], _nan_to_none(ev.get("value")),
              _nan_to_none(ev.get("threshold")), ev.get("detail", "")) for ev in events])

    def record_recheck(self, update_idx: int, n_edits: int, holds: dict[int, bool], seconds: float = 0.0) -> None:
        """Which earlier successful edits (by ``edit_idx``) still hold after ``update_idx``."""
        n_forgotten = sum(not h for h in holds.values())
        pct = 100.0 * n_forgotten / len(holds) if holds else None
        with self.transaction() as con:
            con.execute("INSERT INTO rechecks VALUES (?, ?, ?, ?, ?, ?)",
                        (update_idx, n_edits, len(holds), n_forgotten, pct, seconds))
            con.executemany("INSERT INTO recheck_items VALUES (?, ?, ?)",
                            [(update_idx, e, int(h)) for e, h in holds.items()])

    def record_downstream(self, update_idx: int, n_edits: int, results: dict[str, dict[str, float]]) -> None:
        """``{task: {metric: value}}`` measured after ``update_idx`` updates (0: the unedited model)."""
        with self.transaction() as con:
            con.executemany("INSERT INTO downstream VALUES (?, ?, ?, ?, ?)",
                            [(update_idx, n_edits, task, metric, _nan_to_none(float(value)))
                             for task, metrics in results.items() for metric, value in metrics.items()])

    def record_checkpoint(self, update_idx: int, n_edits: int, path: str) -> None:
        """The run's checkpoint is now this one (only the latest is kept)."""
        with self.transaction() as con:
            con.execute("DELETE FROM checkpoints")
            con.execute("INSERT INTO checkpoints VALUES (?, ?, ?)", (update_idx, n_edits, path))

    def truncate_after(self, update_idx: int) -> None:
        """Drop every result of updates after ``update_idx`` (a resume redoes them)."""
        with self.transaction() as con:
            for table in _PER_UPDATE:
                con.execute(f"DELETE FROM {table} WHERE update_idx > ?", (update_idx,))

    # --- reading ----------------------------------------------------------------------------------------
    def last_update(self) -> int:
        row = self.connection.execute("SELECT MAX(update_idx) FROM updates").fetchone()
        return int(row[0]) if row[0] is not None else 0

    def checkpoints(self) -> list[tuple[int, int, str]]:
        return self.connection.execute(
            "SELECT update_idx, n_edits, path FROM checkpoints ORDER BY update_idx").fetchall()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.connection.execute(sql, params).fetchall()

    def frame(self, table: str):
        """A table as a pandas DataFrame (pandas is needed only here)."""
        import pandas as pd

        if table not in TABLES:
            raise RunStateError(f"no table {table!r} in a run database; tables: {', '.join(TABLES)}")
        return pd.read_sql(f"SELECT * FROM {table}", self.connection)
