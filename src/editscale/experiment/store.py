"""The results store of one run: a single SQLite database, every write one transaction, readable with pandas.

All SQL of a run database lives here. The per-edit, per-update and per-matrix columns are derived from the
metric declarations in ``editscale.eval.metrics`` (the metric's name is its column), so a new metric needs no
change here. Tables (``store.frame("edits")`` gives a pandas DataFrame):

- ``meta``: key -> JSON value: ``schema``, ``config``, ``versions``, ``fingerprint``, ``threads``, ``created``,
  ``status``, ``edit_metrics`` (the per-edit columns this run has), ...
- ``plan``: the sampled edits in order: ``edit_idx``, ``update_idx``, ``case_id``, ``subject``, ``case_json``.
- ``edits``: per edit, scored right after its update: one column per per-edit metric, and ``refused`` (1 where
  the guard reverted the update).
- ``updates``: per update: ``n_edits`` so far, the per-update metrics (``seconds``, ``compute_seconds``,
  the guard's ``entropy`` and ``probe_neighborhood``) and ``refused``.
- ``distances``: per update and edited matrix: ``layer``, ``n_neurons``, ``n_elements`` and the per-matrix
  metrics (``frobenius``, ``distance_per_element``, ``distance_per_neuron``, ``update_norm``).
- ``rechecks``: per re-check: ``n_correct`` (edits correct when made, so far), ``n_forgotten`` and
  ``forgotten`` (the scale paper's definition, a fraction), ``n_checked_prob``, ``n_forgotten_prob`` and
  ``forgotten_prob`` (editscale's earlier one), ``seconds``.
- ``recheck_items``: per re-check and checked edit: ``holds_prob`` and ``correct`` (1/0; NULL: not checked
  by that definition).
- ``downstream``: long format ``update_idx, n_edits, task, metric, value`` (f1, accuracy, mcc, n, ...).
- ``events``: flagged / refused updates with the rule that fired, its value and threshold.
- ``checkpoints``: the update each checkpoint was taken after.

A database written by an older editscale (another ``schema``) is refused with a one-line error: its forgetting
and distance columns meant something else.
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
from editscale.eval.metrics import SUMMARY_WINDOW, edit_metric_names, metrics_at

DB_NAME = "results.sqlite"
SCHEMA_VERSION = 2


def _schema(edit_metrics: Sequence[str]) -> str:
    cols = lambda names: "".join(f"{n} REAL, " for n in names)
    update_cols = [m.name for m in metrics_at("update")]
    dist_cols = [m.name for m in metrics_at("distance")]
    return f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plan (
    edit_idx INTEGER PRIMARY KEY, update_idx INTEGER NOT NULL, case_id TEXT NOT NULL, subject TEXT NOT NULL,
    case_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS edits (
    edit_idx INTEGER PRIMARY KEY, update_idx INTEGER NOT NULL, case_id TEXT NOT NULL,
    {cols(edit_metrics)}refused INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS updates (
    update_idx INTEGER PRIMARY KEY, n_edits INTEGER NOT NULL, {cols(update_cols)}
    refused INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS distances (
    update_idx INTEGER NOT NULL, param TEXT NOT NULL, layer INTEGER, n_neurons INTEGER NOT NULL,
    n_elements INTEGER NOT NULL, {cols(dist_cols)}PRIMARY KEY (update_idx, param));
CREATE TABLE IF NOT EXISTS rechecks (
    update_idx INTEGER PRIMARY KEY, n_edits INTEGER NOT NULL, n_correct INTEGER NOT NULL,
    n_forgotten INTEGER NOT NULL, forgotten REAL, n_checked_prob INTEGER NOT NULL,
    n_forgotten_prob INTEGER NOT NULL, forgotten_prob REAL, seconds REAL);
CREATE TABLE IF NOT EXISTS recheck_items (
    update_idx INTEGER NOT NULL, edit_idx INTEGER NOT NULL, holds_prob INTEGER, correct INTEGER,
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


def _none_to_nan(x: Any) -> Any:
    return float("nan") if x is None else x


class RunStore:
    """One run's database. ``RunStore(path)`` opens one, ``create=True`` makes a new one, ``readonly=True``
    opens it without writing anything beside it (a run on read-only storage)."""

    def __init__(self, path: str | Path, create: bool = False, readonly: bool = False,
                 edit_metrics: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise RunStateError(f"no results database at {self.path}; is this a run directory?")
        try:
            if readonly:
                self.connection = self._open_readonly()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.connection = sqlite3.connect(self.path, isolation_level=None)
                self.connection.execute("PRAGMA journal_mode=WAL")
                self.connection.execute("PRAGMA synchronous=NORMAL")
            if create:
                names = tuple(edit_metrics if edit_metrics is not None else edit_metric_names())
                self.connection.executescript(_schema(names))
                self.set_meta(schema=SCHEMA_VERSION, edit_metrics=list(names))
            else:
                self._check_schema()
        except sqlite3.DatabaseError as e:
            raise RunStateError(f"{self.path} is not a readable editscale results database ({e}); "
                                "the run directory is damaged: start the run again in a new directory") from None

    def _open_readonly(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        wal = self.path.with_name(self.path.name + "-wal")
        if not wal.exists() or wal.stat().st_size == 0:  # closed cleanly, no writer: read it as it is, and
            return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)  # write no -shm beside
        try:
            con = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
            con.execute("SELECT COUNT(*) FROM meta").fetchone()
            return con
        except sqlite3.OperationalError:  # WAL on read-only storage: read the file as it is
            return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)

    def _check_schema(self) -> None:
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        version = json.loads(row[0]) if row else 1
        if version != SCHEMA_VERSION:
            raise RunStateError(
                f"{self.path} was written by another editscale version (results schema {version}, this version "
                f"reads {SCHEMA_VERSION}: forgetting and distance are now measured as the scale paper's code); "
                "run the experiment again with this version")

    @classmethod
    def in_dir(cls, run_dir: str | Path, create: bool = False, readonly: bool = False) -> RunStore:
        return cls(Path(run_dir) / DB_NAME, create=create, readonly=readonly)

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

    @property
    def edit_metrics(self) -> list[str]:
        """The per-edit metric columns of this run."""
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'edit_metrics'").fetchone()
        return json.loads(row[0]) if row else []

    def write_plan(self, rows: Iterable[tuple[int, int, str, str, dict[str, Any]]]) -> None:
        """``(edit_idx, update_idx, case_id, subject, case_dict)`` for every planned edit."""
        with self.transaction() as con:
            con.execute("DELETE FROM plan")
            con.executemany("INSERT INTO plan VALUES (?, ?, ?, ?, ?)",
                            [(e, u, c, s, json.dumps(d)) for e, u, c, s, d in rows])

    def plan(self) -> list[dict[str, Any]]:
        rows = self.connection.execute("SELECT case_json FROM plan ORDER BY edit_idx").fetchall()
        return [json.loads(r[0]) for r in rows]

    def plan_updates(self) -> dict[int, list[int]]:
        """update_idx -> the edit numbers it applies."""
        out: dict[int, list[int]] = {}
        for e, u in self.connection.execute("SELECT edit_idx, update_idx FROM plan ORDER BY edit_idx"):
            out.setdefault(u, []).append(e)
        return out

    # --- results -------------------------------------------------------------------------------------
    def record_update(
        self,
        update_idx: int,
        n_edits: int,
        values: dict[str, float | None],
        refused: bool,
        edits: Sequence[dict[str, Any]],
        distances: Sequence[dict[str, Any]],
        events: Sequence[dict[str, Any]],
    ) -> None:
        """Everything measured for one update, in one transaction: ``values`` of the per-update metrics,
        ``edits`` (``edit_idx``, ``case_id`` and per-edit metrics), ``distances`` (``param``, ``layer``,
        ``n_neurons``, ``n_elements`` and the per-matrix metrics), ``events``."""
        update_cols = [m.name for m in metrics_at("update")]
        dist_cols = ["param", "layer", "n_neurons", "n_elements", *(m.name for m in metrics_at("distance"))]
        edit_cols = self.edit_metrics
        with self.transaction() as con:
            con.execute(f"INSERT INTO updates (update_idx, n_edits, {', '.join(update_cols)}, refused) "
                        f"VALUES ({', '.join('?' * (len(update_cols) + 3))})",
                        (update_idx, n_edits, *(_nan_to_none(values.get(c)) for c in update_cols), int(refused)))
            con.executemany(
                f"INSERT INTO edits (edit_idx, update_idx, case_id, {''.join(c + ', ' for c in edit_cols)}refused) "
                f"VALUES ({', '.join('?' * (len(edit_cols) + 4))})",
                [(e["edit_idx"], update_idx, e["case_id"], *(_nan_to_none(e.get(c)) for c in edit_cols),
                  int(refused)) for e in edits])
            con.executemany(
                f"INSERT INTO distances (update_idx, {', '.join(dist_cols)}) "
                f"VALUES ({', '.join('?' * (len(dist_cols) + 1))})",
                [(update_idx, *(_nan_to_none(d[c]) for c in dist_cols)) for d in distances])
            self._insert_events(con, update_idx, events)

    @staticmethod
    def _insert_events(con: sqlite3.Connection, update_idx: int, events: Sequence[dict[str, Any]]) -> None:
        con.executemany(
            "INSERT INTO events (update_idx, edit_idx, kind, rule, value, threshold, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(update_idx, ev["edit_idx"], ev["kind"], ev["rule"], _nan_to_none(ev.get("value")),
              _nan_to_none(ev.get("threshold")), ev.get("detail", "")) for ev in events])

    def record_recheck(self, update_idx: int, n_edits: int, *, n_correct: int, n_forgotten: int,
                       holds_prob: dict[int, bool], correct: dict[int, bool], seconds: float = 0.0) -> None:
        """One re-check after ``update_idx``: the paper's counts (``n_correct`` edits correct when made so far,
        ``n_forgotten`` of them forgotten at some re-check), and per checked edit whether it still holds by
        either definition."""
        n_forgotten_prob = sum(not h for h in holds_prob.values())
        with self.transaction() as con:
            con.execute("INSERT INTO rechecks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (update_idx, n_edits, n_correct, n_forgotten,
                         n_forgotten / n_correct if n_correct else None, len(holds_prob), n_forgotten_prob,
                         n_forgotten_prob / len(holds_prob) if holds_prob else None, seconds))
            con.executemany("INSERT INTO recheck_items VALUES (?, ?, ?, ?)",
                            [(update_idx, e, None if e not in holds_prob else int(holds_prob[e]),
                              None if e not in correct else int(correct[e]))
                             for e in sorted(set(holds_prob) | set(correct))])

    def record_downstream(self, update_idx: int, n_edits: int, results: dict[str, dict[str, float]]) -> None:
        """``{task: {metric: value}}`` measured after ``update_idx`` updates (0: the unedited model)."""
        with self.transaction() as con:
            con.executemany("INSERT INTO downstream VALUES (?, ?, ?, ?, ?)",
                            [(update_idx, n_edits, task, metric, _nan_to_none(float(value)))
                             for task, metrics in results.items() for metric, value in metrics.items()])

    def record_checkpoint(self, update_idx: int, n_edits: int, path: str) -> None:
        """The run's latest checkpoint is now this one; the one before it is kept too (a resume falls back to it
        when the latest turns out damaged), older ones are dropped."""
        with self.transaction() as con:
            con.execute("DELETE FROM checkpoints WHERE update_idx NOT IN "
                        "(SELECT update_idx FROM checkpoints ORDER BY update_idx DESC LIMIT 1)")
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

    def done_updates(self) -> list[int]:
        return [u for (u,) in self.connection.execute("SELECT update_idx FROM updates ORDER BY update_idx")]

    def checkpoints(self) -> list[tuple[int, int, str]]:
        return self.connection.execute(
            "SELECT update_idx, n_edits, path FROM checkpoints ORDER BY update_idx").fetchall()

    def n_edits_done(self) -> int:
        return self.connection.execute("SELECT COUNT(*) FROM edits").fetchone()[0]

    def edit_series(self, names: Sequence[str]) -> tuple[list[int], dict[str, list[float]]]:
        """Edit numbers and, per metric, its value for each edit (NaN where not measured or not a column)."""
        have = [n for n in names if n in self.edit_metrics]
        sel = "".join(f", {n}" for n in have)
        rows = self.connection.execute(f"SELECT edit_idx{sel} FROM edits ORDER BY edit_idx").fetchall()
        series = {n: [float("nan")] * len(rows) for n in names}
        for j, n in enumerate(have, 1):
            series[n] = [_none_to_nan(r[j]) for r in rows]
        return [r[0] for r in rows], series

    def last_edit_means(self, names: Sequence[str], window: int = SUMMARY_WINDOW) -> dict[str, float]:
        """Mean of each per-edit metric over the last ``window`` edits."""
        have = [n for n in names if n in self.edit_metrics]
        out = {n: float("nan") for n in names}
        if have:
            row = self.connection.execute(
                f"SELECT {', '.join(f'AVG({n})' for n in have)} FROM "
                f"(SELECT * FROM edits ORDER BY edit_idx DESC LIMIT ?)", (window,)).fetchone()
            out.update({n: _none_to_nan(v) for n, v in zip(have, row)})
        return out

    def recheck_series(self) -> list[tuple[int, float, float]]:
        """(edits so far, forgotten, forgotten_prob) at each re-check, fractions (NaN: nothing to count)."""
        rows = self.connection.execute(
            "SELECT n_edits, forgotten, forgotten_prob FROM rechecks ORDER BY update_idx").fetchall()
        return [(n, _none_to_nan(a), _none_to_nan(b)) for n, a, b in rows]

    def last_recheck(self) -> dict[str, Any] | None:
        row = self.connection.execute(
            "SELECT n_edits, n_correct, n_forgotten, forgotten, n_checked_prob, n_forgotten_prob, forgotten_prob "
            "FROM rechecks ORDER BY update_idx DESC LIMIT 1").fetchone()
        if row is None:
            return None
        keys = ("n_edits", "n_correct", "n_forgotten", "forgotten", "n_checked_prob", "n_forgotten_prob",
                "forgotten_prob")
        return dict(zip(keys, row))

    def update_totals(self) -> dict[str, float]:
        """Sums over the updates (seconds, compute_seconds) and over the re-checks, and their counts."""
        upd = self.connection.execute("SELECT COUNT(*), SUM(seconds), SUM(compute_seconds) FROM updates").fetchone()
        rc = self.connection.execute("SELECT COUNT(*), SUM(seconds) FROM rechecks").fetchone()
        return {"updates": upd[0], "seconds": upd[1] or 0.0, "compute_seconds": upd[2] or 0.0,
                "rechecks": rc[0], "recheck_seconds": rc[1] or 0.0}

    def downstream_series(self, metric: str = "f1") -> dict[str, list[tuple[int, float]]]:
        """task -> (edits so far, value) of one downstream metric, in order."""
        out: dict[str, list[tuple[int, float]]] = {}
        for task, n, v in self.connection.execute(
                "SELECT task, n_edits, value FROM downstream WHERE metric = ? ORDER BY update_idx", (metric,)):
            out.setdefault(task, []).append((n, _none_to_nan(v)))
        return out

    def downstream_at(self, update_idx: int, metric: str) -> dict[str, float]:
        return {task: v for task, v in self.connection.execute(
            "SELECT task, value FROM downstream WHERE metric = ? AND update_idx = ? AND value IS NOT NULL",
            (metric, update_idx))}

    def distance_series(self, column: str) -> list[tuple[str, int | None, int, float]]:
        """(param, layer, edits so far, value) of one per-matrix metric, in update order."""
        if column not in {m.name for m in metrics_at("distance")}:
            raise RunStateError(f"no distance column {column!r}")
        return self.connection.execute(
            f"SELECT d.param, d.layer, u.n_edits, d.{column} FROM distances d "
            "JOIN updates u ON u.update_idx = d.update_idx ORDER BY d.update_idx").fetchall()

    def final_distance(self) -> float:
        """The edited weights' distance from the original at the last measured update, over every edited
        matrix: sqrt(sum of squared Frobenius norms) / their summed elements (NaN: nothing measured)."""
        rows = self.connection.execute(
            "SELECT d.frobenius, d.n_elements FROM distances d JOIN (SELECT param, MAX(update_idx) AS u FROM "
            "distances GROUP BY param) last ON d.param = last.param AND d.update_idx = last.u").fetchall()
        n = sum(e for _, e in rows)
        return math.sqrt(sum((f or 0.0) ** 2 for f, _ in rows)) / n if n else float("nan")

    def event_edits(self, kind: str) -> list[int]:
        """Edit numbers of the updates with an event of this kind (flagged, refused)."""
        return [e for (e,) in self.connection.execute(
            "SELECT DISTINCT edit_idx FROM events WHERE kind = ? ORDER BY edit_idx", (kind,))]

    def event_updates(self, kind: str) -> list[int]:
        return [u for (u,) in self.connection.execute(
            "SELECT DISTINCT update_idx FROM events WHERE kind = ? ORDER BY update_idx", (kind,))]

    def flag_rows(self, limit: int = 30) -> list[tuple[int, str, bool]]:
        """The first flagged updates: (edit, the rules that fired with values and thresholds, refused)."""
        rows = self.connection.execute(
            "SELECT edit_idx, GROUP_CONCAT(CASE WHEN kind = 'flagged' THEN rule || ' ' || printf('%.3g', value) "
            "|| ' (threshold ' || printf('%.3g', threshold) || ')' END, '; '), MAX(kind = 'refused') FROM events "
            "GROUP BY update_idx ORDER BY update_idx LIMIT ?", (limit,)).fetchall()
        return [(e, rules or "", bool(refused)) for e, rules, refused in rows]

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Raw read access for ad-hoc queries (tests, notebooks)."""
        return self.connection.execute(sql, params).fetchall()

    def frame(self, table: str):
        """A table as a pandas DataFrame (pandas, the ``frames`` extra, is needed only here)."""
        try:
            import pandas as pd
        except ImportError:
            raise RunStateError("RunStore.frame needs pandas: pip install 'editscale[frames]' (or pandas)") from None
        if table not in TABLES:
            raise RunStateError(f"no table {table!r} in a run database; tables: {', '.join(TABLES)}")
        return pd.read_sql(f"SELECT * FROM {table}", self.connection)
