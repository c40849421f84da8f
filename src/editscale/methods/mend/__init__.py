"""MEND (Mitchell et al. 2022, "Fast Model Editing at Scale"): small editor networks, trained beforehand, turn
the fine-tuning gradient of an edit into a weight update.

The gradient of a linear layer's weight is a sum of rank-one terms, one per token: with u_t the layer's input
and delta_t the gradient of the loss at its output, grad W = sum_t delta_t u_t^T. MEND never forms grad W: per
edited matrix it feeds each token's [u_t, delta_t] through an editor MLP g, getting (u~_t, delta~_t), and
updates

    W' = W - lr_W sum_t delta~_t u~_t^T

so the update is a sum of (number of tokens) rank-one terms: a low-rank ``Delta`` of rank <= tokens. The
editor is trained on edits that are not in the edit sample, each step: one edit's gradient on its prompt, the
update, then ``cedit`` x NLL of the new target on the edit prompt and its rephrasings under the edited weights
+ ``cloc`` x KL(original || edited) on unrelated prompts; the editor parameters and the per-matrix lr_W are
learnt (Adam, gradients accumulated over ``accumulate_bs`` edits, clipped to ``grad_clip``).

As the reference code (eric-mitchell/mend, kmeng01/rome's baselines/mend, EasyEdit's trainer/algs/MEND.py):

- edited matrices: both MLP matrices of the last 3 blocks (``inner_params``: GPT-2 XL 45-47, GPT-J 25-27;
  EasyEdit's Llama also the gate), located through the anatomy;
- the editor MLP ("IDMLP", ``combine: True``): one per matrix shape, over the concatenation [u, delta],
  normalised by running mean and standard deviation (updated while training, frozen after), then
  ``n_hidden`` + 1 layers x + relu(scale_m * (U V x + b) + shift_m) with U (d, r) starting at 0 (the identity),
  V (r, d) Gaussian, r = min(rank, d); matrices sharing a shape share the MLP and have their own scale/shift
  ("mode") per layer;
- lr_W learnt per matrix (``edit_lr`` to start, its own Adam at ``lr_lr``); editor Adam at ``lr``;
  ``cedit`` 0.1, ``cloc`` 1.0, batches of one edit, ``accumulate_bs`` 10, ``grad_clip`` 100.

Where this differs, and why:

- the update is subtracted (gradient descent, lr_W starting positive); the reference adds ``lr x g`` and
  lets training turn lr_W's sign;
- on a testbed model the default layers are the 3 blocks below the last (demo: 0-2 of 4), not the last 3: the
  last block writes the relation's object for every subject, and editing it cost most of the neighborhood
  score (``presets/testbed.yaml``);
- only the shared, combined editor (the reference's defaults ``shared``/``combine``); no one-sided variants;
- the running statistics are updated for a whole edit's tokens at once (Chan's parallel update) instead of
  one token at a time: the same mean and variance up to rounding;
- the reference's locality prompts are Natural Questions (zsRE) or CounterFact's locality prompt; here, the
  true facts (prompt and object) of ``loc_prompts`` other training records, half of them other subjects of
  the same relation (as CounterFact's locality prompts), so nothing of the edit sample is seen in training;
  the rephrasings for the edit term are a record's paraphrase prompts, or for a testbed world the relation's TRAINED frames (its held-out frames stay the evaluation's paraphrases);
- training data: for a testbed world (``testbed:NAME``), every fact can be sampled by runs, so the world's
  subjects are split deterministically (``is_training_subject``: 1 in ``SPLIT`` by a hash of the name); the
  editor trains on those subjects' facts, and ``eval``/``edit``/``run`` with MEND edit only the others
  (``Mend.held_out_cases``; an edit of a training subject is refused). A records file (CounterFact's train
  split) is used whole.

The trained editor is a cache entry of its own, ``$EDITSCALE_HOME/mend/FINGERPRINT-KEY`` (the model's
fingerprint; KEY hashes the training settings), never beside a cached model; ``editscale mend train --out
DIR`` writes elsewhere instead (then edit with ``editor: DIR``). Its manifest (``MANIFEST_FILE``) records the
model fingerprint, the data and its size, steps, hyperparameters, versions and the final losses. The method
state holds the sha256 of the editor's weights from the first edit on, so a resumed run (whose checkpoints keep
the state) uses the editor it started with, whatever has been trained since.

The package: ``hparams`` (``MendHparams``), ``network`` (the editor networks), ``method`` (the registered
``Mend``, the split of a testbed world, the per-token gradient factors), ``storage`` (finding, saving and
loading trained editors) and ``training`` (``train_editor``, ``train_and_save``).
"""

from editscale.methods.mend.hparams import MendHparams
from editscale.methods.mend.method import (
           SPLIT,
           Mend,
           edited_params,
           gradient_factors,
           is_training_subject,
           is_world,
)
from editscale.methods.mend.network import MendNetwork
from editscale.methods.mend.storage import MANIFEST_FILE, find_editor, load_editor
from editscale.methods.mend.training import train_and_save, train_editor

__all__ = ["MANIFEST_FILE", "SPLIT", "Mend", "MendHparams", "MendNetwork", "edited_params", "find_editor",
           "gradient_factors", "is_training_subject", "is_world", "load_editor", "train_and_save", "train_editor"]
