"""Forgetting of earlier edits, as the scale paper's code counts it, and editscale's earlier definition beside it.

The scale paper's ``downstream_eval/fact_forgetting.py`` (scalable-model-editing/gradual-catastrophic-forgetting):

- an edit is *correct* when every token of its new target is the argmax after the edit prompt, teacher forced
  (``rewrite_prompts_correct``), measured right after the edit;
- a correct edit is *forgotten* at the first re-check where it is no longer correct, and stays counted from then
  on, even if a later edit happens to bring it back;
- the percentage divides the edits forgotten so far by the edits correct so far (the current ones included).

``forgotten_prob`` is the definition editscale used before: of the earlier edits with P(new) > P(true) when
made, the share that fail it at this re-check (computed afresh each time, the current update left out).

``Forgetting`` keeps the bookkeeping between re-checks; its state is part of a run's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recheck:
    """One re-check's outcome."""

    n_correct: int  # edits correct when made, so far
    n_forgotten: int  # of them, forgotten at some re-check so far
    correct: dict[int, bool]  # checked correct edits -> still correct now
    holds_prob: dict[int, bool]  # checked P-successful edits -> P(new) > P(true) now

    @property
    def forgotten(self) -> float:
        """The paper's fraction (0 before any edit was correct)."""
        return self.n_forgotten / self.n_correct if self.n_correct else 0.0

    @property
    def forgotten_prob(self) -> float | None:
        if not self.holds_prob:
            return None
        return sum(not h for h in self.holds_prob.values()) / len(self.holds_prob)


@dataclass
class Forgetting:
    """Which kept edits were correct (and P-successful) when made, and when each correct one was first lost."""

    correct: list[int] = field(default_factory=list)
    successful: list[int] = field(default_factory=list)
    forgotten_at: dict[int, int] = field(default_factory=dict)  # edit -> update of its first failed re-check

    def made(self, edit_idx: int, *, correct: bool, successful: bool) -> None:
        """Record a new, kept edit's state right after its update."""
        if correct:
            self.correct.append(edit_idx)
        if successful:
            self.successful.append(edit_idx)

    def to_check(self, first_new: int) -> list[int]:
        """The earlier edits a re-check must score (both definitions), before edit ``first_new``."""
        return sorted({e for e in (*self.correct, *self.successful) if e < first_new})

    def recheck(self, update_idx: int, last_edit: int, first_new: int,
                now: dict[int, tuple[bool, bool]]) -> Recheck:
        """Fold in a re-check after ``update_idx`` (edits up to ``last_edit`` made): ``now`` maps each edit of
        ``to_check(first_new)`` to (P(new) > P(true) now, correct now)."""
        correct = {e: now[e][1] for e in self.correct if e < first_new}
        holds_prob = {e: now[e][0] for e in self.successful if e < first_new}
        for e, ok in correct.items():
            if not ok and e not in self.forgotten_at:
                self.forgotten_at[e] = update_idx
        n_correct = sum(1 for e in self.correct if e <= last_edit)
        return Recheck(n_correct, len(self.forgotten_at), correct, holds_prob)

    def state_dict(self) -> dict[str, Any]:
        return {"correct": list(self.correct), "successful": list(self.successful),
                "forgotten_at": {str(e): u for e, u in self.forgotten_at.items()}}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> Forgetting:
        return cls(list(d["correct"]), list(d["successful"]), {int(e): u for e, u in d["forgotten_at"].items()})
