"""Few-shot downstream evaluation: classify each example by the model's label-word probabilities.

An example's prediction is the label whose word (" positive" / " negative", " Yes" / " No", " True" /
" False") is most probable right after its few-shot prompt; F1 of the positive class (label 1), accuracy and
Matthews correlation come from scikit-learn.

``DownstreamSuite`` (``prepare_suite``) tokenizes the prompts once and is then evaluated as often as needed
(the sequential editing runner evaluates the same suite every few edits). When every label word is one token
after every prompt, an example costs one forward pass over its own tokens: the demonstrations that all
prompts start with run once per task and are reused through the key/value cache. Otherwise the label words
are scored as multi-token continuations (``score_continuations``: the summed log-probability, i.e. the
word's probability).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from torch import nn

from editscale.data.downstream import GLUE_TASKS, FewShotTask, glue_task, skill_tasks
from editscale.errors import ConfigError
from editscale.eval.lengths import context_limit
from editscale.eval.panel import PROBE_TASKS, prepare_probe
from editscale.eval.scoring import last_logits_only, logits_at, score_continuations
from editscale.model.compat import cache_kwargs, output_cache
from editscale.model.loading import model_device
from editscale.model.tokens import encode, ensure_pad_token, pad_batch, target_ids
from editscale.progress import progress_bar

SKILLS = "skills"
TASK_NAMES: tuple[str, ...] = (*GLUE_TASKS, SKILLS, *PROBE_TASKS)


def classification_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """F1 of the positive class (label 1), accuracy and Matthews correlation, and the number of examples."""
    return {
        "f1": float(f1_score(labels, predictions, pos_label=1, zero_division=0.0)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "mcc": float(matthews_corrcoef(labels, predictions)),
        "n": len(labels),
    }


@dataclass(frozen=True)
class _Prepared:
    """One task, tokenized: prompt ids, labels, the shared prefix length and the label-word token ids."""

    task: FewShotTask
    prompts: tuple[str, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]
    prefix_len: int  # leading tokens every prompt shares (the demonstrations), at most the shortest prompt - 1
    label_ids: torch.Tensor | None  # (N, n_labels) the token of each label word after each prompt; None: multi-token
    longest: int  # the most positions one forward pass needs


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != first[i] for s in seqs):
            return i
    return n


def _single_label_tokens(tokenizer, prompts: Sequence[str], prompt_ids: Sequence[Sequence[int]],
                         words: Sequence[str]) -> torch.Tensor | None:
    """The one token of each label word after each prompt, or None if any word is not exactly one token there."""
    out = torch.empty(len(prompts), len(words), dtype=torch.long)
    for j, word in enumerate(words):
        full = tokenizer([f"{p} {word.strip()}" for p in prompts])["input_ids"]
        for i, (ids, p_ids) in enumerate(zip(full, prompt_ids)):
            if len(ids) != len(p_ids) + 1 or tuple(ids[: len(p_ids)]) != tuple(p_ids):
                return None
            out[i, j] = ids[-1]
    return out


def _prepare(task: FewShotTask, tokenizer) -> _Prepared:
    if not task.examples:
        raise ConfigError(f"task {task.name!r} has no examples to evaluate")
    prompts = tuple(task.prompt(ex) for ex in task.examples)
    prompt_ids = tuple(tuple(encode(tokenizer, p)) for p in prompts)
    prefix = min(_common_prefix_len(prompt_ids), min(len(p) for p in prompt_ids) - 1)
    label_ids = _single_label_tokens(tokenizer, prompts, prompt_ids, task.label_words)
    longest = max(len(p) for p in prompt_ids)
    if label_ids is None:  # the label words are fed after the prompt
        longest += max(len(target_ids(tokenizer, w)) for w in task.label_words)
    return _Prepared(task, prompts, prompt_ids, tuple(ex.label for ex in task.examples), prefix, label_ids, longest)


def _batch_inputs(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, cache, rows: int) -> dict:
    """A batch's forward inputs after the shared prefix: a fresh copy of its key/value cache, one per row."""
    if cache is None:
        return {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
    past = copy.deepcopy(cache)
    past.batch_repeat_interleave(rows)
    return {"input_ids": input_ids, "attention_mask": mask, **cache_kwargs(model, past)}


class DownstreamSuite:
    """Few-shot tasks tokenized once for one tokenizer, then evaluated on any model that uses it, as often as
    needed (``prepare_suite`` builds one from task names).

    ``evaluate(model)`` returns ``{task name: {"f1", "accuracy", "mcc", "n"}}``.
    """

    def __init__(self, tasks: Sequence[FewShotTask], tokenizer, *, batch_size: int = 16):
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate task names in {names}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        ensure_pad_token(tokenizer)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.tasks = tuple(tasks)
        self._prepared = tuple(_prepare(t, tokenizer) for t in self.tasks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @torch.no_grad()
    def label_logprobs(self, model: nn.Module, *, progress: bool | None = False) -> dict[str, torch.Tensor]:
        """Per task, the (N, n_labels) log-probabilities of the label words after each prompt."""
        self._check_context(model)
        return {prep.task.name: self._logprobs(model, prep, progress) for prep in self._prepared}

    def evaluate(self, model: nn.Module, *, progress: bool | None = False) -> dict[str, dict[str, float]]:
        """F1 (positive class), accuracy, MCC and n of every task (``progress=None``: bars unless
        EDITSCALE_PROGRESS=0)."""
        logprobs = self.label_logprobs(model, progress=progress)
        return {prep.task.name: classification_metrics(prep.labels, logprobs[prep.task.name].argmax(-1).tolist())
                for prep in self._prepared}

    def _check_context(self, model: nn.Module) -> None:
        limit = context_limit(model)
        for prep in self._prepared:
            if limit is not None and prep.longest > limit:
                raise ConfigError(f"task {prep.task.name!r}: prompts reach {prep.longest} tokens but the model's "
                                  f"context is {limit}; use a model with a longer context or fewer demonstrations")

    def _logprobs(self, model: nn.Module, prep: _Prepared, progress: bool | None) -> torch.Tensor:
        if prep.label_ids is not None:
            return self._single_token_logprobs(model, prep, progress)
        words = prep.task.label_words
        scores = score_continuations(model, self.tokenizer, [p for p in prep.prompts for _ in words],
                                     [w for _ in prep.prompts for w in words], batch_size=self.batch_size)
        return scores.logprob.float().view(len(prep.prompts), len(words))

    def _single_token_logprobs(self, model: nn.Module, prep: _Prepared, progress: bool | None) -> torch.Tensor:
        """One forward per example over its tokens after the shared prefix; the prefix runs once, cached."""
        device = model_device(model)
        n, p_len = len(prep.prompt_ids), prep.prefix_len
        cache = None
        if p_len:
            prefix = torch.tensor([prep.prompt_ids[0][:p_len]], device=device)
            cache = output_cache(model(input_ids=prefix, **cache_kwargs(model, None), **last_logits_only(model)))
        out = torch.empty(n, prep.label_ids.shape[1])
        order = sorted(range(n), key=lambda i: len(prep.prompt_ids[i]))  # similar lengths pad little
        with progress_bar(f"downstream {prep.task.name}", n, enabled=progress) as advance:
            for start in range(0, n, self.batch_size):
                idx = order[start: start + self.batch_size]
                batch = pad_batch([prep.prompt_ids[i][p_len:] for i in idx], self.tokenizer.pad_token_id, device)
                mask = batch.attention_mask
                if cache is not None:
                    mask = torch.cat([mask.new_ones(len(idx), p_len), mask], dim=1)
                inputs = partial(_batch_inputs, model, batch.input_ids, mask, cache, len(idx))
                last = logits_at(model, inputs, torch.arange(len(idx), device=device), batch.lengths - 1).float()
                lp = torch.log_softmax(last, dim=-1).gather(1, prep.label_ids[idx].to(device))
                out[torch.tensor(idx)] = lp.cpu()
                advance(len(idx))
        return out


def parse_task_names(spec: str | Sequence[str]) -> list[str]:
    """Task names from ``"sst2,mrpc"`` or a list, validated against ``TASK_NAMES``."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [s.strip() for s in spec]
    names = [s for s in names if s]
    unknown = [s for s in names if s not in TASK_NAMES]
    if unknown or not names:
        what = f"unknown task {unknown[0]!r}" if unknown else "no tasks given"
        raise ConfigError(f"{what}; valid tasks: {', '.join(TASK_NAMES)}")
    return list(dict.fromkeys(names))


def resolve_tasks(names_or_tasks: str | Sequence[str | FewShotTask], *, data_dir: str | Path | None = None,
                  n: int | None = 200, seed: int = 0, model_dir: str | Path | None = None) -> list[FewShotTask]:
    """Tasks from GLUE names (loaded from ``data_dir``, else the hub; balanced subsets of ``n``, ``None``: all),
    ``"skills"`` (the four synthetic skills of the testbed model in ``model_dir``) and ready ``FewShotTask``s."""
    items = [names_or_tasks] if isinstance(names_or_tasks, str) else list(names_or_tasks)
    tasks: list[FewShotTask] = []
    for item in items:
        if isinstance(item, FewShotTask):
            tasks.append(item)
            continue
        for name in parse_task_names(item):
            if name in PROBE_TASKS:  # not few-shot tasks: see prepare_panel
                continue
            if name != SKILLS:
                tasks.append(glue_task(name, data_dir, n=n, seed=seed))
                continue
            if model_dir is None:
                raise ConfigError("task 'skills' needs the testbed model's directory (model_dir)")
            tasks.extend(skill_tasks(model_dir, n=200 if n is None else n, seed=seed))
    return tasks


def prepare_suite(names_or_tasks: str | Sequence[str | FewShotTask], *, tokenizer,
                  data_dir: str | Path | None = None, n: int | None = 200, seed: int = 0,
                  model_dir: str | Path | None = None, batch_size: int = 16) -> DownstreamSuite:
    """A ``DownstreamSuite`` of the named tasks (see ``resolve_tasks``), to evaluate every few edits.

    For ``"skills"`` the model directory defaults to the tokenizer's (``tokenizer.name_or_path``), which is
    the testbed model's directory when both were loaded with ``load_model``.
    """
    own_dir = getattr(tokenizer, "name_or_path", "")
    if model_dir is None and own_dir and Path(own_dir).is_dir():
        model_dir = own_dir
    tasks = resolve_tasks(names_or_tasks, data_dir=data_dir, n=n, seed=seed, model_dir=model_dir)
    return DownstreamSuite(tasks, tokenizer, batch_size=batch_size)


class Panel:
    """Few-shot tasks and the general-ability probes (``eval/panel.py``) evaluated together:
    ``evaluate(model)`` returns ``{task: {metric: value, "n": count}}`` in the order the tasks were named."""

    def __init__(self, suite: DownstreamSuite | None, probes: Sequence, order: Sequence[str]):
        self.suite, self.probes, self.order = suite, tuple(probes), tuple(order)

    def evaluate(self, model: nn.Module, *, progress: bool | None = False) -> dict[str, dict[str, float]]:
        out = self.suite.evaluate(model, progress=progress) if self.suite is not None else {}
        for probe in self.probes:
            out[probe.name] = probe.evaluate(model)
        rank = {name: i for i, name in enumerate(self.order)}
        return dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def prepare_panel(names: str | Sequence[str | FewShotTask], model: nn.Module, tokenizer, *, data_dir: str | Path | None = None,
                  n: int | None = 200, seed: int = 0, model_dir: str | Path | None = None,
                  batch_size: int = 16) -> Panel:
    """The named tasks, prepared on the model as it is now (the unedited one: the known facts are chosen on
    it). Probes read a testbed model's own world and grammar when ``model_dir`` is a testbed model's, else
    ``data_dir`` (default ``$EDITSCALE_HOME/data``), like GLUE."""
    from editscale.model.loading import MANIFEST_FILE

    wanted = parse_task_names(names) if isinstance(names, str) else list(names)
    testbed = Path(model_dir) if model_dir is not None and (Path(model_dir) / MANIFEST_FILE).is_file() else None
    probes = [prepare_probe(name, model, tokenizer, data_dir=data_dir, testbed_dir=testbed,
                            n=200 if n is None else n, seed=seed, batch_size=batch_size)
              for name in wanted if isinstance(name, str) and name in PROBE_TASKS]
    few_shot = [x for x in wanted if not (isinstance(x, str) and x in PROBE_TASKS)]
    suite = None
    if few_shot:
        suite = prepare_suite(few_shot, tokenizer=tokenizer, data_dir=data_dir, n=n, seed=seed, model_dir=model_dir,
                              batch_size=batch_size)
    order = [t for x in wanted for t in ((x.name,) if isinstance(x, FewShotTask) else (x,) if x != SKILLS
                                         else (suite.names if suite else ()))]
    return Panel(suite, probes, order)


def evaluate_task(model: nn.Module, tokenizer, task: FewShotTask, batch_size: int = 16) -> dict[str, float]:
    """F1 (positive class), accuracy, MCC and n of one task."""
    return DownstreamSuite([task], tokenizer, batch_size=batch_size).evaluate(model)[task.name]


def evaluate_tasks(model: nn.Module, tokenizer, names_or_tasks: str | Sequence[str | FewShotTask], *,
                   data_dir: str | Path | None = None, n: int | None = 200, seed: int = 0, batch_size: int = 16,
                   model_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Evaluate tasks given by name or as objects, once. To evaluate the same tasks many times, prepare a
    suite once (``prepare_suite``) and call its ``evaluate``."""
    suite = prepare_suite(names_or_tasks, tokenizer=tokenizer, data_dir=data_dir, n=n, seed=seed,
                          model_dir=model_dir, batch_size=batch_size)
    return suite.evaluate(model)
