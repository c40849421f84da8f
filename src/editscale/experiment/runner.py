"""The sequential-editing experiment: edit one model with many facts in order and measure, as edits pile up,
editing proficiency, forgetting of earlier edits, downstream ability and drift of the edited weights.

``run_experiment(config, out_dir)`` runs a config to its end; ``resume(out_dir)`` continues a killed run from
its last checkpoint and produces the same per-edit results as a run that was never interrupted.

Numbering: update ``u`` = 1..U applies edits ``(u-1)*batch + 1 .. u*batch`` (edits are numbered from 1);
update 0 is the unedited model (the downstream baseline). The schedule, per update ``u``:

1. compute the update (the method's ``Delta``) and apply it;
2. measure every matrix edited so far: Frobenius distance from its original, that distance over the matrix's
   elements (the scale paper's code and Table 2) and over the layer's neurons (its text), and this update's
   norm; score the new edits with every per-edit metric of the run (``editscale.eval.metrics``); measure the
   guard's generation entropy and neighborhood probe;
3. the guard flags a disabling update and, when configured, reverts it;
4. ``u % forget_every == 0`` or the last update: re-check every earlier edit that was correct when made.
   Forgetting as the scale paper's code (``downstream_eval/fact_forgetting.py``): an edit is correct when every
   token of its new target is the argmax after the edit prompt (teacher forced); it is forgotten from the
   first re-check at which it is not, and stays counted; the percentage divides by the edits correct so far
   (the current update's included). Beside it, ``forgotten_prob``: of the earlier edits with P(new) > P(true)
   when made, the share failing that at this re-check (editscale's earlier definition);
5. ``u % downstream_every == 0``, update 0 or the last update: downstream tasks;
6. at every re-check point, a checkpoint (after everything of update ``u`` is stored).

Every update's results are written in one transaction; a resume drops whatever came after the last
checkpoint and redoes it. Only one copy of each edited matrix's original weights is kept, whatever the number
of edits.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from editscale.data.records import EditCase
from editscale.errors import RunStateError
from editscale.eval.counterfact import CaseScores, ReferenceScorer, evaluate_cases
from editscale.eval.forgetting import Forgetting
from editscale.eval.lengths import EDIT_RESERVE, check_cases_fit
from editscale.eval.metrics import metrics_at, nanmean
from editscale.experiment.checkpoint import (
    Checkpoint,
    checkpoint_dir,
    load_checkpoint,
    prune_checkpoints,
    restore_weights,
    save_checkpoint,
    set_rng_states,
)
from editscale.experiment.config import RunConfig, load_config, parse_config, sample_cases
from editscale.experiment.guard import (
    Flag,
    Guard,
    UpdateSignals,
    entropy_prompts,
    generation_entropy,
    weight_distance,
)
from editscale.experiment.rundir import RunLock, check_free, clean_setups, config_hash, run_state, setup_dir
from editscale.experiment.store import DB_NAME, RunStore
from editscale.experiment.summary import summarize
from editscale.methods.base import Delta, EditState
from editscale.model.loading import nonfinite_weights, torch_threads
from editscale.progress import progress_bar

_VERSIONED = ("editscale", "torch", "transformers", "tokenizers", "safetensors", "numpy")


@dataclass(frozen=True)
class Schedule:
    """Which updates get re-checks (and checkpoints) and downstream evaluations."""

    n_edits: int
    batch: int
    forget_every: int
    downstream_every: int  # 0: never

    @classmethod
    def of(cls, cfg: RunConfig) -> Schedule:
        return cls(cfg.edits, cfg.batch, cfg.forget_every, cfg.downstream_every)

    @property
    def n_updates(self) -> int:
        return -(-self.n_edits // self.batch)

    def edits_in(self, u: int) -> range:
        """Edit numbers (from 1) applied by update ``u`` (from 1)."""
        return range((u - 1) * self.batch + 1, min(u * self.batch, self.n_edits) + 1)

    def n_edits_after(self, u: int) -> int:
        return min(u * self.batch, self.n_edits)

    def recheck(self, u: int) -> bool:
        return u > 0 and (u % self.forget_every == 0 or u == self.n_updates)

    def downstream(self, u: int) -> bool:
        if self.downstream_every == 0:
            return False
        return u == 0 or u % self.downstream_every == 0 or u == self.n_updates


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _layer_of(param: str, layers_path: str) -> int | None:
    m = re.match(re.escape(layers_path) + r"\.(\d+)\.", param)
    return int(m.group(1)) if m else None


def _recheck_case(case: EditCase) -> EditCase:
    """The case reduced to its edit prompt: a re-check asks only whether the edit still holds."""
    return dataclasses.replace(case, paraphrase_prompts=(), neighborhood_prompts=(), attribute_prompts=(),
                               generation_prompts=(), other_fact_prompts=())


def _probe_case(case: EditCase) -> EditCase:
    """The case reduced to a few of its neighbourhood prompts: part of the guard's fixed probe of unrelated
    facts, small enough to score after every update."""
    return dataclasses.replace(case, paraphrase_prompts=(), neighborhood_prompts=case.neighborhood_prompts[:4],
                               attribute_prompts=(), generation_prompts=(), other_fact_prompts=())


def _downstream_evaluator(cfg: RunConfig, model: nn.Module, tokenizer) -> Callable[[], dict[str, dict[str, float]]]:
    """Prepare the downstream suite once; the returned callable evaluates the model as it is now."""
    from editscale.eval.downstream import prepare_panel
    from editscale.names import resolve_model_path

    panel = prepare_panel(cfg.tasks, model, tokenizer, data_dir=cfg.downstream_data_dir, n=cfg.downstream_n,
                          seed=cfg.seed, model_dir=resolve_model_path(cfg.model), batch_size=cfg.eval_batch_size)
    return lambda: panel.evaluate(model)


class _Run:
    """One run's live objects: model, editor, store, guard and what the loop carries between updates."""

    def __init__(self, cfg: RunConfig, run_dir: Path, cases: list[EditCase], progress: bool | None) -> None:
        from editscale.methods.editor import Editor
        from editscale.model.loading import fingerprint
        from editscale.names import load_model

        self.cfg, self.run_dir, self.cases, self.progress = cfg, run_dir, cases, progress
        self.schedule = Schedule.of(cfg)
        self.model, self.tok, self.anatomy = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device,
                                                         device_map=cfg.device_map)
        check_cases_fit(self.model, self.tok, cases, reserve=EDIT_RESERVE)  # before the run directory exists
        self.fingerprint = fingerprint(self.model)
        # statistics and context prefixes come from the unedited model, also when a resume starts
        self.editor = Editor(self.model, self.tok, cfg.method.name, cfg.method.hparams or None, seed=cfg.seed,
                             progress=progress).prepare()
        self.downstream = (_downstream_evaluator(cfg, self.model, self.tok) if cfg.downstream_every else None)
        self.guard = Guard(cfg.guard)
        on = cfg.guard.enabled
        self.entropy_prompts = entropy_prompts(cases, cfg.guard.entropy_prompts) if on else []
        n_probe = cfg.guard.probe_cases if on else 0
        self.probe = [_probe_case(c) for c in cases[len(cases) - n_probe:] if c.neighborhood_prompts] if n_probe else []
        self.edit_metrics = cfg.edit_metrics
        needs_reference = any("reference" in m.needs for m in metrics_at("edit") if m.name in self.edit_metrics)
        self.reference = ReferenceScorer(cases) if needs_reference else None
        # carried between updates (and in checkpoints)
        self.originals: dict[str, torch.Tensor] = {}  # one copy of each edited matrix, stored layout
        self.transposed: dict[str, bool] = {}
        self.last_frobenius: dict[str, float] = {}
        self.forgetting = Forgetting()
        self._store: RunStore | None = None

    @property
    def store(self) -> RunStore:
        if self._store is None:
            raise RunStateError("the run has no results store yet")
        return self._store

    def open_store(self) -> None:
        self._store = RunStore.in_dir(self.run_dir)

    # --- start and resume -------------------------------------------------------------------------------
    def create_store(self) -> None:
        """The run directory with its database (config, its hash, plan), set up beside it and renamed into
        place (``rundir.setup_dir``): a kill before the rename leaves no run directory, after it one that
        resumes (from the baseline)."""
        with setup_dir(self.run_dir) as tmp, RunStore(tmp / DB_NAME, create=True,
                                                      edit_metrics=self.edit_metrics) as store:
            store.set_meta(config=self.cfg.to_dict(), config_sha256=config_hash(self.cfg.to_dict()),
                           hparams=self.editor.hparams.to_dict(), versions=package_versions(),
                           fingerprint=self.fingerprint, threads=torch.get_num_threads(),
                           created=datetime.now(UTC).isoformat(timespec="seconds"), status="running")
            store.write_plan((i + 1, (i // self.cfg.batch) + 1, c.case_id, c.request.subject, c.to_dict())
                             for i, c in enumerate(self.cases))
        self._store = RunStore.in_dir(self.run_dir)

    def baseline(self) -> None:
        """Measurements of the unedited model (update 0): downstream, and the guard's baselines."""
        self.store.truncate_after(-1)
        if self.schedule.downstream(0) and self.downstream is not None:
            self.store.record_downstream(0, 0, self.downstream())
        baseline = {"entropy": self._entropy(), "neighborhood": self._probe_neighborhood()}
        self.set_baseline(baseline)
        self.store.set_meta(baseline=baseline)

    def set_baseline(self, baseline: dict[str, float | None]) -> None:
        self.guard.start(baseline["entropy"], baseline["neighborhood"])

    def restore(self, ckpt: Checkpoint) -> None:
        """Bring model, method state, RNGs and loop state to where the checkpoint was taken."""
        params = dict(self.model.named_parameters())
        self.reset_weights()  # a checkpoint tried before and found damaged may have left its weights
        self.originals = {n: params[n].detach().clone() for n in ckpt.delta}
        restore_weights(self.model, self.originals, ckpt)
        self.transposed = dict(ckpt.runner["transposed"])
        self.last_frobenius = dict(ckpt.runner["last_frobenius"])
        self.forgetting = Forgetting.from_state_dict(ckpt.runner["forgetting"])
        self.guard.load_state_dict(ckpt.runner["guard"])
        self.editor.state = ckpt.state
        set_rng_states(ckpt.rng)

    def reset_weights(self) -> None:
        """The edited matrices back to their original values (nothing edited yet: nothing to do)."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, orig in self.originals.items():
                params[name].copy_(orig)
        self.originals = {}

    # --- the loop ----------------------------------------------------------------------------------------
    def loop(self, first_update: int) -> None:
        total = self.schedule.n_updates
        with progress_bar(f"editing ({self.cfg.method.name})", total, self.progress,
                          completed=first_update - 1) as advance:
            for u in range(first_update, total + 1):
                status = self.step(u)
                advance(1, status=status)
        self.store.set_meta(status="complete")

    def step(self, u: int) -> str:
        """One update and everything the schedule measures after it; the checkpoint comes last."""
        t0 = time.perf_counter()
        idx = self.schedule.edits_in(u)
        batch = [self.cases[i - 1] for i in idx]
        state_before = self._snapshot_state()
        delta = self.editor.compute(batch)
        compute_seconds = time.perf_counter() - t0
        self._keep_originals(delta)
        delta.apply(self.model)
        broken = nonfinite_weights(self.model, delta.updates)
        norms = delta.norms()
        distances, jump = self._distances(norms)
        norm = math.sqrt(sum(n * n for n in norms.values()))
        if broken:  # NaN or infinite weights: a disabling update, rolled back whatever guard.revert says
            scores = [CaseScores(c.case_id, {m: float("nan") for m in self.edit_metrics}) for c in batch]
            signals = UpdateSignals(update_norm=norm, distance_jump=jump)
            flags = [Flag("nonfinite", float(len(broken)), 0.0)]
        else:
            scores = evaluate_cases(self.model, self.tok, batch, metrics=self.edit_metrics,
                                    reference=self.reference, batch_size=self.cfg.eval_batch_size,
                                    seed=self.cfg.seed).cases
            signals = UpdateSignals(update_norm=norm, distance_jump=jump, neighborhood=self._probe_neighborhood())
            if u % self.cfg.guard.entropy_every == 0 or self.guard.check(signals):
                signals = dataclasses.replace(signals, entropy=self._entropy())
            flags = self.guard.check(signals)
        refused = bool(flags) and (self.cfg.guard.revert or bool(broken))
        if refused:
            delta.revert(self.model)
            self.editor.state = EditState.from_state_dict(state_before)
            distances, _ = self._distances({})
        else:
            delta.forget_originals()
            self.guard.accept(signals)
            for i, s in zip(idx, scores):
                self.forgetting.made(i, correct=s.efficacy_correct == 1.0, successful=s.efficacy == 1.0)
        self.last_frobenius.update({d["param"]: d["frobenius"] for d in distances})
        last_edit = idx[-1]
        events = [{"edit_idx": last_edit, "kind": "flagged", "rule": f.rule, "value": f.value,
                   "threshold": f.threshold, "detail": f.detail} for f in flags]
        if refused:
            events.append({"edit_idx": last_edit, "kind": "refused", "rule": ",".join(f.rule for f in flags),
                           "detail": "update reverted by the guard"})
        values = {"seconds": time.perf_counter() - t0, "compute_seconds": compute_seconds,
                  "entropy": signals.entropy, "probe_neighborhood": signals.neighborhood}
        self.store.record_update(
            u, last_edit, values, refused,
            edits=[{"edit_idx": i, "case_id": c.case_id, **s.values} for i, c, s in zip(idx, batch, scores)],
            distances=distances, events=events)
        status = f"last edit efficacy {100 * nanmean([s.efficacy for s in scores]):.0f}%"
        if self.schedule.recheck(u):
            status += f" forgotten {100 * self._recheck(u, first_new=idx[0], last_edit=last_edit):.0f}%"
        if self.schedule.downstream(u) and self.downstream is not None:
            self.store.record_downstream(u, last_edit, self.downstream())
        if self.schedule.recheck(u) and self.cfg.checkpoint:
            self._checkpoint(u)
        return status + (" FLAGGED" if flags else "")

    # --- pieces ---------------------------------------------------------------------------------------------
    def _snapshot_state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.editor.state.state_dict().items()}

    def _keep_originals(self, delta: Delta) -> None:
        params = dict(self.model.named_parameters())
        for name, upd in delta.updates.items():
            if name not in self.originals:
                self.originals[name] = params[name].detach().clone()
                self.transposed[name] = upd.transposed

    def _distances(self, norms: dict[str, float]) -> tuple[list[dict[str, Any]], float]:
        """Per edited matrix: distance from its original and this update's norm; and the largest jump."""
        params = dict(self.model.named_parameters())
        rows, jump = [], 0.0
        for name, orig in self.originals.items():
            dist = weight_distance(params[name], orig)
            rows.append({"param": name, "layer": _layer_of(name, self.anatomy.layers), **dist,
                         "update_norm": norms.get(name, 0.0)})
            jump = max(jump, dist["frobenius"] - self.last_frobenius.get(name, 0.0))
        return rows, jump

    def _entropy(self) -> float | None:
        if not self.entropy_prompts:
            return None
        return generation_entropy(self.model, self.tok, self.entropy_prompts, self.cfg.guard.entropy_tokens,
                                  seed=self.cfg.seed)

    def _probe_neighborhood(self) -> float | None:
        if not self.probe:
            return None
        res = evaluate_cases(self.model, self.tok, self.probe, metrics=("neighborhood",),
                             batch_size=self.cfg.eval_batch_size)
        return res.summary()["neighborhood"]

    def _recheck(self, u: int, first_new: int, last_edit: int) -> float:
        """Re-test every earlier edit that was correct (or P-successful) when made; returns the fraction
        forgotten by the paper's definition (``editscale.eval.forgetting``)."""
        t0 = time.perf_counter()
        checked = self.forgetting.to_check(first_new)
        now: dict[int, tuple[bool, bool]] = {}
        if checked:
            cases = [_recheck_case(self.cases[e - 1]) for e in checked]
            res = evaluate_cases(self.model, self.tok, cases, metrics=("efficacy", "efficacy_correct"),
                                 batch_size=self.cfg.eval_batch_size)
            now = {e: (s.efficacy == 1.0, s.efficacy_correct == 1.0) for e, s in zip(checked, res.cases)}
        rc = self.forgetting.recheck(u, last_edit, first_new, now)
        self.store.record_recheck(u, self.schedule.n_edits_after(u), n_correct=rc.n_correct,
                                  n_forgotten=rc.n_forgotten, holds_prob=rc.holds_prob, correct=rc.correct,
                                  seconds=time.perf_counter() - t0)
        return rc.forgotten

    def _checkpoint(self, u: int) -> None:
        runner = {"transposed": self.transposed, "last_frobenius": self.last_frobenius,
                  "forgetting": self.forgetting.state_dict(), "guard": self.guard.state_dict()}
        path = save_checkpoint(self.run_dir, u, self.schedule.n_edits_after(u), self.model, self.originals,
                               self.transposed, self.editor.state, runner)
        self.store.record_checkpoint(u, self.schedule.n_edits_after(u), str(path.relative_to(self.run_dir)))
        prune_checkpoints(self.run_dir, keep=[self.run_dir / c[2] for c in self.store.checkpoints()])


def run_experiment(config: RunConfig | dict | str | Path, out_dir: str | Path, *,
                   progress: bool | None = None) -> dict[str, Any]:
    """Run a sequential-editing experiment into ``out_dir`` (database, checkpoints); returns its summary.

    One process at a time (``rundir.RunLock``, held to the end). ``out_dir`` holding a run of the same
    config continues it (or, complete, returns its summary); of another config, a one-line ``RunStateError``.
    The output place is checked writable before the model is loaded; the run directory appears, whole, only
    when its database holds the config and the plan."""
    from editscale.cache import check_writable, refuse_inside_cache

    cfg = config if isinstance(config, RunConfig) else (
        parse_config(config) if isinstance(config, dict) else load_config(config))
    run_dir = Path(out_dir)
    refuse_inside_cache(run_dir, "run directory")
    check_writable(run_dir, "run directory")
    with RunLock(run_dir):
        state = run_state(run_dir, cfg.to_dict())
        if state == "complete":
            return summarize(run_dir)
        if state == "resume":
            return _resume(run_dir, progress)
        clean_setups(run_dir)
        from editscale.methods.base import usable_cases
        from editscale.names import load_cases

        cases = sample_cases(usable_cases(cfg.method.name, cfg.data, load_cases(cfg.data)), cfg.edits, cfg.seed,
                             cfg.unique)
        with torch_threads(cfg.threads):
            run = _Run(cfg, run_dir, cases, progress)
            run.create_store()
            try:
                run.baseline()
                seed_everything(cfg.seed)
                run.loop(1)
            finally:
                run.store.close()
        return summarize(run_dir)


def resume(out_dir: str | Path, *, progress: bool | None = None) -> dict[str, Any]:
    """Continue a run from its last checkpoint (results after it are redone); returns its summary. One
    process at a time, as ``run_experiment``."""
    from editscale.cache import check_writable

    run_dir = Path(out_dir)
    check_free(run_dir)  # another process is setting it up or running it
    with RunStore.in_dir(run_dir, readonly=True) as store:  # not a run: one line, before any lock is taken
        if store.meta().get("status") == "complete":
            return summarize(run_dir)
    check_writable(run_dir, "run directory")
    with RunLock(run_dir):
        return _resume(run_dir, progress)


def _resume(run_dir: Path, progress: bool | None) -> dict[str, Any]:
    with RunStore.in_dir(run_dir) as store:
        meta = store.meta()
        cases = [EditCase.from_dict(d) for d in store.plan()]
    if meta.get("status") == "complete":
        return summarize(run_dir)
    cfg = parse_config(meta["config"], source=f"stored config of {run_dir}")
    with torch_threads(meta["threads"]):  # CPU results can depend on the thread count
        run = _Run(cfg, run_dir, cases, progress)
        if run.fingerprint != meta["fingerprint"]:
            raise RunStateError(f"model {cfg.model!r} is not the model this run started with (fingerprint "
                                f"{run.fingerprint} != {meta['fingerprint']}); resume needs the same weights")
        run.open_store()
        try:
            _continue(run, meta)
        finally:
            run.store.close()
    return summarize(run_dir)


def _continue(run: _Run, meta: dict[str, Any]) -> None:
    """Bring a reopened run to its last checkpoint (or its start) and run it to the end."""
    ckpts = [c for c in run.store.checkpoints() if (run.run_dir / c[2] / "info.json").is_file()]
    if "baseline" not in meta:
        run.baseline()
        first = 1
    elif not ckpts:
        run.store.truncate_after(0)
        run.set_baseline(meta["baseline"])
        first = 1
    else:
        first = _restore_latest_good(run, ckpts)
    if first == 1:
        seed_everything(run.cfg.seed)
    run.loop(first)


def _restore_latest_good(run: _Run, ckpts: list[tuple[int, int, str]]) -> int:
    """Restore the newest checkpoint that is whole (its files match their recorded hashes, the weights their
    checksum), else the one before; none whole: the run starts again after its baseline. Returns the next
    update to make."""
    for update_idx, _, _ in reversed(ckpts):
        try:
            ckpt = load_checkpoint(checkpoint_dir(run.run_dir, update_idx))
            run.restore(ckpt)
        except RunStateError as e:
            print(f"warning: {e}; resuming from the checkpoint before it", file=sys.stderr)
            continue
        run.store.truncate_after(update_idx)
        return update_idx + 1
    run.reset_weights()
    run.store.truncate_after(0)
    run.set_baseline(run.store.meta()["baseline"])
    seed_everything(run.cfg.seed)
    return 1
