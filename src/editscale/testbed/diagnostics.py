"""How distinct the subjects' keys are: whether a rank-one edit of one subject stays local.

A ROME edit of subject a changes the MLP output at any key k by Lambda * (k_a^T C^-1 k) / (k_a^T C^-1 k_a), so
``leak(a, k) = k_a^T C^-1 k / k_a^T C^-1 k_a`` is the fraction of the edit that another subject (or any
token) receives. For each layer this reports, with C the second moment of the keys over ``corpus.txt``:

- ``leak_subjects``: mean |leak| between different subjects (p99 as well); small means local edits;
- ``leak_corpus``: mean |leak| onto the keys of random corpus tokens;
- ``cos_subjects``: mean raw cosine between different subjects' keys;
- ``whitened_norm``: median k_a^T C^-1 k_a divided by the key width (about 1 for a typical corpus key; much
  larger when subject keys lie in directions that generic text rarely uses).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import nn

from editscale.data.text_corpus import Corpus
from editscale.data.world import World
from editscale.model.anatomy import get_anatomy
from editscale.model.hooks import capture, run_until
from editscale.model.tokens import encode, last_subject_index, pad_batch
from editscale.stats.second_moment import KeySample, compute_second_moments
from editscale.testbed.specs import TestbedSpec


@torch.no_grad()
def subject_keys(model: nn.Module, tokenizer, prompts: Sequence[tuple[str, str]], layers: Sequence[int],
                 batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Keys (inputs of the MLP output matrix) at the last subject token of each (template, subject)."""
    anatomy = get_anatomy(model)
    names = {layer: anatomy.mlp_out_name(layer) for layer in layers}
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        seqs = [encode(tokenizer, t.replace("{}", s)) for t, s in chunk]
        pos = torch.tensor([last_subject_index(tokenizer, t, s) for t, s in chunk])
        batch = pad_batch(seqs, tokenizer.pad_token_id)
        with capture(model, list(names.values()), positions=pos, stop_after=names[max(layers)]) as got:
            run_until(model, **batch.model_inputs())
        for layer, name in names.items():
            out[layer].append(got[name].double())
    return {layer: torch.cat(parts) for layer, parts in out.items()}


@torch.no_grad()
def corpus_keys(model: nn.Module, tokenizer, texts: Sequence[str], layers: Sequence[int], n: int, seed: int
                ) -> dict[int, torch.Tensor]:
    """Keys of ``n`` random tokens of ``texts``."""
    anatomy = get_anatomy(model)
    names = {layer: anatomy.mlp_out_name(layer) for layer in layers}
    seqs = [encode(tokenizer, t)[:128] for t in texts]
    batch = pad_batch(seqs, tokenizer.pad_token_id)
    with capture(model, list(names.values()), stop_after=names[max(layers)]) as got:
        run_until(model, **batch.model_inputs())
    mask = batch.attention_mask.bool()
    out = {}
    for layer, name in names.items():
        keys = got[name][mask].double()
        idx = torch.randperm(keys.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        out[layer] = keys[idx]
    return out


def key_statistics(model: nn.Module, tokenizer, world: World, corpus: Sequence[str], spec: TestbedSpec,
                   n_subjects: int = 300, n_samples: int = 20_000) -> dict[str, dict[str, float]]:
    """The statistics above for every layer, from ``n_subjects`` subjects (each in one relation's edit prompt)."""
    layers = list(range(spec.n_layers))
    rng = random.Random(f"{spec.seed}-keys")
    subjects = rng.sample(list(world.subjects), min(n_subjects, len(world.subjects)))
    prompts = [(world.relations[i % len(world.relations)].edit_template, s) for i, s in enumerate(subjects)]
    moments = compute_second_moments(model, tokenizer, layers, Corpus.from_texts(corpus, "corpus.txt"),
                                     sample=KeySample(n_tokens=n_samples, order="in_order"), max_length=128,
                                     progress=False)
    keys = subject_keys(model, tokenizer, prompts, layers)
    others = corpus_keys(model, tokenizer, rng.sample(list(corpus), min(64, len(corpus))), layers, 2000, spec.seed)
    result = {}
    for layer in layers:
        c = moments[layer].matrix.double()
        c = c + 1e-6 * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype)
        k = keys[layer]
        u = torch.linalg.solve(c, k.T).T  # C^-1 k_a, one row per subject
        self_q = (u * k).sum(1)
        leak = (u @ k.T) / self_q[:, None]
        off = ~torch.eye(len(k), dtype=torch.bool)
        leak_off = leak[off].abs()
        kn = k / k.norm(dim=1, keepdim=True)
        result[str(layer)] = {
            "leak_subjects": round(float(leak_off.mean()), 4),
            "leak_subjects_p99": round(float(leak_off.quantile(0.99)), 4),
            "leak_corpus": round(float(((u @ others[layer].T) / self_q[:, None]).abs().mean()), 4),
            "cos_subjects": round(float((kn @ kn.T)[off].mean()), 4),
            "whitened_norm": round(float(self_q.median() / k.shape[1]), 2),
        }
    return result
