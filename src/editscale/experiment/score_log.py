"""``ScoreLog``: the single-edit protocol's scores kept in a JSON-lines file as they are measured, so a stopped
``editscale eval --method ... --save FILE`` continues where it stopped.

The first line names what is evaluated (``key``: the model's fingerprint, the records, the method, its resolved
hyperparameters, records per edit, the metrics and the seed); then one line with the unedited model's scores and
one per edit (its index and its records' post-edit scores). Each line is written whole, flushed and synced
before the next edit begins; a line cut short (a kill, a full disk) is dropped when the file is read again and
every score before it is kept. A file whose key differs from the command's is refused, naming what differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editscale.cache import check_writable, refuse_inside_cache
from editscale.data.records import EditCase
from editscale.errors import ConfigError, DataLoadError
from editscale.eval.counterfact import CaseScores

FORMAT = "editscale-eval-scores"
VERSION = 1


def cases_digest(cases: Sequence[EditCase]) -> str:
    """A content hash of the records, in order (their requests and every prompt)."""
    h = hashlib.sha256()
    for case in cases:
        h.update(json.dumps(dataclasses.asdict(case), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def check_save_file(path: Path) -> None:
    """One-line errors, before any work, for a ``--save`` file that cannot be kept: a directory, inside
    editscale's cache, under a file, or on storage that cannot be written or is full."""
    path = Path(path).expanduser()
    refuse_inside_cache(path, "--save")
    if path.is_dir():
        raise ConfigError(f"--save {path} is a directory; name a file")
    check_writable(path, "--save")


def _scores(rows: Any, where: str) -> list[CaseScores]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("case_id"), str) for r in rows):
        raise DataLoadError(f"{where}: scores are not a list of records with a case_id")
    return [CaseScores(r["case_id"], {k: float(v) for k, v in r.items() if k != "case_id"}) for r in rows]


class ScoreLog:
    """The scores saved so far in ``path`` for ``key`` (``pre``: the unedited model's, or None; ``edits``: edit
    index -> its records' post-edit scores), and appending to it. A missing or empty file is started."""

    def __init__(self, path: str | Path, key: dict[str, Any]) -> None:
        self.path = Path(path).expanduser()
        self.key = json.loads(json.dumps(key, sort_keys=True))  # as it reads back from the file
        self.pre: list[CaseScores] | None = None
        self.edits: dict[int, list[CaseScores]] = {}
        check_save_file(self.path)
        if self.path.is_file() and self.path.stat().st_size:
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._start()

    def _start(self) -> None:
        """The file emptied down to its header line."""
        self.path.write_bytes(b"")
        self._append({"format": FORMAT, "version": VERSION, "key": self.key})

    def _read(self) -> None:
        data = self.path.read_bytes()
        whole = data.rfind(b"\n") + 1  # after the last newline: a line cut short, dropped
        lines = data[:whole].split(b"\n")[:-1]
        damaged = f"{self.path} is damaged"
        if not lines:  # only a cut-short header: start again
            self._start()
            return
        try:
            rows = [json.loads(line) for line in lines]
        except (ValueError, UnicodeDecodeError) as e:
            raise DataLoadError(f"{damaged} ({e}); delete it to evaluate from the start") from None
        head = rows[0]
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise DataLoadError(f"{self.path} is not an `editscale eval --save` file; name another file")
        if head.get("version") != VERSION:
            raise DataLoadError(f"{self.path} was written by another editscale version (format "
                                f"{head.get('version')}, this one reads {VERSION}); name another file")
        if head.get("key") != self.key:
            old = head.get("key") if isinstance(head.get("key"), dict) else {}
            differ = sorted(k for k in set(old) | set(self.key) if old.get(k) != self.key.get(k))
            raise ConfigError(f"{self.path} holds the scores of another evaluation (it differs in "
                              f"{', '.join(differ)}); name another file, or delete it to start over")
        for n, row in enumerate(rows[1:], start=2):
            where = f"{damaged}: line {n}"
            if isinstance(row, dict) and "pre" in row:
                self.pre = _scores(row["pre"], where)
            elif isinstance(row, dict) and isinstance(row.get("edit"), int) and "post" in row:
                self.edits[row["edit"]] = _scores(row["post"], where)
            else:
                raise DataLoadError(f"{where} is neither the unedited scores nor an edit's; delete the file to "
                                    f"evaluate from the start")
        if whole < len(data):
            with open(self.path, "r+b") as f:  # drop the cut-short line before appending after it
                f.truncate(whole)

    def _append(self, row: dict[str, Any]) -> None:
        with open(self.path, "ab") as f:
            f.write(json.dumps(row).encode() + b"\n")  # in the scores' own order: tables read the same
            f.flush()
            os.fsync(f.fileno())

    def add_pre(self, scores: Sequence[CaseScores]) -> None:
        self.pre = list(scores)
        self._append({"pre": [s.to_dict() for s in scores]})

    def add_edit(self, index: int, scores: Sequence[CaseScores]) -> None:
        self.edits[index] = list(scores)
        self._append({"edit": index, "post": [s.to_dict() for s in scores]})
