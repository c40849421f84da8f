"""Training MEND's editor: each step one training edit's gradient through the editor, the update, then
``cedit`` x NLL of the new target on the edit prompt and its rephrasings + ``cloc`` x KL(original || edited) on
unrelated facts; ``train_and_save`` stores the result (``storage``)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.func import functional_call

from editscale.errors import ConfigError, EditError
from editscale.methods.mend.hparams import MendHparams
from editscale.methods.mend.method import Mend, _nll, edited_params, gradient_factors
from editscale.methods.mend.network import MendNetwork
from editscale.methods.mend.storage import store_editor, training_key
from editscale.methods.targets import EditItem, build_layout
from editscale.model.hooks import frozen_eval
from editscale.model.tokens import encode_batch

if TYPE_CHECKING:
    from editscale.data.records import EditCase
    from editscale.methods.context import EditContext


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

    hp = hp.updated(train_steps=steps or hp.train_steps, editor=None)
    net, info = train_editor(ctx, cases, hp, progress=progress)
    manifest = {"format": 1, "method": Mend.name, "model": model_name, "fingerprint": ctx.fingerprint,
                "params": net.params, "hparams": hp.to_dict(), "data": data, "split": data.get("split"),
                **info, "threads": torch.get_num_threads(), "editscale_version": version("editscale"),
                "torch_version": torch.__version__, "created": datetime.now(UTC).isoformat(timespec="seconds")}
    return store_editor(net, manifest, training_key(hp, data), out), manifest
