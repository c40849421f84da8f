"""``TargetCache``: target vectors (ROME's v*, the MEMIT family's z) kept across edit calls on the same weights.

A target vector depends only on the weights it is optimised on, the module whose output holds it (which names
the layer), the target-optimisation hyperparameters, the context prefixes and the request (prompt, subject,
new target; and the subject's other facts when they enter the KL term). MEMIT, EMMET, AlphaEdit and ENCORE
optimise every request's z on the model as it is before the call, so an experiment that edits the first n
records of one sample into the unedited model for several n (``editscale.experiment.scaling``) needs each
record's z once: with this cache the whole curve costs one optimisation per record, plus the solves.

Off unless asked for: ``EditContext.target_cache`` is None by default and only the code that wants it sets one.
Even then a target is never served on other weights than those it was optimised on: every entry is keyed by
the fingerprint of the weights at the moment of the call (``model.loading.fingerprint``, which reads every
parameter), so a sequential run's later edits, or ROME's requests applied one after another within a call,
miss the entries of other model states. (ROME's requests i of a call see the same weights for every call that
starts with the same i requests, so prefixes of one sample share them too.)
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

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

    def __init__(self) -> None:
        self._rows: dict[Hashable, Row] = {}
        self.optimised = 0
        self.served = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

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
        self._rows[key] = tuple(t.detach().clone() for t in row)

    def stats(self) -> dict[str, int]:
        """{"optimised": requests optimised, "served": requests served from the cache, "entries": kept}."""
        return {"optimised": self.optimised, "served": self.served, "entries": len(self)}
