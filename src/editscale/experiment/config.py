"""Run configuration of a sequential-editing experiment: a short YAML file, validated with one-line errors.

The smallest config::

    model: testbed:demo
    method: rome            # a name, or {name: memit, hparams: {...}}
    data: testbed:demo      # or a records file
    edits: 1000
    batch: 1
    forget_every: 10
    downstream_every: 50
    seed: 0

Every other key has a default. A bad value raises ``ConfigError`` naming the field, e.g.
``run config field 'forget_every': Input should be greater than or equal to 1 (got 0)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from editscale.data.records import EditCase
from editscale.errors import ConfigError, config_error


class _Strict(BaseModel):
    # strict: no silent coercion (``edits: true`` is not 1 edit, ``edits: "10"`` not 10)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class MethodSpec(_Strict):
    """An editing method by registry name, with hyperparameter overrides (the method's own defaults else)."""

    name: str
    hparams: dict[str, Any] = Field(default_factory=dict)


class GuardConfig(_Strict):
    """Disabling-edit detection. An update is flagged when:

    - its update norm exceeds ``norm_factor`` x the running median of earlier update norms, or
    - the jump it causes in an edited matrix's distance from the original exceeds ``distance_factor`` x the
      running median of earlier jumps (both median rules start after ``min_history`` updates), or
    - generation entropy (ROME's n-gram entropy of ``entropy_tokens`` sampled tokens after
      ``entropy_prompts`` fixed prompts) falls below ``entropy_ratio`` x the median of its last
      ``entropy_window`` values (the unedited model's first), or
      measured after every ``entropy_every``-th update and after any update another rule flags (sampling
      ``entropy_tokens`` tokens costs that many forward passes: on SmolLM2 at one thread about 2.7 s, a third
      of an ENCORE update; an update that breaks the model is flagged at the next measurement at the
      latest), or
    - the neighborhood score of a fixed probe (up to 4 neighborhood prompts of each of the last
      ``probe_cases`` cases of the plan) falls by more than ``neighborhood_drop`` in this one update.

    With ``revert: true`` a flagged update is undone (exactly, by its Delta), recorded as refused, and the
    run goes on.
    """

    enabled: bool = True
    revert: bool = False
    norm_factor: float = Field(10.0, gt=1.0)
    distance_factor: float = Field(10.0, gt=1.0)
    min_history: int = Field(5, ge=1)
    entropy_ratio: float = Field(0.5, ge=0.0, le=1.0)
    entropy_window: int = Field(10, ge=1)
    entropy_prompts: int = Field(3, ge=0)
    entropy_tokens: int = Field(20, ge=5)
    entropy_every: int = Field(1, ge=1)
    neighborhood_drop: float = Field(0.3, gt=0.0, le=1.0)
    probe_cases: int = Field(6, ge=0)


class RunConfig(_Strict):
    """One sequential-editing experiment. ``edits`` facts, ``batch`` per update (1 = sequential)."""

    model: str
    method: MethodSpec
    data: str
    edits: int = Field(ge=1)
    batch: int = Field(1, ge=1)
    forget_every: int = Field(10, ge=1)
    downstream_every: int = Field(0, ge=0)  # 0: no downstream evaluation
    seed: int = 0
    unique: Literal["subject", "fact"] = "subject"  # never edit a subject twice (the paper), or a fact twice
    # default: "skills" for testbed models; for others the panel a model of any size can show (perplexity on
    # WikiText-2, retention of known facts, SST-2); GLUE's four tasks: "sst2,mrpc,rte,cola"
    downstream_tasks: str | None = None
    downstream_n: int = Field(200, ge=2)
    downstream_data_dir: str | None = None
    eval_batch_size: int = Field(64, ge=1)
    dtype: str | None = None
    device: str | None = None
    # a model larger than one device: "auto" (or a JSON mapping of module -> device) spreads it over the
    # devices through accelerate; edits and solves follow each edited weight's device
    device_map: str | dict[str, str | int] | None = None
    threads: int | None = Field(None, ge=1)  # torch CPU threads (default: torch's); a resume uses the run's
    checkpoint: bool = True  # write a checkpoint at every re-check point (needed for --resume)
    # per-edit metrics scored for each new edit (editscale.eval.metrics; default: all declared). Forgetting
    # needs efficacy and efficacy_correct, which are always added.
    metrics: list[str] | None = None
    guard: GuardConfig = Field(default_factory=GuardConfig)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        from editscale.eval.metrics import edit_metric_names

        known = edit_metric_names()
        if bad := [m for m in v if m not in known]:
            raise ValueError(f"unknown per-edit metric {bad[0]!r}; known: {', '.join(known)}")
        return list(dict.fromkeys(["efficacy", "efficacy_correct", *v]))

    @property
    def edit_metrics(self) -> tuple[str, ...]:
        """The per-edit metrics this run scores."""
        from editscale.eval.metrics import edit_metric_names

        return tuple(self.metrics) if self.metrics is not None else edit_metric_names()

    @field_validator("method", mode="before")
    @classmethod
    def _method_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("model", "data")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @property
    def tasks(self) -> str:
        """The downstream tasks: as given, else a testbed model's skills, else the general-ability panel."""
        from editscale.model.loading import MANIFEST_FILE

        if self.downstream_tasks is not None:
            return self.downstream_tasks
        testbed = self.model.startswith("testbed:") or (Path(self.model).expanduser() / MANIFEST_FILE).is_file()
        return "skills" if testbed else "perplexity,known-facts,sst2"

    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        if out["device_map"] is None:  # unset, it is left out: the configs (and hashes) of earlier runs stand
            del out["device_map"]
        return out


def parse_config(data: Any, source: str = "run config") -> RunConfig:
    """Validate a mapping as a ``RunConfig``; ``ConfigError`` with a one-line message naming the field."""
    if isinstance(data, RunConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of fields (model, method, data, edits, ...)")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(source, e) from None
    from editscale.methods.base import get_method_class

    try:
        method = get_method_class(cfg.method.name)
    except ConfigError as e:
        raise ConfigError(f"{source} field 'method.name': {e}") from None
    try:  # names and types of the overrides now, before any model is loaded (a sweep checks every cell so)
        method.Hparams.model_validate(cfg.method.hparams)
    except ValidationError as e:
        raise config_error(f"{source} method.hparams", e) from None
    return cfg


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (PyYAML keeps the last without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, what: str = "run config") -> Any:
    """A YAML file's content; a one-line ``ConfigError`` (naming ``what``) when it is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} " + ("is a directory, not a file" if p.is_dir() else "does not exist"))
    try:
        return yaml.load(p.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {p} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config (a grid file is refused in one line naming `editscale sweep`)."""
    raw = read_yaml(path)
    if isinstance(raw, dict) and "grid" in raw:
        raise ConfigError(f"{path} is a grid file (it has 'grid:'), not one run's config; run its cells with "
                          f"`editscale sweep {path} --out DIR`")
    return parse_config(raw, source=str(Path(path)))


def sample_cases(cases: list[EditCase], n: int, seed: int, unique: str = "subject") -> list[EditCase]:
    """A seeded sample of ``n`` cases in editing order in which no subject (``unique="subject"``, the paper's
    "no knowledge conflict") or no fact (subject and relation, ``unique="fact"``) comes twice."""
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    seen: set[tuple[str, ...]] = set()
    picked: list[EditCase] = []
    for i in order:
        req = cases[i].request
        key = (req.subject.strip().lower(),)
        if unique == "fact":
            key += (req.relation_id or req.prompt,)
        if key in seen:
            continue
        seen.add(key)
        picked.append(cases[i])
        if len(picked) == n:
            return picked
    hint = "; or set 'unique: fact' to allow other facts of an edited subject" if unique == "subject" else ""
    raise ConfigError(f"run config field 'edits': asks for {n} edits but the data has only {len(picked)} "
                      f"distinct {unique}s; lower 'edits' or use a larger dataset{hint}")
