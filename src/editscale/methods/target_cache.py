"""``TargetCache``: target vectors (ROME's v*, the MEMIT family's z) kept across edit calls on the same weights.

A target vector depends only on the weights it is optimised on, the module whose output holds it (which names
the layer), the target-optimisation hyperparameters, the context prefixes and the request (prompt, subject,
new target; and the subject's other facts when they enter the KL term). MEMIT, EMMET, AlphaEdit and ENCORE
optimise every request's z on the model as it is before the call, so an experiment that edits the first n
records of one sample into the unedited model for several n (``editscale.experiment.scaling``) needs each
record's z once: with this cache the whole curve costs one optimisation per record, plus the solves.

With a ``path`` the vectors are also written to a SQLite file as they are optimised (a chunk at a time), and
read from it: a curve stopped part way, or run again with larger n, optimises only what the file lacks.

Off unless asked for: ``EditContext.target_cache`` is None by default and only the code that wants it sets one.
Even then a target is never served on other weights than those it was optimised on: every entry is keyed by
the fingerprint of the weights at the moment of the call (``model.loading.fingerprint``, which reads every
parameter), so a sequential run's later edits, or ROME's requests applied one after another within a call,
miss the entries of other model states. (ROME's requests i of a call see the same weights for every call that
starts with the same i requests, so prefixes of one sample share them too.)
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from editscale.errors import DataLoadError
from editscale.model.loading import fingerprint

if TYPE_CHECKING:
    from editscale.methods.hparams import TargetHparams

# target hyperparameters that do not change an optimised vector: the chunk size (each request is optimised as
# on its own) and norm anchoring (applied after the optimisation, by ``norm_anchor``)
NOT_IN_KEY = frozenset({"target_batch", "norm_anchor", "norm_anchor_value", "norm_anchor_data",
                        "norm_anchor_samples", "norm_anchor_skip"})

Row = tuple[torch.Tensor, ...]  # one request's (target, init, delta, loss, nll, steps)


def hparams_key(hp: TargetHparams) -> str:
    """The target-optimisation hyperparameters that shape a vector, as canonical JSON."""
    from editscale.methods.hparams import TargetHparams

    fields = sorted(set(TargetHparams.model_fields) - NOT_IN_KEY)
    return json.dumps(hp.model_dump(mode="json", include=set(fields)), sort_keys=True)


class TargetCache:
    """Optimised target vectors by (weights' fingerprint, module, hyperparameters, prefixes, request).

    ``targets.optimize_targets`` reads it through ``EditContext.target_cache``: requests found are served, the
    others optimised (batched, as without the cache) and stored. ``optimised`` and ``served`` count requests.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self._rows: dict[Hashable, Row] = {}
        self.optimised = 0
        self.served = 0
        self.path = None if path is None else Path(path)
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self._db = _open(self.path)

    def __len__(self) -> int:
        if self._db is not None:
            return self._db.execute("SELECT COUNT(*) FROM targets").fetchone()[0]
        return len(self._rows)

    def __contains__(self, key: Hashable) -> bool:
        if key in self._rows:
            return True
        if self._db is None:
            return False
        row = self._db.execute("SELECT row FROM targets WHERE key = ?", (_digest(key),)).fetchone()
        if row is not None:
            self._rows[key] = _decode(row[0], self.path)
        return row is not None

    def keys(self, model: nn.Module, items: Sequence, module: str, hp: TargetHparams,
             prefixes: Sequence[Sequence[str]]) -> list[Hashable]:
        """The key of each item (``targets.EditItem``) for a call on ``model`` as its weights are now."""
        base = (fingerprint(model), module, hparams_key(hp), tuple(tuple(g) for g in prefixes))
        out = []
        for item in items:
            r = item.request
            facts = tuple(item.other_facts) if hp.kl_other_facts else ()
            out.append((*base, r.prompt, r.subject, r.target_new, facts))
        return out

    def get(self, key: Hashable) -> Row:
        self.served += 1
        return self._rows[key]

    def put(self, key: Hashable, row: Row) -> None:
        self.optimised += 1
        self._rows[key] = tuple(t.detach().cpu().clone() for t in row)
        if self._db is not None:
            buf = io.BytesIO()
            torch.save(list(self._rows[key]), buf)
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO targets (key, row) VALUES (?, ?)",
                                 (_digest(key), buf.getvalue()))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def stats(self) -> dict[str, int]:
        """{"optimised": requests optimised, "served": requests served from the cache, "entries": kept}."""
        return {"optimised": self.optimised, "served": self.served, "entries": len(self)}


def _digest(key: Hashable) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _open(path: Path) -> sqlite3.Connection:
    """The targets file at ``path``, created if absent; a file that is not one is a one-line error."""
    if path.is_dir():
        raise DataLoadError(f"targets file {path} is a folder; name a file (e.g. {path}/targets.sqlite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE IF NOT EXISTS targets (key TEXT PRIMARY KEY, row BLOB NOT NULL)")
        db.execute("SELECT key, row FROM targets LIMIT 1").fetchall()
    except sqlite3.DatabaseError as e:
        raise DataLoadError(f"{path} is not an editscale targets file ({e}); name another file or remove it") \
            from None
    return db


def _decode(blob: bytes, path: Path | None) -> Row:
    try:
        return tuple(torch.load(io.BytesIO(blob), weights_only=True))
    except Exception as e:  # noqa: BLE001 - any unreadable row is the file's damage
        raise DataLoadError(f"targets file {path} holds a damaged vector ({type(e).__name__}); remove the file "
                            "and optimise again") from None
