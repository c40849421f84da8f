"""Machinery shared by every locate-then-edit method: keys and target vectors (the context prefixes they are
read over are ``prefixes.py``'s).

- ``subject_activations``: inputs (keys) or outputs of any modules at the last subject token, for the bare
  prompt and averaged over the prefixed prompts.
- ``optimize_targets``: the target vectors v* (ROME: at the MLP output of the edited layer) or z (MEMIT: in
  the residual stream after the last edited layer), for ALL requests of a call in one batched optimisation.
  Per request: NLL of the new target over the prefixed prompts + kl_factor x KL(edited || original) on
  "{subject} is a" (and the case's other facts of the subject) + weight decay x ||delta|| / ||init||^2; delta
  clamped to clamp_norm_factor x ||init||; Adam; early stop once the request's loss is below a threshold.
  The per-request losses are summed, so each request's gradient, Adam state and trajectory are those of its
  own optimisation (Adam is elementwise); a request that stops early is frozen and leaves the batch.
  Each prompt's tokens before the vector's position are run once into a key/value cache (``SplitLayout``);
  every step runs only the rest, and only from the layer holding the vector on: the layers below it are run
  once and their output is replayed (``skip_modules``). The LM head is applied only where a loss reads it.
  With ``EditContext.target_cache`` set (``target_cache.py``), a request already optimised on the same
  weights is served from it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import nn

from editscale.data.records import EditCase, EditRequest
from editscale.errors import RecordError
from editscale.model.compat import cache_kwargs, output_cache
from editscale.model.hooks import add_at, capture, frozen_eval, run_until, skip_modules
from editscale.model.loading import model_device
from editscale.model.tokens import Batch, continuation_ids, encode, last_subject_index, pad_batch

if TYPE_CHECKING:
    from editscale.methods.context import EditContext
    from editscale.methods.hparams import TargetHparams


# --------------------------------------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EditItem:
    """A request plus the subject's other facts ((prompt, true object) pairs) for the KL term."""

    request: EditRequest
    other_facts: tuple[tuple[str, str], ...] = ()


def as_items(requests: Iterable[EditRequest | EditCase | EditItem]) -> list[EditItem]:
    """Normalise what methods receive: requests, CounterFact-style cases (their other facts are kept)."""
    items = []
    for r in requests:
        if isinstance(r, EditItem):
            items.append(r)
        elif isinstance(r, EditCase):
            items.append(EditItem(r.request, r.other_fact_prompts))
        elif isinstance(r, EditRequest):
            items.append(EditItem(r))
        else:
            raise RecordError(f"expected an EditRequest or EditCase, got {type(r).__name__}")
    if not items:
        raise RecordError("no edit requests given")
    return items


# --------------------------------------------------------------------------------------------------------
# activations at the last subject token
# --------------------------------------------------------------------------------------------------------
def _row_weights(groups: Sequence[Sequence[str]], average: str) -> list[float]:
    """Weights of the prefixed prompts of one request in its averaged key (they sum to 1)."""
    if average == "grouped":  # MEMIT's compute_ks: mean within each group, then over groups
        return [1.0 / (len(groups) * len(g)) for g in groups for _ in g]
    n = sum(len(g) for g in groups)  # ROME's compute_u: mean over all templates
    return [1.0 / n] * n


@dataclass
class SubjectReads:
    """One module's input or output at the last subject token: per request, bare prompt and prefix average."""

    bare: torch.Tensor  # (B, dim)
    mean: torch.Tensor  # (B, dim)


def _prompt_row(tokenizer, prefix: str, request: EditRequest) -> tuple[list[int], int]:
    template = prefix + request.prompt
    ids = encode(tokenizer, template.replace("{}", request.subject))
    return ids, last_subject_index(tokenizer, template, request.subject, request.case_id)


@torch.no_grad()
def subject_activations(
    ctx: EditContext,
    requests: Sequence[EditRequest | EditItem],
    prefixes: Sequence[Sequence[str]],
    reads: Sequence[tuple[str, bool]],
    *,
    average: str = "uniform",
    stop_after: str | None = None,
    batch_rows: int = 256,
) -> dict[tuple[str, bool], SubjectReads]:
    """For each ``(module name, inputs?)`` in ``reads``: the module's input (keys, with True) or output at the
    last subject token of each request's prompt, bare and averaged over ``prefixes`` (group 0 must be the
    bare prompt). ``stop_after`` ends each forward pass early (the deepest module read)."""
    reqs = [r.request if isinstance(r, EditItem) else r for r in requests]
    model, tok = ctx.model, ctx.tokenizer
    flat = [p for g in prefixes for p in g]
    if flat[0] != "":
        raise ValueError("prefix group 0 must be the bare prompt ['']")
    weights = torch.tensor(_row_weights(prefixes, average), dtype=torch.float64)
    rows = [_prompt_row(tok, p, r) for r in reqs for p in flat]
    device = model_device(model)
    got: dict[tuple[str, bool], list[torch.Tensor]] = {k: [] for k in reads}
    with frozen_eval(model):
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start: start + batch_rows]
            batch = pad_batch([ids for ids, _ in chunk], tok.pad_token_id, device)
            pos = torch.tensor([p for _, p in chunk], device=device)
            with ExitStack() as stack:
                caps = {k: stack.enter_context(capture(model, [k[0]], inputs=k[1], positions=pos,
                                                       stop_after=stop_after if k == reads[-1] else None))
                        for k in reads}
                run_until(model, **batch.model_inputs())
            for k, cap in caps.items():
                got[k].append(cap[k[0]])
    out = {}
    n = len(flat)
    for k, parts in got.items():
        acts = torch.cat(parts).view(len(reqs), n, -1).float()  # float32 also for half-precision models
        mean = (acts.double() * weights.to(acts.device)[None, :, None]).sum(1).float()
        out[k] = SubjectReads(bare=acts[:, 0], mean=mean)
    return out


# --------------------------------------------------------------------------------------------------------
# target vectors
# --------------------------------------------------------------------------------------------------------
@dataclass
class TargetResult:
    """Per request: the target vector (init + delta), its parts, and how the optimisation ended."""

    target: torch.Tensor  # (B, d) float32
    init: torch.Tensor  # (B, d): the module's output at the last subject token of the bare prompt
    delta: torch.Tensor  # (B, d)
    loss: torch.Tensor  # (B,) the loss at the returned delta
    nll: torch.Tensor  # (B,) mean NLL of the new target over the prefixed prompts at the returned delta
    steps: torch.Tensor  # (B,) optimiser steps taken

    def info(self) -> dict[str, list[float]]:
        return {"target_loss": self.loss.tolist(), "target_nll": self.nll.tolist(),
                "target_steps": self.steps.tolist(), "delta_norm": self.delta.norm(dim=1).tolist()}

    def row(self, i: int) -> tuple[torch.Tensor, ...]:
        """Request ``i``'s part of every field, in field order."""
        return tuple(getattr(self, f.name)[i] for f in fields(self))

    @classmethod
    def stack(cls, rows: Sequence[tuple[torch.Tensor, ...]]) -> TargetResult:
        """The result holding ``rows`` (each as ``row`` gives it), in order."""
        return cls(*(torch.stack(parts) for parts in zip(*rows)))


@dataclass
class PromptLayout:
    """One padded batch holding, per request, its (prefixed) prompts followed by the new target's tokens but
    the last, and its KL prompts; with the positions every loss term reads."""

    batch: Batch
    pos: torch.Tensor  # (R,) where a vector is added: the last subject token
    owner: torch.Tensor  # (R,) request of each row
    bare: torch.Tensor  # (B,) row of each request's bare prompt
    tok_row: torch.Tensor  # (N,) per target token: row, position whose logits predict it, id, weight
    tok_col: torch.Tensor
    tok_id: torch.Tensor
    tok_w: torch.Tensor  # 1 / (target length x number of prompts) of the owner, so the sum is ROME's mean
    kl_row: torch.Tensor  # (M,) KL prompts: row, position of the compared distribution, weight
    kl_col: torch.Tensor
    kl_w: torch.Tensor

    def rows_of(self, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the active requests, and a map from a row to its index among them (-1 elsewhere)."""
        rsel = active[self.owner].nonzero()[:, 0]
        remap = torch.full((self.owner.shape[0],), -1, dtype=torch.long, device=self.owner.device)
        remap[rsel] = torch.arange(len(rsel), device=rsel.device)
        return rsel, remap

    def inputs(self, rsel: torch.Tensor) -> dict[str, torch.Tensor]:
        width = int(self.batch.lengths[rsel].max())
        return {"input_ids": self.batch.input_ids[rsel, :width],
                "attention_mask": self.batch.attention_mask[rsel, :width], "use_cache": False}

    def nll(self, head: nn.Module, hidden: torch.Tensor, active: torch.Tensor, remap: torch.Tensor) -> torch.Tensor:
        """(B,) per active request: mean over its prompts of the mean NLL of the target tokens (0 elsewhere)."""
        return self.nll_and_hits(head, hidden, active, remap)[0]

    def nll_and_hits(self, head: nn.Module, hidden: torch.Tensor, active: torch.Tensor,
                     remap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``nll`` and (B,) bool: every target token is the argmax in every prompt of the request."""
        sel = active[self.owner[self.tok_row]]
        rows = self.tok_row[sel]
        logits = head(hidden[remap[rows], self.tok_col[sel]]).float()
        logp = torch.log_softmax(logits, -1)
        tok_id = self.tok_id[sel]
        per = -logp.gather(1, tok_id[:, None])[:, 0] * self.tok_w[sel]
        owner = self.owner[rows]
        nll = torch.zeros(active.shape[0], device=per.device).index_add(0, owner, per)
        with torch.no_grad():
            miss = (logits.argmax(-1) != tok_id).float()
            misses = torch.zeros(active.shape[0], device=per.device).index_add(0, owner, miss)
        return nll, misses == 0

    def kl_logprobs(self, head: nn.Module, hidden: torch.Tensor, active: torch.Tensor,
                    remap: torch.Tensor) -> torch.Tensor:
        """Log next-token distributions at the KL positions of the active requests' KL prompts."""
        rows = self.kl_row[active[self.owner[self.kl_row]]]
        return torch.log_softmax(head(hidden[remap[rows], self.kl_col[active[self.owner[self.kl_row]]]]).float(), -1)


@dataclass
class SplitLayout(PromptLayout):
    """A ``PromptLayout`` re-laid so that every row's vector position (``pos``) falls in one column P.

    Nothing before a row's vector position depends on the added vector (attention is causal), so the first
    P columns are run once (``prefix_cache``) and each optimisation step runs only the rest, the suffix,
    reading the prefix's keys and values from a cache: on prefixed prompts most tokens are prefix. Here
    ``batch`` is the right-padded suffix, ``pos`` is 0 and ``tok_col``/``kl_col`` count from the suffix start.
    """

    prefix: Batch | None  # (R, P) left-padded; None when every vector sits at the first token
    prefix_positions: torch.Tensor | None  # (R, P) position ids
    positions: torch.Tensor  # (R, S) position ids of the suffix

    def inputs(self, rsel: torch.Tensor, cache=None, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Forward arguments of the suffix rows ``rsel``; with ``cache``, the prefix's keys and values passed
        as ``model``'s forward names its cache argument (``model.compat.cache_kwargs``)."""
        width = int(self.batch.lengths[rsel].max())
        mask = self.batch.attention_mask[rsel, :width]
        out = {"input_ids": self.batch.input_ids[rsel, :width], "position_ids": self.positions[rsel, :width]}
        if cache is None:
            return {**out, "attention_mask": mask, "use_cache": False}
        passed = cache_kwargs(model, cache) if model is not None else {"past_key_values": cache, "use_cache": True}
        return {**out, "attention_mask": torch.cat([self.prefix.attention_mask[rsel], mask], 1), **passed}

    @torch.no_grad()
    def prefix_cache(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per decoder layer, the keys and values of the prefix columns (None without a prefix)."""
        if self.prefix is None:
            return None
        out = model.base_model(input_ids=self.prefix.input_ids, attention_mask=self.prefix.attention_mask,
                               position_ids=self.prefix_positions, **cache_kwargs(model.base_model, None))
        return [(layer.keys, layer.values) for layer in output_cache(out).layers]

    @staticmethod
    def cache(model: nn.Module, kv: list[tuple[torch.Tensor, torch.Tensor]] | None, rsel: torch.Tensor):
        """A fresh cache holding the prefix of rows ``rsel`` (the forward pass appends to it)."""
        if kv is None:
            return None
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k[rsel], v[rsel]) for k, v in kv], config=model.config)


def split_at_vectors(lay: PromptLayout, pad_id: int) -> SplitLayout:
    """``lay`` with every row shifted right so that its vector position is column P = max(pos) (see
    ``SplitLayout``), cut into the prefix (columns < P) and the suffix."""
    ids, mask, lengths, pos = lay.batch.input_ids, lay.batch.attention_mask, lay.batch.lengths, lay.pos
    n_rows, width = ids.shape
    at = int(pos.max())
    shift = at - pos
    total = at + int((lengths - pos).max())
    cols = torch.arange(width, device=ids.device)[None].expand(n_rows, width)
    real = mask.bool()
    rows = torch.arange(n_rows, device=ids.device)[:, None].expand(n_rows, width)[real]
    dest = (cols + shift[:, None])[real]
    new_ids = torch.full((n_rows, total), pad_id, dtype=ids.dtype, device=ids.device)
    new_mask = torch.zeros((n_rows, total), dtype=mask.dtype, device=ids.device)
    new_pos = torch.zeros((n_rows, total), dtype=torch.long, device=ids.device)
    new_ids[rows, dest] = ids[real]
    new_mask[rows, dest] = 1
    new_pos[rows, dest] = cols[real]
    suffix = Batch(new_ids[:, at:], new_mask[:, at:], lengths - pos)
    prefix = Batch(new_ids[:, :at], new_mask[:, :at], pos) if at > 0 else None
    return SplitLayout(
        suffix, torch.zeros_like(pos), lay.owner, lay.bare, lay.tok_row, lay.tok_col - pos[lay.tok_row],
        lay.tok_id, lay.tok_w, lay.kl_row, lay.kl_col - pos[lay.kl_row], lay.kl_w,
        prefix=prefix, prefix_positions=new_pos[:, :at] if at > 0 else None, positions=new_pos[:, at:],
    )


def build_layout(
    ctx: EditContext,
    items: Sequence[EditItem],
    prefixes: Sequence[Sequence[str]],
    *,
    kl_prompt: str | None = None,
    other_facts: bool = False,
) -> PromptLayout:
    """The batch of prompts for ``items``: every prefix + prompt + target[:-1]; then, with ``kl_prompt``, the
    KL prompts ("{} is a", compared at the subject's last token as the reference code; with ``other_facts``
    also the subject's other facts, compared where their object is predicted)."""
    tok = ctx.tokenizer
    flat = [p for g in prefixes for p in g]
    seqs: list[list[int]] = []
    pos, owner, bare = [], [], []
    tok_row, tok_col, tok_id, tok_w = [], [], [], []
    kl_row, kl_col, kl_w = [], [], []
    for b, item in enumerate(items):
        r = item.request
        target = continuation_ids(tok, r.text, r.target_new)
        bare.append(len(seqs))
        for prefix in flat:
            ids, subj = _prompt_row(tok, prefix, r)
            row = len(seqs)
            seqs.append(ids + target[:-1])
            pos.append(subj)
            owner.append(b)
            tok_row += [row] * len(target)
            tok_col += range(len(ids) - 1, len(ids) - 1 + len(target))
            tok_id += target
            tok_w += [1.0 / (len(target) * len(flat))] * len(target)
        if kl_prompt is None:
            continue
        ids, subj = _prompt_row(tok, "", EditRequest(kl_prompt, r.subject, r.target_new))
        kl = [(ids, subj, subj)]  # (ids, where the vector goes, where the distribution is compared)
        for prompt, _ in item.other_facts if other_facts else ():
            template = prompt if "{}" in prompt else prompt.replace(r.subject, "{}", 1)
            if "{}" not in template:
                warnings.warn(f"record {r.case_id!r}: other-fact prompt {prompt!r} does not contain the "
                              "subject; left out of the KL term", stacklevel=3)
                continue
            ids = encode(tok, template.replace("{}", r.subject))
            kl.append((ids, last_subject_index(tok, template, r.subject, r.case_id), len(ids) - 1))
        for ids, subj, at in kl:
            kl_row.append(len(seqs))
            kl_col.append(at)
            kl_w.append(1.0 / len(kl))
            seqs.append(ids)
            pos.append(subj)
            owner.append(b)
    device = model_device(ctx.model)

    def t(x, dtype=torch.long):
        return torch.tensor(x, dtype=dtype, device=device)

    return PromptLayout(pad_batch(seqs, tok.pad_token_id, device), t(pos), t(owner), t(bare), t(tok_row),
                        t(tok_col), t(tok_id), t(tok_w, torch.float32), t(kl_row), t(kl_col),
                        t(kl_w, torch.float32))


def _layer_index(layers_path: str, module: str) -> int:
    """The decoder layer that ``module`` belongs to (0 for a module outside the layers)."""
    head = module.removeprefix(layers_path + ".").split(".", 1)[0] if module.startswith(layers_path + ".") else ""
    return int(head) if head.isdigit() else 0


def optimize_targets(
    ctx: EditContext,
    requests: Sequence[EditRequest | EditCase | EditItem],
    module: str,
    hp: TargetHparams,
    prefixes: Sequence[Sequence[str]],
    advance: Callable[[int], object] | None = None,
) -> TargetResult:
    """Target vectors for all ``requests``: a delta added to ``module``'s output at the last subject token.

    ``module`` is the MLP output matrix of the edited layer (ROME's v*) or a decoder layer (MEMIT's z, the
    residual stream). Requests are optimised ``hp.target_batch`` at a time, each exactly as on its own;
    ``advance(n)``, when given, is called after each chunk of n requests (a progress bar's). With a
    ``ctx.target_cache`` (``target_cache.TargetCache``, off by default), requests it holds for these weights are
    served from it and only the others optimised.
    """
    items = as_items(requests)
    cache = ctx.target_cache
    if cache is None:
        return _optimize_items(ctx, items, module, hp, prefixes, advance)
    keys = cache.keys(ctx.model, items, module, hp, prefixes)
    rows = {i: cache.get(k) for i, k in enumerate(keys) if k in cache}
    if advance is not None and rows:
        advance(len(rows))
    todo = [i for i in range(len(items)) if i not in rows]
    for start in range(0, len(todo), hp.target_batch):  # stored chunk by chunk: a file cache keeps them all
        chunk = todo[start:start + hp.target_batch]
        res = _optimize_items(ctx, [items[i] for i in chunk], module, hp, prefixes, advance)
        for j, i in enumerate(chunk):
            rows[i] = res.row(j)
            cache.put(keys[i], rows[i])
    return TargetResult.stack([rows[i] for i in range(len(items))])


def _optimize_items(ctx: EditContext, items: Sequence[EditItem], module: str, hp: TargetHparams,
                    prefixes: Sequence[Sequence[str]], advance: Callable[[int], object] | None) -> TargetResult:
    parts = []
    for i in range(0, len(items), hp.target_batch):
        parts.append(_optimize_chunk(ctx, items[i: i + hp.target_batch], module, hp, prefixes))
        if advance is not None:
            advance(len(parts[-1].steps))
    return TargetResult(*(torch.cat([getattr(p, f) for p in parts]) for f in
                          ("target", "init", "delta", "loss", "nll", "steps")))


def _optimize_chunk(ctx: EditContext, items: Sequence[EditItem], module: str, hp: TargetHparams,
                    prefixes: Sequence[Sequence[str]]) -> TargetResult:
    model = ctx.model
    full = build_layout(ctx, items, prefixes, kl_prompt=hp.kl_prompt if hp.kl_factor > 0 else None,
                        other_facts=hp.kl_other_facts)
    lay = split_at_vectors(full, ctx.tokenizer.pad_token_id)
    n_req, device = len(items), lay.pos.device
    head, body = model.get_output_embeddings(), model.base_model
    # the layers below the one holding the vector give the same output at every step: run them once, replay
    lower_names = [ctx.anatomy.layer_name(i) for i in range(_layer_index(ctx.anatomy.layers, module))]
    lower = None
    delta = torch.zeros(n_req, head.weight.shape[1], device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    active = torch.ones(n_req, dtype=torch.bool, device=device)
    init = kl_init = max_norm = None
    final_loss = torch.zeros(n_req, device=device)
    final_nll = torch.zeros(n_req, device=device)
    steps = torch.zeros(n_req, dtype=torch.long, device=device)
    hits = torch.zeros(n_req, dtype=torch.long, device=device)  # steps so far with the target the argmax

    with frozen_eval(model):
        prefix_kv = lay.prefix_cache(model)
        for it in range(hp.v_steps):
            rsel, remap = lay.rows_of(active)  # only the requests still optimising take part
            row_owner = lay.owner[rsel]
            width = int(lay.batch.lengths[rsel].max())
            with ExitStack() as stack:
                if init is None:  # the first pass (delta = 0) records the initial vectors
                    first = stack.enter_context(capture(model, [module], inputs=False, positions=lay.pos))
                    if lower_names:
                        below = stack.enter_context(capture(model, lower_names[-1:], inputs=False))
                elif lower is not None:
                    stack.enter_context(skip_modules(model, lower_names,
                                                     lambda h=lower, r=rsel, w=width: h[r, :w]))
                stack.enter_context(add_at(model, module, lay.pos[rsel], delta[row_owner]))
                hidden = body(**lay.inputs(rsel, lay.cache(model, prefix_kv, rsel), model=body)).last_hidden_state
            if init is None:
                init = first[module][lay.bare].float()
                max_norm = hp.clamp_norm_factor * init.norm(dim=1)
                lower = below[lower_names[-1]] if lower_names else None

            nll, hit = lay.nll_and_hits(head, hidden, active, remap)
            kl = torch.zeros(n_req, device=device)
            if len(lay.kl_row):  # KL(edited || original), averaged over each request's KL prompts
                k_logp = lay.kl_logprobs(head, hidden, active, remap)
                if kl_init is None:
                    kl_init = k_logp.detach()
                ksel = active[lay.owner[lay.kl_row]]
                per = (k_logp.exp() * (k_logp - kl_init[ksel])).sum(-1) * lay.kl_w[ksel]
                kl = kl.index_add(0, lay.owner[lay.kl_row[ksel]], per)
            decay = hp.v_weight_decay * delta.norm(dim=1) / init.norm(dim=1).clamp_min(1e-12) ** 2
            loss = nll + hp.kl_factor * kl + decay

            with torch.no_grad():
                final_loss[active] = loss[active]
                final_nll[active] = nll[active]
            if hp.v_stop_on == "argmax":  # ENCORE's most-probable early stopping, at the v_argmax_hits-th hit
                hits += (active & hit).long()
                still = active & (hits < hp.v_argmax_hits)
            else:
                crit = loss if hp.v_stop_on == "loss" else nll
                still = active & (crit.detach() >= hp.v_early_stop)
            if it == hp.v_steps - 1 or not bool(still.any()):
                break
            opt.zero_grad()
            loss[still].sum().backward()
            kept = delta.detach().clone()
            opt.step()
            with torch.no_grad():
                delta[~still] = kept[~still]  # requests that stopped stay where they stopped
                norms = delta.norm(dim=1)
                over = norms > max_norm
                delta[over] *= (max_norm[over] / norms[over])[:, None]
            steps += still.long()
            active = still

    delta = delta.detach()
    return TargetResult(init + delta, init, delta, final_loss, final_nll, steps)
