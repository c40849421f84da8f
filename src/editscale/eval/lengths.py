"""Inputs against the model's context: every text a record makes the model read must fit its positions.

A record whose prompt, subject or target is longer than the model's context (``n_positions`` /
``max_position_embeddings``) would fail deep inside the model's position embedding, after work was done, and in
a sequential run would leave a run directory that no resume can finish. ``check_cases_fit`` is called where
records meet a loaded model (``eval``, ``edit``, ``run``), before any work, and names the record, the text,
its length and the limit in one line.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from editscale.data.records import EditCase
from editscale.errors import ConfigError

# what an edit adds in front of a prompt: the target optimisation's context prefixes (ROME's, MEMIT's: up to 10
# generated tokens and a separator) and a BOS token
EDIT_RESERVE = 16


def context_limit(model: nn.Module) -> int | None:
    """The most positions the model takes (None where its config does not say)."""
    cfg = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def case_texts(case: EditCase) -> list[tuple[str, str]]:
    """(what, text) of every sequence the scores and the edit read: each prompt followed by its target."""
    req = case.request
    edit = req.prompt.replace("{}", req.subject)
    targets = [t for t in (req.target_new, req.target_true) if t]
    out = [("edit prompt with its target", f"{edit} {t}") for t in targets]
    out += [("paraphrase prompt", f"{p} {t}") for p in case.paraphrase_prompts for t in targets]
    neighbour_targets = [t for t in (case.neighborhood_target or req.target_true, req.target_new) if t]
    out += [("neighborhood prompt", f"{p} {t}") for p in case.neighborhood_prompts for t in neighbour_targets]
    out += [("attribute prompt", f"{p} {t}") for p in case.attribute_prompts for t in targets]
    out += [("generation prompt", p) for p in case.generation_prompts]
    out += [("other-fact prompt", f"{p} {o}") for p, o in case.other_fact_prompts]
    return out


def check_cases_fit(model: nn.Module, tokenizer, cases: Sequence[EditCase], *, reserve: int = 0) -> None:
    """``ConfigError`` (one line) naming the first record with a text longer than the model's context less
    ``reserve`` positions (``EDIT_RESERVE`` where the records are also edited)."""
    limit = context_limit(model)
    if limit is None or not cases:
        return
    labelled = [(i, what, text) for i, case in enumerate(cases) for what, text in case_texts(case)]
    if not labelled:
        return
    lengths = [len(ids) for ids in tokenizer([t for _, _, t in labelled])["input_ids"]]
    for (i, what, _), n in zip(labelled, lengths):
        if n + reserve > limit:
            case = cases[i]
            name = f"record {case.case_id!r}" if case.case_id else f"record {i + 1}"
            extra = f" (+{reserve} for the edit's context prefixes)" if reserve else ""
            raise ConfigError(f"{name}: its {what} is {n} tokens{extra}, longer than the model's context of "
                              f"{limit} tokens; shorten it or leave the record out")
