"""Uncentered second moments E[k k^T] of the keys (the inputs of each layer's MLP output matrix).

ROME and MEMIT need C = E[k k^T] for the edited layers, estimated over generic text. The reference
implementations run one full pass over the corpus per layer; here every requested layer is accumulated in ONE
forward pass that stops after the deepest needed layer, so the cost does not grow with the number of layers.

- ``Corpus``: where the text comes from (a list of texts, a local text file, a testbed model's corpus.txt,
  or a Hugging Face hub dataset when a network exists), with a content digest for cache keys.
- ``compute_second_moments``: the one-pass accumulation (sample count in tokens, accumulation dtype).
- ``StatsCache``: an explicit on-disk cache (safetensors), keyed by model fingerprint, layer, corpus digest,
  sample count, dtype and sequence length; every file is verified (key and checksum) when read.
- ``second_moments``: cache lookups plus one pass for whatever is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from editscale.cache import cache_root
from editscale.errors import ConfigError, DataLoadError
from editscale.model.anatomy import get_anatomy
from editscale.model.hooks import capture, run_until
from editscale.model.loading import fingerprint as model_fingerprint
from editscale.model.loading import hub_reachable
from editscale.model.tokens import encode, ensure_pad_token, pad_batch
from editscale.progress import progress_bar

CORPUS_FILE = "corpus.txt"  # a testbed model directory's generic text
_ACC_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------------------------------------
# corpora
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Corpus:
    """A source of texts for statistics: a name for messages, a digest for cache keys, and the texts."""

    name: str
    digest: str
    _texts: Callable[[], Iterable[str]]

    def texts(self) -> Iterator[str]:
        for t in self._texts():
            if t and t.strip():
                yield t

    @classmethod
    def from_texts(cls, texts: Sequence[str], name: str = "texts") -> Corpus:
        texts = list(texts)
        if not any(t.strip() for t in texts):
            raise DataLoadError("the statistics corpus is empty: give at least one non-blank text")
        h = hashlib.sha256()
        for t in texts:
            h.update(t.encode())
            h.update(b"\0")
        return cls(name, h.hexdigest()[:16], lambda: texts)

    @classmethod
    def from_file(cls, path: str | Path) -> Corpus:
        """A local text file: one text per non-blank line."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataLoadError(f"statistics corpus file {str(path)!r} does not exist")
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)

        def read() -> Iterator[str]:
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    yield line.rstrip("\n")

        return cls(str(path), h.hexdigest()[:16], read)

    @classmethod
    def from_hub(cls, name: str, config: str | None = None, split: str = "train", field: str = "text") -> Corpus:
        """A Hugging Face hub dataset (needs the ``datasets`` package and a network, or its local cache)."""
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise DataLoadError(
                f"statistics corpus {name!r} is a hub dataset, which needs the 'datasets' package "
                "(pip install datasets); or pass a local text file instead"
            ) from None
        if not hub_reachable():
            raise DataLoadError(
                f"statistics corpus {name!r} looks like a hub dataset, but the hub cannot be reached (no "
                "network); pass a local text file (one text per line) or a list of texts instead"
            )
        ident = json.dumps({"hub": name, "config": config, "split": split, "field": field})

        def read() -> Iterator[str]:
            import datasets

            ds = datasets.load_dataset(name, config, split=split, streaming=True)
            for row in ds:
                yield row[field]

        return cls(f"hub:{name}" + (f":{config}" if config else ""), hashlib.sha256(ident.encode()).hexdigest()[:16],
                   read)


def resolve_corpus(spec: str | Path | Sequence[str] | Corpus | None, model_dir: Path | None = None) -> Corpus:
    """Turn a corpus spec into a ``Corpus``.

    - ``None`` or ``"auto"``: the model directory's ``corpus.txt`` (testbed models ship one);
    - a ``Corpus`` or a list of texts;
    - a path to an existing text file (one text per line), or a model directory with a corpus.txt (a testbed
      model's; ``editscale.names.resolve_corpus_path`` turns ``testbed:NAME`` into it);
    - ``"hub:NAME[:CONFIG]"`` or any other name that is not a path: a hub dataset (needs a network).
    """
    if isinstance(spec, Corpus):
        return spec
    if spec is not None and not isinstance(spec, (str, Path)):
        return Corpus.from_texts(list(spec))
    if spec is None or str(spec) == "auto":
        if model_dir is not None and (model_dir / CORPUS_FILE).is_file():
            return Corpus.from_file(model_dir / CORPUS_FILE)
        raise DataLoadError(
            "no statistics corpus for this model: pass one (corpus=... / --corpus), e.g. a local text file "
            "such as WikiText, a list of texts, or 'hub:wikitext:wikitext-103-raw-v1' where a network exists"
        )
    text = str(spec)
    if text.startswith("testbed:"):
        raise DataLoadError(f"statistics corpus {text!r} names a testbed model; pass its directory instead "
                            f"(editscale.names.resolve_corpus_path({text!r}) gives it)")
    if text.startswith("hub:"):
        name, _, config = text[4:].partition(":")
        return Corpus.from_hub(name, config or None)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            if (path / CORPUS_FILE).is_file():
                return Corpus.from_file(path / CORPUS_FILE)
            raise DataLoadError(f"statistics corpus {text!r} is a directory without a {CORPUS_FILE}")
        return Corpus.from_file(path)
    if text.startswith((".", "/", "~")) or path.suffix in {".txt", ".text", ".raw", ".tokens"}:
        raise DataLoadError(f"statistics corpus file {text!r} does not exist")
    name, _, config = text.partition(":")
    return Corpus.from_hub(name, config or None)


# --------------------------------------------------------------------------------------------------------
# computation
# --------------------------------------------------------------------------------------------------------
@dataclass
class SecondMoment:
    """E[k k^T] (k, k) of one layer's keys, estimated from ``count`` key vectors (tokens)."""

    layer: int
    matrix: torch.Tensor
    count: int


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
    n_samples: int,
    dtype: torch.dtype = torch.float32,
    max_length: int = 256,
    batch_size: int = 16,
    progress: bool | None = None,
) -> dict[int, SecondMoment]:
    """E[k k^T] of the MLP-output-matrix inputs of every layer in ``layers``, in one pass over ``corpus``.

    Each text is truncated to ``max_length`` tokens (and the model's context); padding is left out. The pass
    stops once ``n_samples`` key vectors (tokens) have been accumulated, and every forward pass stops after the
    deepest requested layer. Keys are accumulated in ``dtype`` (float32 or float64) whatever the model's dtype.
    """
    if not layers:
        return {}
    if n_samples < 1:
        raise ConfigError(f"n_samples must be positive, got {n_samples}")
    anatomy = get_anatomy(model)
    ensure_pad_token(tokenizer)
    layers = sorted(set(layers))
    names = {layer: anatomy.mlp_out_name(layer) for layer in layers}
    for layer in layers:
        anatomy.mlp_out_module(model, layer)  # validates the index
    device = next(model.parameters()).device
    max_length = min(max_length, _max_positions(model))
    dim = anatomy.key_dim(model, layers[0])
    acc = {layer: torch.zeros(dim, dim, dtype=dtype, device=device) for layer in layers}
    count = 0
    was_training = model.training
    model.eval()
    try:
        with progress_bar(f"second moments, layers {layers}", n_samples, progress) as advance:
            for seqs in _batches(tokenizer, corpus.texts(), max_length, batch_size):
                batch = pad_batch(seqs, tokenizer.pad_token_id, device)
                with capture(model, list(names.values()), inputs=True, stop_after=names[layers[-1]]) as got:
                    run_until(model, **batch.model_inputs())
                mask = batch.attention_mask.bool()
                take = min(int(mask.sum()), n_samples - count)
                for layer, name in names.items():
                    _add_outer(acc[layer], got[name][mask][:take].to(dtype))
                count += take
                advance(take)
                if count >= n_samples:
                    break
    finally:
        model.train(was_training)
    if count == 0:
        raise DataLoadError(f"statistics corpus {corpus.name!r} produced no tokens")
    if count < n_samples:
        warnings.warn(f"statistics corpus {corpus.name!r} has only {count} tokens, fewer than the "
                      f"{n_samples} asked for; using them all", stacklevel=2)
    if count < dim:
        warnings.warn(f"second moment from {count} tokens for keys of width {dim}: the matrix is singular; "
                      "use a larger corpus", stacklevel=2)
    return {layer: SecondMoment(layer, (_symmetric(m) / count).cpu(), count) for layer, m in acc.items()}


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
    n_samples: int
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
            count = int(meta.get("count", "0"))
        except (OSError, ValueError, SafetensorError):  # unreadable or truncated file
            ok, matrix, count = False, None, 0
        if not ok:
            warnings.warn(f"ignoring the cached second moment {path} (failed verification); recomputing",
                          stacklevel=2)
            return None
        return SecondMoment(key.layer, matrix, count)

    def save(self, key: StatsKey, moment: SecondMoment) -> Path:
        """Write atomically (a temporary file renamed into place), so no half-written file is ever read."""
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        matrix = moment.matrix.detach().cpu().contiguous()
        meta = {"key": json.dumps(asdict(key)), "sha256": _checksum(matrix), "count": str(moment.count)}
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
    n_samples: int,
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
    keys = {layer: StatsKey(fingerprint or "", layer, anatomy.weight_name(layer), corpus.digest, n_samples, dtype,
                            max_length) for layer in set(layers)}
    found: dict[int, SecondMoment] = {}
    if cache is not None:
        for layer, key in keys.items():
            hit = cache.load(key)
            if hit is not None:
                found[layer] = hit
    missing = sorted(set(keys) - set(found))
    if missing:
        computed = compute_second_moments(model, tokenizer, missing, corpus, n_samples=n_samples,
                                          dtype=_ACC_DTYPES[dtype], max_length=max_length,
                                          batch_size=batch_size, progress=progress)
        for layer, moment in computed.items():
            if cache is not None:
                cache.save(keys[layer], moment)
            found[layer] = moment
    return {layer: found[layer] for layer in layers}
