"""Edit records: what to edit (`EditRequest`) and how to test it (`EditCase`).

Both are frozen dataclasses validated at construction, so a record that exists is a record that can be
edited: its prompt has exactly one ``{}`` slot for the subject, its subject and targets are non-empty, and
the new target differs from the true one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from editscale.errors import RecordError, SubjectNotInPromptError


def _clean(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"{where}: field '{name}' is empty")
    return value


@dataclass(frozen=True)
class EditRequest:
    """One fact to rewrite: ``prompt.format(subject)`` should be completed by ``target_new``.

    ``prompt`` holds exactly one ``{}`` where the subject goes (CounterFact's convention). Targets are
    stored without their leading space; the token helpers add it when tokenizing a continuation.
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    case_id: str = ""
    relation_id: str | None = None

    def __post_init__(self) -> None:
        where = f"record {self.case_id!r}" if self.case_id != "" else "record"
        _clean(self.prompt, "prompt", where)
        _clean(self.subject, "subject", where)
        _clean(self.target_new, "target_new", where)
        if self.prompt.count("{}") != 1:
            raise RecordError(
                f"{where}: field 'prompt' must contain exactly one '{{}}' where the subject goes, "
                f"got {self.prompt!r}"
            )
        if self.target_true is not None:
            _clean(self.target_true, "target_true", where)
            if self.target_true.strip() == self.target_new.strip():
                raise RecordError(f"{where}: target_new and target_true are both {self.target_new!r}")
        object.__setattr__(self, "target_new", self.target_new.strip())
        if self.target_true is not None:
            object.__setattr__(self, "target_true", self.target_true.strip())
        object.__setattr__(self, "case_id", str(self.case_id))

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject)

    @classmethod
    def from_text(cls, text: str, subject: str, target_new: str, **kw: Any) -> EditRequest:
        """Build a request from a prompt whose subject is already filled in (EasyEdit's shape)."""
        where = f"record {kw.get('case_id', '')!r}"
        _clean(text, "prompt", where)
        _clean(subject, "subject", where)
        if "{}" in text:
            return cls(prompt=text, subject=subject, target_new=target_new, **kw)
        pos = text.find(subject)
        if pos < 0:
            raise SubjectNotInPromptError(
                f"{where}: subject {subject!r} does not occur in prompt {text!r}; "
                "fix the subject or write the prompt with a '{}' slot"
            )
        template = text[:pos] + "{}" + text[pos + len(subject):]
        return cls(prompt=template, subject=subject, target_new=target_new, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EditCase:
    """A request plus the prompts that test it (CounterFact's record).

    - ``paraphrase_prompts``: other phrasings of the edited fact (full text); the new target should follow.
    - ``neighborhood_prompts``: prompts about *other* subjects whose true object is ``neighborhood_target``
      (default: the request's ``target_true``); an edit should leave them alone.
    - ``attribute_prompts``: prompts about other subjects whose object is ``target_new`` (ROME's
      essence/attribute prompts).
    - ``generation_prompts``: open prompts for fluency / consistency checks.
    - ``other_fact_prompts``: (prompt, true object) pairs for other relations of the same subject; editscale's
      variant of the KL term can keep them (``kl_other_facts``; the reference uses only "{subject} is a");
      optional.
    - ``reference_texts``: texts about the new object, for the reference score (ROME's consistency, RS);
      optional (without them RS uses the attribute prompts completed with the new object).
    """

    request: EditRequest
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    neighborhood_target: str | None = None
    attribute_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    other_fact_prompts: tuple[tuple[str, str], ...] = field(default=())
    reference_texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.request, EditRequest):
            raise RecordError("EditCase.request must be an EditRequest")
        where = f"record {self.request.case_id!r}"
        for name in ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts", "generation_prompts",
                     "reference_texts"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise RecordError(f"{where}: field '{name}' must be a list of strings")
            object.__setattr__(self, name, tuple(_clean(v, name, where) for v in value))
        pairs = tuple((str(p), str(t).strip()) for p, t in self.other_fact_prompts)
        object.__setattr__(self, "other_fact_prompts", pairs)
        if self.neighborhood_prompts and self.neighborhood_target is None and self.request.target_true is None:
            raise RecordError(f"{where}: neighborhood prompts need a true target (target_true)")
        if self.neighborhood_target is not None:
            object.__setattr__(self, "neighborhood_target", _clean(self.neighborhood_target,
                                                                   "neighborhood_target", where).strip())

    @property
    def case_id(self) -> str:
        return self.request.case_id

    @property
    def neighbor_true(self) -> str | None:
        return self.neighborhood_target or self.request.target_true

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["other_fact_prompts"] = [list(p) for p in self.other_fact_prompts]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditCase:
        return cls(
            request=EditRequest(**d["request"]),
            paraphrase_prompts=tuple(d.get("paraphrase_prompts", ())),
            neighborhood_prompts=tuple(d.get("neighborhood_prompts", ())),
            neighborhood_target=d.get("neighborhood_target"),
            attribute_prompts=tuple(d.get("attribute_prompts", ())),
            generation_prompts=tuple(d.get("generation_prompts", ())),
            other_fact_prompts=tuple(tuple(p) for p in d.get("other_fact_prompts", ())),
            reference_texts=tuple(d.get("reference_texts", ())),
        )


@dataclass(frozen=True)
class Fact:
    """A fact a model may know: ``text`` (a prompt with the subject in it) is completed by ``object``.

    Causal tracing's unit: ROME's known facts (``known_1000.json``) are read as facts, and an edit record
    gives one through ``Fact.from_request`` (its prompt and true target).
    """

    text: str
    subject: str
    object: str
    case_id: str = ""
    relation_id: str | None = None

    def __post_init__(self) -> None:
        where = f"record {self.case_id!r}" if self.case_id != "" else "record"
        _clean(self.text, "prompt", where)
        _clean(self.subject, "subject", where)
        _clean(self.object, "object", where)
        if self.subject not in self.text:
            raise SubjectNotInPromptError(f"{where}: subject {self.subject!r} does not occur in prompt "
                                          f"{self.text!r}")
        object.__setattr__(self, "object", self.object.strip())
        object.__setattr__(self, "case_id", str(self.case_id))

    @classmethod
    def from_request(cls, req: EditRequest) -> Fact:
        """The true fact behind an edit request (its ``target_true``)."""
        if req.target_true is None:
            raise RecordError(f"record {req.case_id!r}: no true target (target_true), so no fact to trace")
        return cls(req.text, req.subject, req.target_true, req.case_id, req.relation_id)
