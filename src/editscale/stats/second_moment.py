"""Uncentered second moments E[k k^T] of the keys (the inputs of each layer's MLP output matrix).

ROME and MEMIT need C = E[k k^T] for the edited layers, estimated over generic text. The reference
implementations run one full pass over the corpus per layer; here every requested layer is accumulated in ONE
forward pass that stops after the deepest needed layer, so the cost does not grow with the number of layers.

- ``Corpus`` (``data/text_corpus.py``): where the text comes from, with a content digest for cache keys.
- ``KeySample``: which keys the estimate uses, with its unit in its names: ``n_texts`` texts (the reference
  implementations' ``mom2_n_samples``: 100,000 Wikipedia texts of up to 1,024 tokens, drawn at random)
  and/or ``n_tokens`` key vectors (one per token), drawn at random or taken in corpus order.
- ``compute_second_moments``: the one-pass accumulation (accumulation dtype float32 or float64).
- ``StatsCache``: an explicit on-disk cache (safetensors), keyed by model fingerprint, layer, corpus digest,
  the sample (unit, count, order, seed), dtype and sequence length; every file is verified when read.
- ``second_moments``: cache lookups plus one pass for whatever is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from editscale.cache import cache_root
from editscale.data.text_corpus import Corpus
from editscale.errors import ConfigError, DataLoadError
from editscale.model.anatomy import get_anatomy
from editscale.model.hooks import capture, run_until
from editscale.model.loading import fingerprint as model_fingerprint
from editscale.model.tokens import encode, ensure_pad_token, pad_batch
from editscale.progress import progress_bar

_ACC_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------------------------------------
# computation
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeySample:
    """Which keys a second moment is estimated from.

    Texts are drawn from the corpus (``order="random"``: at random across the whole corpus, fixed by
    ``seed``, as the reference; ``"in_order"``: its first texts), each truncated to the statistics' maximum
    length, and all their tokens' keys are used, until ``n_texts`` texts or ``n_tokens`` key vectors (the
    last text cut short), whichever comes first; neither set: the whole corpus.
    """

    n_texts: int | None = None
    n_tokens: int | None = None
    order: Literal["random", "in_order"] = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("n_texts", "n_tokens"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise ConfigError(f"statistics sample: {field} must be positive, got {value}")
        if self.order not in ("random", "in_order"):
            raise ConfigError(f"statistics sample: order must be 'random' or 'in_order', got {self.order!r}")

    def texts(self, corpus: Corpus) -> Iterator[str]:
        return corpus.shuffled(self.seed) if self.order == "random" else corpus.texts()

    def describe(self) -> str:
        counts = [f"{n:,} {unit}" for n, unit in ((self.n_texts, "texts"), (self.n_tokens, "tokens")) if n]
        return f"{' / '.join(counts) or 'all texts'}, {self.order.replace('_', ' ')}"


@dataclass
class SecondMoment:
    """E[k k^T] (k, k) of one layer's keys, estimated from ``count`` key vectors (tokens) of ``texts`` texts."""

    layer: int
    matrix: torch.Tensor
    count: int
    texts: int = 0


def _max_positions(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


def _batches(tokenizer, texts: Iterable[str], max_length: int, batch_size: int) -> Iterator[list[list[int]]]:
    batch: list[list[int]] = []
    for text in texts:
        ids = encode(tokenizer, text)[:max_length]
        if not ids:
            continue
        batch.append(ids)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def compute_second_moments(
    model: nn.Module,
    tokenizer,
    layers: Sequence[int],
    corpus: Corpus,
    *,
    sample: KeySample,
    dtype: torch.dtype = torch.float32,
    max_length: int = 256,
    batch_size: int = 16,
    progress: bool | None = None,
) -> dict[int, SecondMoment]:
    """E[k k^T] of the MLP-output-matrix inputs of every layer in ``layers``, in one pass over ``corpus``.

    Each text is truncated to ``max_length`` tokens (and the model's context); padding is left out. The texts
    and the point where the pass stops are ``sample``'s; every forward pass stops after the deepest requested
    layer. Keys are accumulated in ``dtype`` (float32 or float64) whatever the model's dtype.
    """
    if not layers:
        return {}
    anatomy = get_anatomy(model)
    ensure_pad_token(tokenizer)
    layers = sorted(set(layers))
    names = {layer: anatomy.mlp_out_name(layer) for layer in layers}
    for layer in layers:
        anatomy.mlp_out_module(model, layer)  # validates the index
    device = next(model.parameters()).device
    max_length = min(max_length, _max_positions(model))
    dim = anatomy.key_dim(model, layers[0])
    # each layer's sum on its edited matrix's device (a model spread over devices: not always the first)
    acc = {layer: torch.zeros(dim, dim, dtype=dtype, device=anatomy.weight_param(model, layer).device)
           for layer in layers}
    max_tokens, max_texts = sample.n_tokens or 1 << 62, sample.n_texts or 1 << 62
    count = n_texts = 0
    was_training = model.training
    model.eval()
    try:
        total, unit = (sample.n_tokens, "tokens") if sample.n_tokens else (sample.n_texts, "texts")
        with progress_bar(f"second moments, layers {layers} ({unit})", total, progress) as advance:
            for seqs in _batches(tokenizer, sample.texts(corpus), max_length, batch_size):
                seqs = seqs[: max_texts - n_texts]
                batch = pad_batch(seqs, tokenizer.pad_token_id, device)
                with capture(model, list(names.values()), inputs=True, stop_after=names[layers[-1]]) as got:
                    run_until(model, **batch.model_inputs())
                mask = batch.attention_mask.bool()
                take = min(int(mask.sum()), max_tokens - count)
                for layer, name in names.items():
                    keys = got[name][mask.to(got[name].device)][:take]
                    _add_outer(acc[layer], keys.to(device=acc[layer].device, dtype=dtype))
                starts = mask.sum(1).cumsum(0) - mask.sum(1)  # where each text's keys begin among the batch's
                used = int((starts < take).sum())  # texts with at least one key taken
                count += take
                n_texts += used
                advance(take if unit == "tokens" else used)
                if count >= max_tokens or n_texts >= max_texts:
                    break
    finally:
        model.train(was_training)
    if count == 0:
        raise DataLoadError(f"statistics corpus {corpus.name!r} produced no tokens")
    if count < max_tokens and n_texts < max_texts and (sample.n_tokens or sample.n_texts):
        warnings.warn(f"statistics corpus {corpus.name!r} has only {n_texts} texts ({count} tokens), fewer than "
                      f"the {sample.describe()} asked for; using them all", stacklevel=2)
    if count < dim:
        warnings.warn(f"second moment from {count} tokens for keys of width {dim}: the matrix is singular; "
                      "use a larger corpus", stacklevel=2)
    return {layer: SecondMoment(layer, (_symmetric(m) / count).cpu(), count, n_texts)
            for layer, m in acc.items()}


_BLOCKS = 4  # column blocks of the keys; only the blocks on and above the diagonal of K^T K are computed


def _add_outer(acc: torch.Tensor, keys: torch.Tensor) -> None:
    """acc += keys^T keys, upper block triangle only (about 5/8 of the multiply-adds for 4 blocks)."""
    dim = keys.shape[1]
    step = -(-dim // _BLOCKS)
    for start in range(0, dim, step):
        acc[start: start + step, start:].addmm_(keys[:, start: start + step].T, keys[:, start:])


def _symmetric(upper: torch.Tensor) -> torch.Tensor:
    """The full matrix from ``_add_outer``'s upper block triangle (its diagonal blocks are complete)."""
    return torch.triu(upper) + torch.triu(upper, 1).T


# --------------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatsKey:
    """Everything a cached second moment depends on."""

    fingerprint: str
    layer: int
    module: str
    corpus: str  # the corpus digest
    sample: KeySample  # unit(s), count(s), order and seed
    dtype: str
    max_length: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]

    def filename(self) -> str:
        return f"mom2_L{self.layer}_{self.digest()}.safetensors"


def _checksum(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


class StatsCache:
    """Second moments on disk, one safetensors file per key; verified (key and checksum) when read."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else cache_root() / "stats"

    def path(self, key: StatsKey) -> Path:
        return self.directory / key.filename()

    def load(self, key: StatsKey) -> SecondMoment | None:
        """The cached moment for ``key``, or None if absent; a file that fails verification is ignored."""
        from safetensors import SafetensorError, safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                matrix = f.get_tensor("mom2")
            ok = (json.loads(meta.get("key", "null")) == asdict(key)
                  and meta.get("sha256") == _checksum(matrix)
                  and matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1])
            count, texts = int(meta.get("count", "0")), int(meta.get("texts", "0"))
        except (OSError, ValueError, SafetensorError):  # unreadable or truncated file
            ok, matrix, count, texts = False, None, 0, 0
        if not ok:
            warnings.warn(f"ignoring the cached second moment {path} (failed verification); recomputing",
                          stacklevel=2)
            return None
        return SecondMoment(key.layer, matrix, count, texts)

    def save(self, key: StatsKey, moment: SecondMoment) -> Path:
        """Write atomically (a temporary file renamed into place), so no half-written file is ever read."""
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        matrix = moment.matrix.detach().cpu().contiguous()
        meta = {"key": json.dumps(asdict(key)), "sha256": _checksum(matrix), "count": str(moment.count),
                "texts": str(moment.texts)}
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"mom2": matrix}, tmp, metadata=meta)
            os.replace(tmp, self.path(key))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.path(key)


def second_moments(
    model: nn.Module,
    tokenizer,
    layers: Sequence[int],
    corpus: Corpus,
    *,
    sample: KeySample,
    dtype: str = "float32",
    max_length: int = 256,
    batch_size: int = 16,
    cache: StatsCache | None = None,
    fingerprint: str | None = None,
    progress: bool | None = None,
) -> dict[int, SecondMoment]:
    """Second moments for ``layers``: from ``cache`` where present, the rest computed in ONE pass (and cached).

    ``fingerprint`` identifies the model in cache keys (default: ``loading.fingerprint(model)``); pass the
    unedited model's when the model has been edited since, as the statistics of the original model are meant.
    """
    if dtype not in _ACC_DTYPES:
        raise ConfigError(f"statistics dtype must be one of {', '.join(_ACC_DTYPES)}, got {dtype!r}")
    anatomy = get_anatomy(model)
    if cache is not None and fingerprint is None:
        fingerprint = model_fingerprint(model)
    max_length = min(max_length, _max_positions(model))
    keys = {layer: StatsKey(fingerprint or "", layer, anatomy.weight_name(layer), corpus.digest, sample, dtype,
                            max_length) for layer in set(layers)}
    found: dict[int, SecondMoment] = {}
    if cache is not None:
        for layer, key in keys.items():
            hit = cache.load(key)
            if hit is not None:
                found[layer] = hit
    missing = sorted(set(keys) - set(found))
    if missing:
        computed = compute_second_moments(model, tokenizer, missing, corpus, sample=sample,
                                          dtype=_ACC_DTYPES[dtype], max_length=max_length,
                                          batch_size=batch_size, progress=progress)
        for layer, moment in computed.items():
            if cache is not None:
                cache.save(keys[layer], moment)
            found[layer] = moment
    return {layer: found[layer] for layer in layers}
