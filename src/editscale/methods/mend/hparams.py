"""MEND's hyperparameters: the edited matrices, the editor network and its training."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from editscale.methods.hparams import LayersHparams


class MendHparams(LayersHparams):
    """MEND: the edited matrices, the editor network and its training. Class defaults: the reference's
    (config/alg/mend.yaml and config.yaml, the same for GPT-2 XL and GPT-J). Layers left unset: the last 3
    blocks, as the reference's inner_params (on a testbed model the 3 below its last: ``Mend.layer_rule``)."""

    matrices: list[Literal["in", "out", "gate"]] = Field(default_factory=lambda: ["out", "in"])  # Llama: gate too
    rank: PositiveInt = 1920  # of each editor layer's U V (capped at its width)
    n_hidden: NonNegativeInt = 1  # editor layers with a relu before the last one
    edit_lr: PositiveFloat = 1e-4  # lr_W's start
    lr: PositiveFloat = 1e-6  # editor Adam
    lr_lr: PositiveFloat = 1e-4  # lr_W's Adam
    cedit: PositiveFloat = 0.1
    cloc: PositiveFloat = 1.0
    accumulate_bs: PositiveInt = 10  # edits per optimiser step
    grad_clip: PositiveFloat = 100.0
    train_steps: PositiveInt = 100_000  # edits trained on (the reference's max_iters)
    loc_prompts: PositiveInt = 4  # unrelated prompts in each edit's locality term
    max_outer: PositiveInt = 4  # prompts of each edit's NLL term (the edit prompt and rephrasings)
    seed: int = 0  # editor initialisation and the order of training edits
    editor: str | None = Field(None, description="a trained editor's directory (editscale mend train --out); "
                                                 "None: the newest in the cache for the model")

    @field_validator("matrices")
    @classmethod
    def _matrices(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) < len(v):
            raise ValueError("must name at least one of in, out, gate, each once")
        return v

    def architecture(self) -> dict[str, Any]:
        """What a trained editor must share with these hyperparameters to be used with them."""
        return {"layers": self.layers, "matrices": self.matrices}
