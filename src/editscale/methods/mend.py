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
  the same relation (as CounterFact's locality prompts), so nothing of the edit sample is seen in training; the rephrasings for the edit term are a record's paraphrase prompts, or for a testbed
  world the relation's TRAINED frames (its held-out frames stay the evaluation's paraphrases);
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
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator
from torch import nn
from torch.func import functional_call

from editscale.errors import ConfigError, EditError
from editscale.methods.base import Delta, EditMethod, EditState, Update, register
from editscale.methods.hparams import LayersHparams
from editscale.methods.layer_rules import LastBlocks
from editscale.methods.targets import EditItem, as_items, build_layout
from editscale.model.hooks import capture, edit_output, frozen_eval
from editscale.model.loading import MANIFEST_FILE as TESTBED_MANIFEST
from editscale.model.tokens import encode_batch

if TYPE_CHECKING:
    from editscale.data.records import EditCase, EditRequest
    from editscale.methods.context import EditContext

MANIFEST_FILE = "editscale_mend.json"  # a trained editor's manifest (editscale.cache_entries lists them)
WEIGHTS_FILE = "mend.safetensors"
STATE_KEY = "mend_editor_sha256"  # the method state: the sha256 of the editor's weights, as bytes
SPLIT = 5  # 1 in SPLIT subjects of a testbed world trains the editor; runs and evaluation edit the rest


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


# --------------------------------------------------------------------------------------------------------
# the split of a testbed world
# --------------------------------------------------------------------------------------------------------
def is_training_subject(subject: str) -> bool:
    """Whether a testbed world's subject is one MEND's editor trains on (1 in ``SPLIT``, by a hash)."""
    digest = hashlib.sha256(("editscale-mend-split:" + subject.strip().lower()).encode()).digest()
    return int.from_bytes(digest[:4], "big") % SPLIT == 0


def is_world(data: str | Path) -> bool:
    """Whether a data spec is a testbed world (``testbed:NAME``, or a records file beside a testbed model)."""
    text = str(data)
    return text.startswith("testbed:") or (Path(text).expanduser().parent / TESTBED_MANIFEST).is_file()


# --------------------------------------------------------------------------------------------------------
# the editor network
# --------------------------------------------------------------------------------------------------------
class _LowRankLayer(nn.Module):
    """x + relu(scale_m * (U V x + b) + shift_m): the identity at the start (U = 0)."""

    def __init__(self, dim: int, rank: int, n_modes: int, gen: torch.Generator) -> None:
        super().__init__()
        mid = min(rank, dim)
        self.u = nn.Parameter(torch.zeros(dim, mid))
        self.v = nn.Parameter(torch.randn(mid, dim, generator=gen))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        pre = (x @ self.v.T) @ self.u.T + self.bias
        return x + (pre * self.mode_scale[mode] + self.mode_shift[mode]).clamp(min=0)


class _Transform(nn.Module):
    """The editor of one matrix shape: [u, delta] -> (u~, delta~), inputs normalised by running statistics."""

    def __init__(self, x_dim: int, d_dim: int, rank: int, n_hidden: int, n_modes: int,
                 gen: torch.Generator) -> None:
        super().__init__()
        self.x_dim = x_dim
        dim = x_dim + d_dim
        self.layers = nn.ModuleList([_LowRankLayer(dim, rank, n_modes, gen) for _ in range(n_hidden + 1)])
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def observe(self, rows: torch.Tensor) -> None:
        """Add (T, dim) rows to the running mean and variance (Chan et al.'s parallel update)."""
        rows = rows.double()
        n, mean = rows.shape[0], rows.mean(0)
        m2 = ((rows - mean) ** 2).sum(0)
        total = self.count + n
        diff = mean - self.mean
        self.m2 += m2 + diff ** 2 * self.count * n / total
        self.mean += diff * n / total
        self.count.fill_(total)

    def forward(self, x: torch.Tensor, d: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count < 2:
            raise EditError("the MEND editor has seen fewer than 2 tokens: its normalisation is undefined")
        std = (self.m2 / (self.count - 1)).sqrt().float()
        h = (torch.cat([x, d], -1).float() - self.mean.float()) / (std + 1e-7)
        for layer in self.layers:
            h = layer(h, mode)
        return h[:, :self.x_dim], h[:, self.x_dim:]


class MendNetwork(nn.Module):
    """Every edited matrix's editor (shared per shape, one mode per matrix) and learnt step size lr_W.

    ``params``: (parameter name, out, in) of each edited matrix, in order."""

    def __init__(self, params: Sequence[tuple[str, int, int]], hp: MendHparams) -> None:
        super().__init__()
        self.params = [(str(n), int(o), int(i)) for n, o, i in params]
        self.shapes: dict[str, list[str]] = {}
        for name, out, inp in self.params:
            self.shapes.setdefault(f"{out}x{inp}", []).append(name)
        gen = torch.Generator().manual_seed(hp.seed)
        self.transforms = nn.ModuleDict({
            key: _Transform(int(key.split("x")[1]), int(key.split("x")[0]), hp.rank, hp.n_hidden, len(names), gen)
            for key, names in self.shapes.items()})
        self.edit_lrs = nn.Parameter(torch.full((len(self.params),), float(hp.edit_lr)))

    def _where(self, name: str) -> tuple[int, _Transform, int]:
        index = next(i for i, p in enumerate(self.params) if p[0] == name)
        _, out, inp = self.params[index]
        key = f"{out}x{inp}"
        return index, self.transforms[key], self.shapes[key].index(name)

    def observe(self, name: str, x: torch.Tensor, d: torch.Tensor) -> None:
        self._where(name)[1].observe(torch.cat([x, d], -1))

    def factors(self, name: str, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(left (out, T), right (T, in)) of the update -lr_W sum_t d~_t x~_t^T of one matrix, from its
        per-token inputs x (T, in) and output gradients d (T, out)."""
        index, transform, mode = self._where(name)
        x_new, d_new = transform(x, d, mode)
        return -(self.edit_lrs[index] * d_new).T, x_new


# --------------------------------------------------------------------------------------------------------
# gradients: per token, the input u and output gradient delta of every edited matrix
# --------------------------------------------------------------------------------------------------------
def edited_params(model: nn.Module, ctx_anatomy, hp: MendHparams) -> list[tuple[str, str, int, int]]:
    """(module, parameter, out, in) of every matrix MEND edits, through the anatomy."""
    out = []
    for layer in hp.layers:
        for which in hp.matrices:
            module = ctx_anatomy.mlp_matrix_name(layer, which)
            w = model.get_submodule(module).weight
            o, i = (w.shape[1], w.shape[0]) if ctx_anatomy.transposed else tuple(w.shape)
            out.append((module, module + ".weight", int(o), int(i)))
    return out


def _nll(lay, logits: torch.Tensor) -> torch.Tensor:
    """Mean over the layout's requests of their mean target-token NLL, from the model's logits."""
    active = torch.ones(lay.bare.shape[0], dtype=torch.bool, device=lay.bare.device)
    _, remap = lay.rows_of(active)
    return lay.nll(nn.Identity(), logits, active, remap).mean()


def gradient_factors(ctx: EditContext, items: Sequence[EditItem], modules: Sequence[str]
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per module: (u (T, in), delta (T, out)) over the T tokens of the items' prompt + new target (tokens
    whose u or delta is zero left out, as the reference), for the NLL of the new targets on the model as it
    is; grad W = delta^T u. No parameter gradient is written."""
    model, lay = ctx.model, build_layout(ctx, items, [[""]])
    inputs = lay.inputs(torch.arange(lay.batch.input_ids.shape[0], device=lay.batch.input_ids.device))
    mask = inputs["attention_mask"].bool()
    embed = ctx.anatomy.embed_name(model)
    with frozen_eval(model), torch.enable_grad():
        # the embeddings' output is a leaf that needs a gradient, so every later activation has one
        with edit_output(model, embed, lambda h: h.detach().requires_grad_()), \
                capture(model, modules) as ins, capture(model, modules, inputs=False, detach=False) as outs:
            logits = model(**inputs).logits
        loss = _nll(lay, logits)
        grads = torch.autograd.grad(loss, [outs[m] for m in modules])
    out = {}
    for m, g in zip(modules, grads):
        u, d = ins[m][mask].float(), g[mask].float()
        keep = (u != 0).any(-1) & (d != 0).any(-1)
        out[m] = (u[keep], d[keep])
    return out


# --------------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------------
@register
class Mend(EditMethod):
    """MEND with a trained editor (``editscale mend train``)."""

    name = "mend"
    description = "trained editor networks turn an edit's fine-tuning gradient into a low-rank update"
    paper = "Mitchell et al. 2022, Fast Model Editing at Scale"
    Hparams = MendHparams
    # the reference's inner_params: the last 3 blocks (GPT-2 XL 45-47, GPT-J 25-27); on a testbed model the 3
    # below its last, which writes the relation's object for every subject (presets/testbed.yaml)
    layer_rule = LastBlocks(3)
    needs = ("editor",)
    edits_last_layer = True  # the gradient reaches every layer

    def __init__(self, hparams: MendHparams) -> None:
        super().__init__(hparams)
        self._loaded: tuple[str, MendNetwork, dict[str, Any]] | None = None

    @classmethod
    def holds_out(cls, data: str) -> bool:
        return is_world(data)

    @classmethod
    def held_out_cases(cls, cases: list) -> list:
        """The cases of a testbed world whose subject the editor did not train on."""
        return [c for c in cases if not is_training_subject(c.request.subject)]

    def network(self, ctx: EditContext, digest: str | None = None) -> tuple[MendNetwork, dict[str, Any]]:
        """The trained editor for the context's (unedited) model, loaded once; with ``digest``, the one whose
        weights have that sha256 (the editor a run started with)."""
        loaded = self._loaded
        if loaded is None or loaded[0] != ctx.fingerprint or digest not in (None, loaded[2]["weights_sha256"]):
            path = find_editor(ctx, self.hparams, digest)
            net, manifest = load_editor(path, ctx.fingerprint)
            if digest not in (None, manifest["weights_sha256"]):
                raise ConfigError(f"MEND editor {path} is not the one this run started with (weights sha256 "
                                  f"{digest[:12]}...); resume with that one")
            self._loaded = (ctx.fingerprint, net.to(ctx.device), manifest)
        return self._loaded[1], self._loaded[2]

    def prepare_editor(self, ctx: EditContext) -> None:
        """The trained editor, loaded (and checked against the model's fingerprint)."""
        self.network(ctx)

    def compute(self, ctx: EditContext, requests: Sequence[EditRequest | EditCase], state: EditState) -> Delta:
        # the editor is pinned in the method state (checkpointed): a resumed run uses the one it started with,
        # even when another has been trained for the model since
        pinned = state.get(STATE_KEY)
        net, manifest = self.network(ctx, bytes(pinned.tolist()).hex() if pinned is not None else None)
        if pinned is None:
            state[STATE_KEY] = torch.tensor(list(bytes.fromhex(manifest["weights_sha256"])), dtype=torch.uint8)
        items = as_items(requests)
        if manifest.get("split") == "subjects":
            seen = [i.request.subject for i in items if is_training_subject(i.request.subject)]
            if seen:
                raise EditError(f"MEND's editor was trained on the facts of {seen[0]!r} (a testbed world's "
                                f"training subjects, 1 in {SPLIT}); edit another subject")
        params = edited_params(ctx.model, ctx.anatomy, self.hparams)
        factors = gradient_factors(ctx, items, [m for m, *_ in params])
        updates = {}
        with torch.no_grad():
            for module, param, _, _ in params:
                left, right = net.factors(param, *factors[module])
                updates[param] = Update(param, ctx.anatomy.transposed, left=left.contiguous(), right=right.contiguous())
        tokens = int(next(iter(factors.values()))[0].shape[0])
        return Delta(updates, {"method": self.name, "layers": list(self.hparams.layers), "tokens": tokens,
                               "editor": manifest.get("path", "")})


# --------------------------------------------------------------------------------------------------------
# finding, saving and loading trained editors
# --------------------------------------------------------------------------------------------------------
def editor_root() -> Path:
    from editscale.cache import cache_root

    return cache_root() / "mend"


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(path) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_editor(ctx: EditContext, hp: MendHparams, digest: str | None = None) -> Path:
    """The trained editor to use: ``hp.editor``, else the newest complete one in the cache for the model's
    fingerprint whose layers and matrices are ``hp``'s (with ``digest``: the one whose weights have that
    sha256). A one-line ``ConfigError`` when there is none."""
    from editscale.cache import entry_damage

    if hp.editor is not None:
        path = Path(hp.editor).expanduser()
        if read_manifest(path) is None:
            raise ConfigError(f"MEND editor {path} has no {MANIFEST_FILE}: not a trained editor (editscale mend "
                              "train --out writes one)")
        return path
    found = []
    root = editor_root()
    for path in sorted(root.glob(f"{ctx.fingerprint}-*")) if root.is_dir() else []:
        manifest = read_manifest(path)
        if (path.is_dir() and manifest is not None and not entry_damage(path)
                and [manifest["hparams"][k] for k in ("layers", "matrices")] == [hp.layers, hp.matrices]):
            found.append((manifest.get("created", ""), path))
    if digest is not None:
        found = [(when, path) for when, path in found if weights_sha256(path) == digest]
        if not found:
            raise ConfigError(f"the MEND editor this run started with (weights sha256 {digest[:12]}...) is no longer "
                              f"in {root}; resume with it (hparams editor: DIR) or start the run again")
    if not found:
        where = ctx.model_dir if ctx.model_dir is not None else "MODEL"
        raise ConfigError(f"no trained MEND editor for this model (fingerprint {ctx.fingerprint}, layers "
                          f"{hp.layers}, matrices {hp.matrices}); train one first: editscale mend train --model "
                          f"{where} --data RECORDS")
    return max(found)[1]


def weights_sha256(path: Path) -> str:
    """The sha256 of an editor's weights file (from its files manifest when it has one)."""
    from editscale.cache import read_files_manifest, sha256_file

    files = (read_files_manifest(path) or {}).get("files", {})
    return files[WEIGHTS_FILE]["sha256"] if WEIGHTS_FILE in files else sha256_file(Path(path) / WEIGHTS_FILE)


def load_editor(path: Path, fingerprint: str | None = None) -> tuple[MendNetwork, dict[str, Any]]:
    """A trained editor and its manifest; with ``fingerprint``, refused unless trained for that model."""
    from safetensors.torch import load_file

    manifest = read_manifest(path)
    if manifest is None:
        raise ConfigError(f"MEND editor {path} has no readable {MANIFEST_FILE}")
    if fingerprint is not None and manifest["fingerprint"] != fingerprint:
        raise ConfigError(f"MEND editor {path} was trained for another model (fingerprint "
                          f"{manifest['fingerprint']}, this model {fingerprint}); train one for it")
    net = MendNetwork(manifest["params"], MendHparams.validated(manifest["hparams"]))
    net.load_state_dict(load_file(str(Path(path) / WEIGHTS_FILE)))
    return net, {**manifest, "path": str(path), "weights_sha256": weights_sha256(path)}


def save_editor(directory: Path, net: MendNetwork, manifest: dict[str, Any]) -> None:
    """The editor's weights, then its manifest (the files manifest is the caller's: ``build_dir``)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()},
              str(Path(directory) / WEIGHTS_FILE))
    (Path(directory) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def training_key(hp: MendHparams, data: dict[str, Any]) -> str:
    blob = json.dumps({"hparams": hp.to_dict(), "data": data}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------
def outer_prompts(case: EditCase, manifest: dict[str, Any] | None, limit: int) -> list[str]:
    """The prompts of an edit's NLL term: its edit prompt, then a testbed relation's trained frames (the
    held-out ones are the evaluation's paraphrases), else the record's paraphrase prompts."""
    req = case.request
    relations = (manifest or {}).get("relations", {})
    if req.relation_id in relations:
        others = [t for t in relations[req.relation_id]["train_templates"] if t != req.prompt]
    else:
        others = [p if "{}" in p else p.replace(req.subject, "{}", 1) for p in case.paraphrase_prompts]
        others = [p for p in others if p.count("{}") == 1]
    return [req.prompt, *others][:limit]


def locality_cases(cases: Sequence[EditCase], case: EditCase, n: int, rng: random.Random,
                   by_relation: dict[str | None, list[int]]) -> list[EditCase]:
    """The records whose true facts make an edit's locality term: half of them other subjects' facts of the
    same relation (as CounterFact's neighbourhood prompts, the hardest to keep), the rest any others."""
    same = [j for j in by_relation.get(case.request.relation_id, []) if cases[j].request.subject != case.request.subject]
    picked = rng.sample(same, min(len(same), (n + 1) // 2)) if case.request.relation_id is not None else []
    rest = [j for j in rng.sample(range(len(cases)), min(len(cases), n + len(picked) + 1))
            if j not in picked and cases[j].request.subject != case.request.subject]
    return [cases[j] for j in (picked + rest)[:n]]


def _kl(base_logp: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(original || edited) of the next-token distributions, averaged over the unmasked positions."""
    kl = (base_logp.exp() * (base_logp - torch.log_softmax(logits.float(), -1))).sum(-1)
    return (kl * mask).sum() / mask.sum()


def train_editor(ctx: EditContext, cases: Sequence[EditCase], hp: MendHparams, *, steps: int | None = None,
                 progress: bool | None = None, on_step: Callable[[int, dict[str, float]], None] | None = None
                 ) -> tuple[MendNetwork, dict[str, Any]]:
    """Train an editor for ``ctx``'s model on ``cases`` (edits to their ``target_new``); returns it and what
    training reached (mean losses and edit success over the last ``accumulate_bs`` x 10 edits)."""
    from editscale.data.records import EditRequest
    from editscale.progress import progress_bar

    if len(cases) < 2:
        raise ConfigError(f"MEND trains on at least 2 records, got {len(cases)}")
    model, steps = ctx.model, steps or hp.train_steps
    params = edited_params(model, ctx.anatomy, hp)
    net = MendNetwork([(p, o, i) for _, p, o, i in params], hp).to(ctx.device)
    opt = torch.optim.Adam(net.transforms.parameters(), lr=hp.lr)
    lr_opt = torch.optim.Adam([net.edit_lrs], lr=hp.lr_lr)
    rng = random.Random(hp.seed)
    weights = {p: model.get_parameter(p) for _, p, _, _ in params}
    transposed = ctx.anatomy.transposed
    recent: list[dict[str, float]] = []
    by_relation: dict[str | None, list[int]] = {}
    for j, c in enumerate(cases):
        by_relation.setdefault(c.request.relation_id, []).append(j)
    t0 = time.perf_counter()
    with frozen_eval(model), progress_bar("training the MEND editor", steps, progress) as advance:
        for step in range(steps):
            case = cases[rng.randrange(len(cases))]
            req = case.request
            others = locality_cases(cases, case, hp.loc_prompts, rng, by_relation)
            factors = gradient_factors(ctx, [EditItem(req)], [m for m, *_ in params])
            outer = [EditItem(EditRequest(p, req.subject, req.target_new, case_id=req.case_id))
                     for p in outer_prompts(case, ctx.manifest, hp.max_outer)]
            lay = build_layout(ctx, outer, [[""]])
            loc = encode_batch(ctx.tokenizer, [c.request.text + (f" {c.request.target_true}" if c.request.target_true
                                                                 else "") for c in others], ctx.device)
            with torch.no_grad():
                base = torch.log_softmax(model(input_ids=loc.input_ids, attention_mask=loc.attention_mask,
                                               use_cache=False).logits.float(), -1)
            edited = {}
            for module, param, _, _ in params:
                net.observe(param, *factors[module])
                left, right = net.factors(param, *factors[module])
                upd = left @ right
                w = weights[param]
                edited[param] = (w.float() + (upd.T if transposed else upd)).to(w.dtype)
            rows = torch.arange(lay.batch.input_ids.shape[0], device=lay.batch.input_ids.device)
            logits = functional_call(model, edited, args=(), kwargs=lay.inputs(rows)).logits
            l_edit = _nll(lay, logits)
            post = functional_call(model, edited, args=(), kwargs={"input_ids": loc.input_ids, "use_cache": False,
                                                                    "attention_mask": loc.attention_mask}).logits
            l_loc = _kl(base, post, loc.attention_mask.float())
            loss = hp.cedit * l_edit + hp.cloc * l_loc
            (loss / hp.accumulate_bs).backward()
            if (step + 1) % hp.accumulate_bs == 0 or step + 1 == steps:
                torch.nn.utils.clip_grad_norm_(list(net.parameters()), hp.grad_clip)
                opt.step()
                lr_opt.step()
                opt.zero_grad()
                lr_opt.zero_grad()
            if not all(math.isfinite(x) for x in (l_edit.item(), l_loc.item())):
                raise EditError(f"MEND training diverged at step {step + 1} (edit NLL {l_edit.item()}, locality "
                                f"KL {l_loc.item()}); lower lr or edit_lr")
            recent = (recent + [{"edit_nll": l_edit.item(), "loc_kl": l_loc.item(),
                                 "edit_p": math.exp(-l_edit.item())}])[-hp.accumulate_bs * 10:]
            means = {k: sum(r[k] for r in recent) / len(recent) for k in recent[0]}
            if on_step is not None:
                on_step(step + 1, means)
            advance(1, status=f"edit NLL {means['edit_nll']:.3f}, loc KL {means['loc_kl']:.4f}")
    info = {"train_seconds": round(time.perf_counter() - t0, 1), "steps": steps,
            "final": {k: round(v, 5) for k, v in means.items()},
            "edit_lrs": [round(float(x), 8) for x in net.edit_lrs.detach().cpu()]}
    return net, info


def train_and_save(ctx: EditContext, cases: Sequence[EditCase], hp: MendHparams, *, model_name: str,
                   data: dict[str, Any], out: Path | None = None, steps: int | None = None,
                   progress: bool | None = None) -> tuple[Path, dict[str, Any]]:
    """Train an editor and store it: a cache entry keyed by the model's fingerprint and the training settings
    (files manifest written last), or ``out`` (outside the cache). Returns its directory and manifest."""
    from importlib.metadata import version

    from editscale.cache import build_dir, write_files_manifest

    hp = hp.updated(train_steps=steps or hp.train_steps, editor=None)
    net, info = train_editor(ctx, cases, hp, progress=progress)
    manifest = {"format": 1, "method": Mend.name, "model": model_name, "fingerprint": ctx.fingerprint,
                "params": net.params, "hparams": hp.to_dict(), "data": data, "split": data.get("split"),
                **info, "threads": torch.get_num_threads(), "editscale_version": version("editscale"),
                "torch_version": torch.__version__, "created": datetime.now(UTC).isoformat(timespec="seconds")}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_editor(out, net, manifest)
        write_files_manifest(out)
        return out, manifest
    path = editor_root() / f"{ctx.fingerprint}-{training_key(hp, data)}"
    build_dir(path, lambda tmp: save_editor(tmp, net, manifest), lambda p: False, force=True)
    return path, manifest
