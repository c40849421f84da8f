"""``Editor``: repeated editing of one model with one method, and turning dicts into edit requests.

The user-facing entry points (``editscale.Editor``, ``editscale.edit``) re-export these from ``editscale.api``;
the experiment runner and the guard use the class from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from editscale.data.records import EditCase, EditRequest
from editscale.data.text_corpus import Corpus
from editscale.errors import EditError, RecordError
from editscale.methods.base import Delta, EditState, default_method, get_method_class
from editscale.methods.context import EditContext
from editscale.methods.hparams import HparamsBase
from editscale.methods.preset_resolution import resolve_hparams
from editscale.methods.targets import EditItem, as_items
from editscale.model.loading import nonfinite_weights
from editscale.stats.second_moment import StatsCache

RequestLike = EditRequest | EditCase | EditItem | Mapping[str, Any]
HparamsLike = HparamsBase | Mapping[str, Any] | str | Path | None


def _text(value: Any) -> Any:
    return value["str"] if isinstance(value, Mapping) and "str" in value else value


def to_request(record: RequestLike) -> EditRequest | EditCase | EditItem:
    """An EditRequest from a mapping (editscale's fields, or ROME's ``requested_rewrite`` shape with
    ``{"str": ...}`` targets; the prompt holds ``{}`` or the subject literally); requests and cases pass."""
    if isinstance(record, (EditRequest, EditCase, EditItem)):
        return record
    if not isinstance(record, Mapping):
        raise RecordError(f"an edit request is an EditRequest, an EditCase or a dict, got {type(record).__name__}")
    d = dict(record.get("requested_rewrite", record))
    missing = [k for k in ("prompt", "subject", "target_new") if k not in d]
    if missing:
        raise RecordError(f"edit request {dict(record)!r} lacks field(s) {missing}")
    known = {"target_true": _text(d.get("target_true")), "case_id": str(d.get("case_id", record.get("case_id", ""))),
             "relation_id": d.get("relation_id")}
    return EditRequest.from_text(d["prompt"], d["subject"], _text(d["target_new"]), **known)


def to_requests(requests: RequestLike | Iterable[RequestLike]) -> list[EditRequest | EditCase | EditItem]:
    """A list of requests from one request/dict or an iterable of them."""
    if isinstance(requests, (EditRequest, EditCase, EditItem, Mapping)):
        requests = [requests]
    out = [to_request(r) for r in requests]
    if not out:
        raise RecordError("no edit requests given")
    return out


class Editor:
    """Repeated editing of one model with one method.

    Keeps, across calls: the ``EditContext`` (second-moment statistics, sampled context prefixes, the
    unedited model's fingerprint), the resolved hyperparameters and the method's ``EditState``. Create it
    before editing the model, so statistics and prefixes are those of the unedited model.

    - ``compute(requests) -> Delta``: the update, NOT applied; the model is unchanged.
    - ``edit(requests) -> Delta``: the update, applied (``delta.applied`` is True; ``delta.revert(model)``
      restores the weights bit-exactly).
    - ``prepare()``: compute statistics, prefixes and what the method derives from the unedited model
      (AlphaEdit's projectors, a norm anchor) now (otherwise on the first call).

    ``method``: a registered method's name (``editscale methods`` lists them); None, the default one (MEMIT).

    ``hparams`` is an Hparams object, a mapping of overrides or a YAML file; unset values come from the
    model's preset (see ``editscale.methods.preset_resolution``). Requests are ``EditRequest``s,
    ``EditCase``s (whose other facts of the subject enter the KL term) or dicts.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        method: str | None = None,
        hparams: HparamsLike = None,
        *,
        context: EditContext | None = None,
        seed: int = 0,
        stats_cache: StatsCache | str | Path | None = "default",
        corpus: str | Path | Corpus | list[str] | None = None,
        progress: bool | None = None,
        state: EditState | None = None,
    ) -> None:
        self.context = context or EditContext(model, tokenizer, stats_cache=stats_cache, corpus=corpus, seed=seed,
                                              progress=progress)
        if self.context.model is not model:
            raise ValueError("the EditContext belongs to another model")
        method = method or default_method()
        cls = get_method_class(method)
        self.method_name = method
        self.hparams = resolve_hparams(method, cls.Hparams, model, self.context.anatomy, hparams)
        self.method = cls(self.hparams)
        self.state = state if state is not None else EditState()

    @property
    def model(self) -> nn.Module:
        return self.context.model

    @property
    def tokenizer(self):
        return self.context.tokenizer

    def prepare(self) -> Editor:
        """Compute (or load) now what the method declares it needs (``EditMethod.needs``: statistics, context
        prefixes, projectors, a norm anchor, a trained editor)."""
        self.method.prepare(self.context)
        return self

    def compute(self, requests: RequestLike | Iterable[RequestLike]) -> Delta:
        """The update for ``requests``, not applied (the model is left as it was)."""
        items = as_items(to_requests(requests))
        delta = self.method.compute(self.context, items, self.state)
        delta.info.setdefault("method", self.method_name)
        delta.info["case_ids"] = [i.request.case_id for i in items]
        return delta

    def edit(self, requests: RequestLike | Iterable[RequestLike]) -> Delta:
        """Compute the update for ``requests`` and apply it to the model; returns the applied Delta.

        An update that leaves NaN or infinite weights is undone (weights and method state) and raised as a
        one-line ``EditError``."""
        before = {k: v.clone() for k, v in self.state.state_dict().items()}
        delta = self.compute(requests).apply(self.model)
        broken = nonfinite_weights(self.model, delta.updates)
        if broken:
            delta.revert(self.model)
            self.state = EditState.from_state_dict(before)
            ids = ", ".join(delta.info.get("case_ids", [])[:3]) or "?"
            raise EditError(f"{self.method_name} produced NaN or infinite weights in {broken[0]} (edit of case "
                            f"{ids}); the edit was undone: check the hyperparameters (e.g. a smaller v_lr) and "
                            "the model")
        return delta
