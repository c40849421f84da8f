"""Readers for edit records, one function per shape, and ``load_cases`` that picks the shape.

Shapes:
- CounterFact, original (ROME paper appendix D): ``requested_rewrite`` with ``{}`` prompt, target_new/true
  as ``{"str": ...}``, plus paraphrase / neighborhood / attribute / generation prompt lists;
- CounterFact, EasyEdit's reduced shape: ``prompt`` (subject filled in), ``subject``, ``target_new``,
  ``ground_truth``, ``rephrase_prompt``, ``locality_prompt``, ``locality_ground_truth``;
- zsRE, MEND's shape: ``subject``, ``src``, ``alt``, ``answers``, ``rephrase``, ``loc``, ``loc_ans``;
- editscale's own: a JSONL of ``EditCase.to_dict()`` lines, or plain requests
  (``prompt``, ``subject``, ``target_new``, optional ``target_true``, ``case_id``, ``relation_id``).

Every record is validated; the first bad one raises a ``RecordError`` naming the file, the record and the
field, and nothing from a partly read file is returned.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from editscale.data.records import EditCase, EditRequest, Fact
from editscale.errors import DataLoadError, RecordError

Reader = Callable[[dict[str, Any]], EditCase]


def _get(rec: dict[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in rec:
        raise RecordError(f"missing field '{key}'")
    value = rec[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecordError(f"field '{key}' must be {names}, got {type(value).__name__}")
    return value


def _strs(rec: dict[str, Any], key: str) -> tuple[str, ...]:
    value = rec.get(key, [])
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecordError(f"field '{key}' must be a list of strings")
    return tuple(value)


def _obj_str(rec: dict[str, Any], key: str) -> str:
    value = _get(rec, key, (dict, str))
    if isinstance(value, dict):
        return _get(value, "str")
    return value


def read_counterfact(rec: dict[str, Any]) -> EditCase:
    """Original CounterFact record (``requested_rewrite`` + prompt lists)."""
    rw = _get(rec, "requested_rewrite", dict)
    req = EditRequest(
        prompt=_get(rw, "prompt"),
        subject=_get(rw, "subject"),
        target_new=_obj_str(rw, "target_new"),
        target_true=_obj_str(rw, "target_true"),
        case_id=str(rec.get("case_id", "")),
        relation_id=rw.get("relation_id"),
    )
    return EditCase(
        request=req,
        paraphrase_prompts=_strs(rec, "paraphrase_prompts"),
        neighborhood_prompts=_strs(rec, "neighborhood_prompts"),
        attribute_prompts=_strs(rec, "attribute_prompts"),
        generation_prompts=_strs(rec, "generation_prompts"),
        reference_texts=_strs(rec, "reference_texts"),
    )


def read_easyedit(rec: dict[str, Any]) -> EditCase:
    """EasyEdit's reduced CounterFact record (subject filled into ``prompt``)."""
    req = EditRequest.from_text(
        _get(rec, "prompt"),
        _get(rec, "subject"),
        _get(rec, "target_new"),
        target_true=_get(rec, "ground_truth"),
        case_id=str(rec.get("case_id", "")),
        relation_id=rec.get("relation_id"),
    )
    loc = _strs(rec, "locality_prompt")
    return EditCase(
        request=req,
        paraphrase_prompts=_strs(rec, "rephrase_prompt"),
        neighborhood_prompts=loc,
        neighborhood_target=_get(rec, "locality_ground_truth") if loc else None,
    )


def read_zsre(rec: dict[str, Any]) -> EditCase:
    """zsRE record in MEND's shape; the question is the prompt, ``alt`` the new answer."""
    answers = _get(rec, "answers", list)
    if not answers or not isinstance(answers[0], str):
        raise RecordError("field 'answers' must be a non-empty list of strings")
    req = EditRequest.from_text(
        _get(rec, "src"),
        _get(rec, "subject"),
        _get(rec, "alt"),
        target_true=answers[0] if answers[0].strip() != _get(rec, "alt").strip() else None,
        case_id=str(rec.get("case_id", "")),
    )
    loc = _get(rec, "loc")
    return EditCase(
        request=req,
        paraphrase_prompts=_strs(rec, "rephrase"),
        neighborhood_prompts=(loc,),
        neighborhood_target=_get(rec, "loc_ans"),
    )


def read_native(rec: dict[str, Any]) -> EditCase:
    """editscale's own ``EditCase.to_dict()`` record, or a plain request."""
    if "request" in rec:
        try:
            return EditCase.from_dict(rec)
        except (TypeError, KeyError, AttributeError) as e:
            raise RecordError(f"field 'request': {e}") from None
    missing = [k for k in ("prompt", "subject", "target_new") if k not in rec]
    if missing:
        raise RecordError(f"missing field '{missing[0]}'")
    known = {"prompt", "subject", "target_new", "target_true", "case_id", "relation_id"}
    req = EditRequest(**{k: (str(v) if k == "case_id" else v) for k, v in rec.items() if k in known})
    return EditCase(
        request=req,
        paraphrase_prompts=_strs(rec, "paraphrase_prompts"),
        neighborhood_prompts=_strs(rec, "neighborhood_prompts"),
        neighborhood_target=rec.get("neighborhood_target"),
        reference_texts=_strs(rec, "reference_texts"),
    )


def detect_reader(rec: dict[str, Any]) -> tuple[str, Reader]:
    """The shape of a record, from its keys."""
    if "requested_rewrite" in rec:
        return "counterfact", read_counterfact
    if "src" in rec and "alt" in rec:
        return "zsre", read_zsre
    if "ground_truth" in rec and "prompt" in rec:
        return "easyedit", read_easyedit
    if "request" in rec or {"prompt", "subject", "target_new"} <= rec.keys():
        return "native", read_native
    raise RecordError(
        f"unrecognised record shape with fields {sorted(rec)}; expected CounterFact (requested_rewrite), "
        "EasyEdit (prompt, subject, target_new, ground_truth), zsRE (src, subject, alt, answers) or "
        "editscale (prompt, subject, target_new)"
    )


def _raw_records(path: Path) -> list[tuple[str, Any]]:
    """(label, raw record) pairs; the label locates the record in the file for error messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    if path.suffix == ".jsonl" or (text.lstrip()[:1] == "{" and "\n{" in text.strip()):
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
            except RecursionError:
                raise RecordError(f"{path}: line {lineno}: JSON nested too deeply to be a record") from None
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None
    except RecursionError:
        raise RecordError(f"{path}: JSON nested too deeply to be records") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return [(f"record {i}", r) for i, r in enumerate(data)]


def read_records(path: str | Path, limit: int | None = None, skip_invalid: bool = False) -> list[EditCase]:
    """Read the records of a file (any supported shape).

    All or nothing by default: the first bad record raises. With ``skip_invalid``, bad records are left
    out and reported on stderr with the first reason (the real zsRE sample has two with an empty ``alt``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataLoadError(f"records file {path} " + ("is a directory" if path.is_dir() else "does not exist"))
    raw = _raw_records(path)
    if limit is not None:
        raw = raw[:limit]
    cases: list[EditCase] = []
    skipped: list[str] = []
    reader: Reader | None = None
    for label, rec in raw:
        where = f"{path}: {label}"
        if not isinstance(rec, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        if "case_id" in rec:
            where += f" (case_id {rec['case_id']})"
        try:
            if reader is None:
                _, reader = detect_reader(rec)
            case = reader(rec)
        except RecordError as e:
            msg = str(e)
            if msg.startswith("record"):  # drop the record's own prefix: the location says it
                msg = msg.split(": ", 1)[-1]
            if not skip_invalid:
                raise type(e)(f"{where}: {msg}") from None
            skipped.append(f"{where}: {msg}")
            continue
        if not case.case_id:
            case = EditCase(**{**case.__dict__, "request": EditRequest(**{**case.request.__dict__,
                                                                          "case_id": label.split()[-1]})})
        cases.append(case)
    if skipped:
        print(f"warning: skipped {len(skipped)} invalid record(s); first: {skipped[0]}", file=sys.stderr)
    if not cases:
        raise RecordError(f"{path}: no valid records")
    return cases


def load_cases(spec: str | Path, limit: int | None = None, skip_invalid: bool = False) -> list[EditCase]:
    """Records from a file. Names such as ``testbed:NAME`` (a testbed's world) are resolved first by
    ``editscale.names.load_cases``, which takes them and files alike."""
    spec = str(spec)
    if spec.startswith("testbed:"):
        raise DataLoadError(f"{spec!r} is a testbed name, not a records file: load it with "
                            "editscale.names.load_cases, which builds the testbed if needed")
    return read_records(spec, limit, skip_invalid)


def read_known(rec: dict[str, Any]) -> Fact:
    """ROME's known-facts record (``known_1000.json``): ``prompt`` (subject filled in), ``subject``,
    ``attribute`` (the true object)."""
    return Fact(_get(rec, "prompt"), _get(rec, "subject"), _get(rec, "attribute"),
                str(rec.get("known_id", rec.get("case_id", ""))), rec.get("relation_id"))


def read_facts(path: str | Path, limit: int | None = None) -> list[Fact]:
    """Facts from a file of ROME's known facts, or the true facts of the edit records in any other shape."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataLoadError(f"records file {path} does not exist")
    raw = _raw_records(path)
    first = raw[0][1] if raw else None
    if not (isinstance(first, dict) and {"prompt", "subject", "attribute"} <= first.keys()):
        return [Fact.from_request(c.request) for c in read_records(path, limit)]
    facts = []
    for label, rec in raw[:limit]:
        try:
            if not isinstance(rec, dict):
                raise RecordError(f"expected a JSON object, got {type(rec).__name__}")
            facts.append(read_known(rec))
        except RecordError as e:
            msg = str(e).split(": ", 1)[-1] if str(e).startswith("record") else str(e)
            raise type(e)(f"{path}: {label}: {msg}") from None
    return facts
