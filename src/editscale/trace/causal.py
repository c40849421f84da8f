"""Causal tracing (Meng et al. 2022, section 3) on any architecture in the anatomy, batched.

The procedure is the paper's, with the facts its text leaves out taken from kmeng01/rome
(``experiments/causal_trace.py``):

- **clean run**: the prompt as it is; o is the token the model predicts next (for a known fact: the first
  token of its true object);
- **corrupted run**: Gaussian noise of ``noise_factor`` (3) times the standard deviation of the input
  embeddings of the data set's subjects (``embedding_noise``; the reference's ``s3``) is added to the
  embeddings of the subject's tokens; ``samples`` (10) noise draws per fact, seeded, and the same draws for
  every restoration of that fact; probabilities are averaged over the draws;
- **restored runs**: the corrupted run with one clean state put back at one token: the output of block l
  (``hidden``), or the outputs of the MLP (``mlp``) or attention (``attn``) modules of the ``window`` layers
  around l, ``[l - window // 2, l + ceil(window / 2))`` clipped to the model (the reference's window), for
  every layer l and token t;
- **effects**: total effect TE = P_clean(o) - P_corrupted(o); indirect effect of a state IE = P_restored(o) -
  P_corrupted(o).

Batched (the reference runs one full forward pass of samples + 1 rows per restoration, i.e. ``T x L + 2``
passes per kind): restoring a state at layer l leaves the layers below l exactly as in the corrupted run, so
the corrupted run is made once, recording the input of every block, and each restored row starts at its first
changed block from that record. A restoration at token t leaves the positions before t as in the corrupted run
too, so its rows compute positions t.. only, the blocks given the corrupted run's keys and values of the
positions before t in place of their key/value cache. All rows restoring at one token (every kind, layer and
noise draw) are swept through the blocks together: at block j the batch holds the rows that start at or below
j (``max_rows`` bounds a batch). Blocks are called with the arguments the model itself gave them in a clean
run of positions t.. (``hooks.capture_calls``: masks, rotary position embeddings); MLP/attention states are
put back with ``hooks.edit_output``. The LM head is applied to the last position only. Two restorations need
no computation: a state at a token before the subject is the same in the clean and corrupted runs (IE = 0),
and block L-1's output matters to the head only at the last token (IE = TE there, 0 elsewhere).
``trace_fact(..., plain=True)`` is the reference's one-pass-per-restoration computation, kept as the check of
the batched one.

Averaging over facts, known facts and the recommended layers: ``trace/summary.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from editscale.data.records import EditCase, EditRequest, Fact
from editscale.errors import ConfigError, UnsupportedModelError
from editscale.eval.scoring import score_continuations
from editscale.model.anatomy import Anatomy, get_anatomy
from editscale.model.compat import cache_kwargs, cache_layer, is_cache, output_cache
from editscale.model.hooks import capture, capture_calls, edit_output
from editscale.model.tokens import continuation_ids, encode, token_index_at

KINDS = ("hidden", "mlp", "attn")
GROUPS = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)
LAST_SUBJECT, LAST_TOKEN = 2, 5  # rows of GROUPS
def default_window(n_layers: int) -> int:
    """The paper's window of 10 layers for models of 28 layers or more (GPT-J, GPT-2 XL, NeoX); a third of the
    layers (at least 1) below that, so a small model's MLP trace still tells its layers apart."""
    return 10 if n_layers >= 28 else max(1, n_layers // 3)


def window_range(layer: int, window: int, n_layers: int) -> tuple[int, int]:
    """The layers ``[lo, hi)`` restored around ``layer`` (the reference's ``trace_important_window``)."""
    return max(0, layer - window // 2), min(n_layers, layer - (-window // 2))


def as_fact(item: Fact | EditRequest | EditCase) -> Fact:
    if isinstance(item, Fact):
        return item
    if isinstance(item, EditCase):
        item = item.request
    return Fact.from_request(item)


def subject_token_range(tokenizer, text: str, subject: str) -> tuple[int, int]:
    """``[first, last + 1)``: the token positions of the first occurrence of ``subject`` in ``text``."""
    start = text.index(subject)
    return token_index_at(tokenizer, text, start + 1), token_index_at(
        tokenizer, text, start + len(subject)
    ) + 1


@torch.no_grad()
def embedding_noise(model: nn.Module, tokenizer, subjects: Sequence[str], factor: float = 3.0) -> float:
    """``factor`` x the standard deviation of the input embeddings of the subjects' tokens (reference: ``s3``,
    subjects tokenized on their own, every embedding coordinate pooled)."""
    emb = model.get_input_embeddings()
    ids = [i for s in dict.fromkeys(subjects) for i in tokenizer(s, add_special_tokens=False)["input_ids"]]
    if not ids:
        raise ConfigError("no subject tokens to measure the embedding noise on")
    vecs = emb(torch.tensor(ids, device=emb.weight.device))
    return factor * vecs.float().std().item()


@torch.no_grad()
def known_mask(model: nn.Module, tokenizer, facts: Sequence[Fact], batch_size: int = 64,
               progress: bool | None = False) -> list[bool]:
    """Whether the model's greedy continuation of each fact's prompt begins with its object (a progress line
    per ``batch_size`` facts when there are more than one batch: on Gemma 3 at one thread, ROME's 1,209
    known_1000 facts take minutes; a few facts take no time and print nothing before what follows)."""
    from editscale.progress import progress_bar

    known: list[bool] = []
    shown = progress if len(facts) > batch_size else False
    with progress_bar("finding the facts the model knows", len(facts), shown) as advance:
        for start in range(0, len(facts), batch_size):
            chunk = facts[start:start + batch_size]
            scores = score_continuations(model, tokenizer, [f.text for f in chunk], [f.object for f in chunk],
                                         batch_size=batch_size)
            known += scores.all_argmax.tolist()
            advance(len(chunk))
    return known


@dataclass
class FactTrace:
    """One traced fact. ``effects[kind][t, l]``: IE of restoring that kind's state(s) at token t, layer l."""

    fact: Fact
    tokens: list[str]
    subject_range: tuple[int, int]
    answer: str
    answer_id: int
    p_clean: float
    p_corrupted: float
    effects: dict[str, np.ndarray]
    window: int
    samples: int
    forward_calls: int = 0  # model passes and block sweeps
    row_layers: float = 0.0  # (row, block) evaluations in full-length rows, every run of this fact included
    seconds: float = 0.0

    @property
    def total_effect(self) -> float:
        return self.p_clean - self.p_corrupted

    @property
    def n_layers(self) -> int:
        return next(iter(self.effects.values())).shape[1]

    def reference_passes(self) -> int:
        """Forward passes the reference takes for this fact: per kind, 2 + one per (token, layer)."""
        return len(self.effects) * (2 + len(self.tokens) * self.n_layers)

    def reference_row_layers(self) -> int:
        return self.reference_passes() * (self.samples + 1) * self.n_layers

    def grouped(self, kind: str) -> list[list[np.ndarray]]:
        """This fact's rows of ``effects[kind]`` in the six token groups (lists, pooled later)."""
        e = self.effects[kind]
        b, end = self.subject_range
        last = e.shape[0] - 1
        rows: list[list[np.ndarray]] = [[e[b]], list(e[b + 1 : end - 1]), [e[end - 1]], [], [], [e[last]]]
        if end <= last:
            rows[3].append(e[end])
            rows[4].extend(e[end + 1 : last])
        return rows


class _Head:
    """P(answer) from final hidden states at the last position: the final norm and the LM head."""

    def __init__(self, model: nn.Module, anatomy: Anatomy, answer_id: int) -> None:
        self.norm = model.get_submodule(anatomy.final_norm)
        self.head = model.get_output_embeddings()
        self.answer_id = answer_id

    def logits(self, h_last: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h_last)).float()

    def prob(self, h_last: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(h_last), -1)[:, self.answer_id]


@dataclass
class _Runs:
    """The clean and corrupted runs of one fact, and what the restorations need from them."""

    ids: torch.Tensor  # (1, T)
    subject_range: tuple[int, int]
    answer_id: int
    noise: torch.Tensor  # (S, n_subject_tokens, d)
    clean_out: list[torch.Tensor]  # block outputs, (1, T, d) each
    clean_mod: dict[str, list[torch.Tensor]]  # kind -> module outputs per layer, (1, T, d)
    corrupt_in: list[torch.Tensor]  # block inputs (L + 1: the last is block L-1's output), (S, T, d)
    calls: list[tuple[tuple, dict]]  # each block's (args, kwargs) in the clean run
    corrupt_kv: list[tuple[torch.Tensor, torch.Tensor]]  # each block's keys and values in the corrupted run
    p_clean: float
    p_corrupted_rows: torch.Tensor  # (S,)


def _module_names(anatomy: Anatomy, kind: str, n_layers: int) -> list[str]:
    if kind == "hidden":
        return [anatomy.layer_name(j) for j in range(n_layers)]
    if kind == "mlp":
        return [anatomy.mlp_name(j) for j in range(n_layers)]
    return [anatomy.attn_name(j) for j in range(n_layers)]


def _add_noise(subject_range: tuple[int, int], noise: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    b, e = subject_range

    def fn(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[:, b:e] += noise.to(h.dtype)
        return h

    return fn


def _prepare(
    model,
    tokenizer,
    anatomy: Anatomy,
    fact: Fact,
    kinds: Sequence[str],
    noise_level: float,
    samples: int,
    generator: torch.Generator,
) -> _Runs:
    device = next(model.parameters()).device
    ids = torch.tensor([encode(tokenizer, fact.text)], device=device)
    rng = subject_token_range(tokenizer, fact.text, fact.subject)
    answer_id = continuation_ids(tokenizer, fact.text, fact.object)[0]
    n = anatomy.n_layers(model)
    blocks = _module_names(anatomy, "hidden", n)
    mods = {k: _module_names(anatomy, k, n) for k in kinds if k != "hidden"}
    d = model.get_input_embeddings().weight.shape[1]
    noise = (torch.randn(samples, rng[1] - rng[0], d, generator=generator) * noise_level).to(device)

    with (
        capture_calls(model, blocks) as calls,
        capture(model, blocks + [m for ms in mods.values() for m in ms], inputs=False) as outs,
    ):
        logits = model(input_ids=ids, use_cache=False).logits[:, -1].float()
    head = _Head(model, anatomy, answer_id)
    clean_out = [outs[b] for b in blocks]
    mine = head.logits(clean_out[-1][:, -1])
    if not torch.allclose(mine, logits, rtol=1e-3, atol=1e-3 * (1 + logits.abs().max().item())):
        raise UnsupportedModelError(
            f"{type(model).__name__}: the logits are not the LM head of the final norm of the last block's "
            "output "
            "(as the anatomy says), so causal tracing cannot compute them from block outputs"
        )
    with (
        edit_output(model, anatomy.embed_name(model), _add_noise(rng, noise)),
        capture(model, blocks, inputs=True) as ins,
        capture(model, blocks[-1:], inputs=False) as last,
    ):
        cache = output_cache(model(input_ids=ids.expand(samples, -1), **cache_kwargs(model, None)))
    return _Runs(
        ids=ids,
        subject_range=rng,
        answer_id=answer_id,
        noise=noise,
        clean_out=clean_out,
        clean_mod={k: [outs[m] for m in ms] for k, ms in mods.items()},
        corrupt_in=[ins[b] for b in blocks] + [last[blocks[-1]]],
        calls=[calls[b] for b in blocks],
        corrupt_kv=[cache_layer(cache, j) for j in range(n)],
        p_clean=head.prob(clean_out[-1][:, -1]).item(),
        p_corrupted_rows=head.prob(last[blocks[-1]][:, -1]),
    )


def _suffix_calls(model, anatomy: Anatomy, ids: torch.Tensor, t: int) -> list[tuple[tuple, dict]]:
    """The blocks' (args, kwargs) when the clean run computes only positions >= t, the rest in its cache."""
    if t == 0:
        raise ValueError("position 0 has no prefix")
    blocks = _module_names(anatomy, "hidden", anatomy.n_layers(model))
    prefix = output_cache(model(input_ids=ids[:, :t], **cache_kwargs(model, None)))
    with capture_calls(model, blocks) as calls:
        model(input_ids=ids[:, t:], **cache_kwargs(model, prefix))
    return [calls[b] for b in blocks]


class _PrefixKV:
    """Stands in for the key/value cache in a block's call: the corrupted run's keys and values of the
    positions before the restored token, per row, ahead of the block's own (what ``Cache.update`` returns)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        return torch.cat([self.keys.to(keys.dtype), keys], -2), torch.cat(
            [self.values.to(values.dtype), values], -2
        )


def _with_cache(call: tuple[tuple, dict], cache) -> tuple[tuple, dict]:
    """A block's captured call with its cache argument (wherever the family passes it) replaced."""
    args, kwargs = call
    if not any(is_cache(a) for a in (*args, *kwargs.values())):
        raise UnsupportedModelError(
            "a decoder block was called without a key/value cache argument, so causal "
            "tracing cannot hand it the positions before the restored token"
        )
    return (
        tuple(cache if is_cache(a) else a for a in args),
        {k: (cache if is_cache(v) else v) for k, v in kwargs.items()},
    )


def _block_main(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _check(kinds: Sequence[str], samples: int, window: int) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(kinds))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(
            f"unknown trace kind(s) {', '.join(bad) or '(none)'}; use some of {', '.join(KINDS)}"
        )
    if samples < 1 or window < 1:
        raise ConfigError(f"samples and window must be at least 1 (got {samples} and {window})")
    return kinds


@torch.no_grad()
def trace_fact(
    model: nn.Module,
    tokenizer,
    fact: Fact | EditRequest | EditCase,
    *,
    noise: float,
    kinds: Sequence[str] = KINDS,
    samples: int = 10,
    window: int | None = None,
    seed: int = 0,
    max_rows: int = 1024,
    anatomy: Anatomy | None = None,
    plain: bool = False,
) -> FactTrace:
    """Trace one fact: every kind's IE at every (token, layer), all restorations batched (module docstring).

    ``plain``: the reference's computation instead, one full forward pass per (kind, layer, token) through the
    model's own forward with the noise and the restorations as hooks (the same noise draws): the check of the
    batched one, and the baseline of ``bench/bench_trace.py``.
    """
    t0 = time.perf_counter()
    fact = as_fact(fact)
    anatomy = anatomy or get_anatomy(model)
    n = anatomy.n_layers(model)
    window = default_window(n) if window is None else window
    kinds = _check(kinds, samples, window)
    runs = _prepare(
        model, tokenizer, anatomy, fact, kinds, noise, samples, torch.Generator().manual_seed(seed)
    )
    p_corr = runs.p_corrupted_rows.mean().item()
    if plain:
        probs, calls, row_layers = _plain(model, anatomy, runs, kinds, samples, window)
    else:
        probs, calls, row_layers = _batched(model, anatomy, runs, kinds, samples, window, max_rows)
    return FactTrace(
        fact=fact,
        tokens=[tokenizer.decode([i]) for i in runs.ids[0].tolist()],
        subject_range=runs.subject_range,
        answer=tokenizer.decode([runs.answer_id]),
        answer_id=runs.answer_id,
        p_clean=runs.p_clean,
        p_corrupted=p_corr,
        effects={k: p - p_corr for k, p in probs.items()},
        window=window,
        samples=samples,
        forward_calls=2 + calls,
        row_layers=n * (1 + samples) + row_layers,
        seconds=time.perf_counter() - t0,
    )


def _batched(model, anatomy: Anatomy, runs: _Runs, kinds, samples: int, window: int, max_rows: int):
    """P_restored(o) per kind, (T, L); forward calls, and (row, block) evaluations in full-length rows."""
    n = len(runs.calls)
    T = runs.ids.shape[1]
    b, _ = runs.subject_range
    head = _Head(model, anatomy, runs.answer_id)
    p_corr = runs.p_corrupted_rows.mean().item()
    probs = {k: np.full((T, n), p_corr) for k in kinds}  # tokens before the subject: as corrupted
    if "hidden" in kinds:  # block L-1's output reaches the head only at the last token
        probs["hidden"][T - 1, n - 1] = runs.p_clean
    calls, row_layers = 0, 0.0
    for t in range(b, T):
        # rows restoring at token t: (first changed block, end of window, kind index, layer), `samples` each
        specs = []
        for ki, kind in enumerate(kinds):
            for layer in range(n - 1 if kind == "hidden" else n):
                lo, hi = (layer + 1, layer + 1) if kind == "hidden" else window_range(layer, window, n)
                specs.append((lo, hi, ki, layer))
        specs.sort()
        block_calls = runs.calls
        if t > 0:
            block_calls = _suffix_calls(model, anatomy, runs.ids, t)
            calls += 2
            row_layers += n * (t + (T - t)) / T
        per_chunk = max(1, max_rows // samples)
        for c0 in range(0, len(specs), per_chunk):
            chunk = specs[c0 : c0 + per_chunk]
            p = _sweep(model, anatomy, runs, kinds, chunk, samples, head, t, block_calls)
            calls += 1
            row_layers += samples * sum(n - s[0] for s in chunk) * (T - t) / T
            for (_, _, ki, layer), pk in zip(chunk, p.view(len(chunk), samples).mean(1).tolist()):
                probs[kinds[ki]][t, layer] = pk
    return probs, calls, row_layers


def _sweep(
    model,
    anatomy: Anatomy,
    runs: _Runs,
    kinds,
    chunk,
    samples: int,
    head: _Head,
    t: int,
    block_calls: list[tuple[tuple, dict]],
) -> torch.Tensor:
    """Run the rows of ``chunk`` (restorations at token t, sorted by first changed block) through the blocks,
    positions t.. only (those before t are the corrupted run's, whose keys and values the blocks are given);
    P(o) per row."""
    n = len(runs.calls)
    device = runs.ids.device
    starts = torch.tensor([s[0] for s in chunk]).repeat_interleave(samples)
    his = torch.tensor([s[1] for s in chunk]).repeat_interleave(samples)
    kind_of = torch.tensor([s[2] for s in chunk]).repeat_interleave(samples)
    draw = torch.arange(samples, device=device).repeat(len(chunk))
    ref = runs.corrupt_in[0]
    h = torch.empty((len(starts), ref.shape[1] - t, ref.shape[2]), dtype=ref.dtype, device=device)
    active = 0
    for j in range(int(starts[0]), n):
        upto = int((starts <= j).sum())
        if upto > active:  # rows whose first changed block is j join the batch
            new = torch.arange(active, upto, device=device)
            h[new] = runs.corrupt_in[j][draw[new], t:]
            if j > 0 and "hidden" in kinds:  # hidden rows: block j-1's clean output at token t
                hid = new[(kind_of[new.cpu()] == kinds.index("hidden")).to(device)]
                h[hid, 0] = runs.clean_out[j - 1][0, t]
            active = upto
        hooks = []
        for kind in ("mlp", "attn"):
            if kind in kinds:
                rows = (
                    ((kind_of[:active] == kinds.index(kind)) & (his[:active] > j)).nonzero()[:, 0].to(device)
                )
                if len(rows):
                    name = anatomy.mlp_name(j) if kind == "mlp" else anatomy.attn_name(j)
                    at_t = torch.zeros_like(rows)
                    hooks.append(
                        edit_output(model, name, _restore(rows, at_t, runs.clean_mod[kind][j][:, t:]))
                    )
        args, kwargs = block_calls[j]
        if t > 0:
            keys, values = runs.corrupt_kv[j]
            rows_draw = draw[:active]
            args, kwargs = _with_cache(
                (args, kwargs), _PrefixKV(keys[rows_draw, :, :t], values[rows_draw, :, :t])
            )
        with ExitStack() as stack:
            for hook in hooks:
                stack.enter_context(hook)
            h[:active] = _block_main(
                model.get_submodule(anatomy.layer_name(j))(h[:active], *args[1:], **kwargs)
            )
    return head.prob(h[:, -1])


def _restore(
    rows: torch.Tensor, toks: torch.Tensor, clean: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[rows, toks] = clean[0, toks].to(out.dtype)
        return out

    return fn


def _plain(model, anatomy: Anatomy, runs: _Runs, kinds, samples: int, window: int):
    n = len(runs.calls)
    T = runs.ids.shape[1]
    batch = runs.ids.expand(samples, -1)
    embed = anatomy.embed_name(model)
    probs = {k: np.zeros((T, n)) for k in kinds}
    calls = 0
    for kind in kinds:
        names = _module_names(anatomy, kind, n)
        clean = runs.clean_out if kind == "hidden" else runs.clean_mod[kind]
        for layer in range(n):
            lo, hi = (layer, layer + 1) if kind == "hidden" else window_range(layer, window, n)
            for t in range(T):
                rows, toks = torch.arange(samples), torch.tensor([t] * samples)
                with ExitStack() as stack:
                    stack.enter_context(edit_output(model, embed, _add_noise(runs.subject_range, runs.noise)))
                    for j in range(lo, hi):
                        stack.enter_context(edit_output(model, names[j], _restore(rows, toks, clean[j])))
                    logits = model(input_ids=batch, use_cache=False).logits[:, -1].float()
                calls += 1
                probs[kind][t, layer] = torch.softmax(logits, -1)[:, runs.answer_id].mean().item()
    return probs, calls, calls * samples * n
