"""Uncentered second moments E[k k^T] of the keys (the inputs of each layer's MLP output matrix).

ROME and MEMIT need C = E[k k^T] for the edited layers, estimated over generic text. The reference
implementations run one full pass over the corpus per layer; here every requested layer is accumulated in ONE
forward pass that stops after the deepest needed layer, so the cost does not grow with the number of layers.

- ``Corpus``: where the text comes from (a list of texts, a local text file, a testbed model's corpus.txt,
  or a Hugging Face hub dataset when a network exists), with a content digest for cache keys; its texts in
  order or drawn at random (seeded) across the whole corpus.
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
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from editscale.cache import cache_root
from editscale.data.sources import SOURCES, source_file
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
    _shuffled: Callable[[int], Iterable[str]] | None = None  # every text once, in a seeded random order

    def texts(self) -> Iterator[str]:
        """The non-blank texts in corpus order."""
        for t in self._texts():
            if t and t.strip():
                yield t

    def shuffled(self, seed: int) -> Iterator[str]:
        """The non-blank texts, each once, in a random order fixed by ``seed``: reading the first n gives n
        texts drawn at random across the whole corpus (as the reference's ``random_sample``)."""
        if self._shuffled is None:
            raise DataLoadError(f"statistics corpus {self.name!r} cannot be sampled at random; take its texts "
                                "in order (mom2_sampling: in_order)")
        for t in self._shuffled(seed):
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
        return cls(name, h.hexdigest()[:16], lambda: texts,
                   lambda seed: (texts[i] for i in _permutation(len(texts), seed)))

    @classmethod
    def from_file(cls, path: str | Path) -> Corpus:
        """A local text file: one text per non-blank line.

        The file is read once here, for its digest and the byte offset of every non-blank line (8 bytes a
        line); random samples then seek to the lines drawn, so memory does not grow with the file's text."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataLoadError(f"statistics corpus file {str(path)!r} does not exist")
        h = hashlib.sha256()
        offsets = array("q")
        at = 0
        with path.open("rb") as f:
            for line in f:
                h.update(line)
                if line.strip():
                    offsets.append(at)
                at += len(line)

        def read() -> Iterator[str]:
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    yield line.rstrip("\n")

        def shuffled(seed: int) -> Iterator[str]:
            with path.open("rb") as f:
                for i in _permutation(len(offsets), seed):
                    f.seek(offsets[i])
                    yield f.readline().decode("utf-8", errors="replace").rstrip("\r\n")

        return cls(str(path), h.hexdigest()[:16], read, shuffled)

    @classmethod
    def from_hub(cls, name: str, config: str | None = None, split: str = "train", field: str = "text") -> Corpus:
        """A Hugging Face hub dataset (needs the ``datasets`` package and a network, or its local cache)."""
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise DataLoadError(
                f"statistics corpus {name!r} is a hub dataset, which needs the 'datasets' package "
                "(pip install 'editscale[hub]'); or pass a local text file instead"
            ) from None
        if not hub_reachable():
            raise DataLoadError(
                f"statistics corpus {name!r} looks like a hub dataset, but the hub cannot be reached (no "
                f"network); {_PASS_A_FILE}"
            )
        ident = json.dumps({"hub": name, "config": config, "split": split, "field": field})

        def read() -> Iterator[str]:
            import datasets

            ds = datasets.load_dataset(name, config, split=split, streaming=True)
            for row in ds:
                yield row[field]

        def shuffled(seed: int) -> Iterator[str]:  # the whole split, memory-mapped from the datasets cache
            import datasets

            ds = datasets.load_dataset(name, config, split=split)
            for i in _permutation(len(ds), seed):
                yield ds[int(i)][field]

        return cls(f"hub:{name}" + (f":{config}" if config else ""), hashlib.sha256(ident.encode()).hexdigest()[:16],
                   read, shuffled)


_PASS_A_FILE = "pass a local text file, one text per line (--corpus FILE; corpus=... in Python), e.g. WikiText"
DEFAULT_CORPUS = "hub:wikitext:wikitext-103-raw-v1"  # for models that ship no corpus.txt (the papers: Wikipedia)


def _permutation(n: int, seed: int) -> Sequence[int]:
    """0..n-1 in a random order fixed by ``seed`` (a numpy array: 8 bytes an entry)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()


def resolve_corpus(spec: str | Path | Sequence[str] | Corpus | None, model_dir: Path | None = None) -> Corpus:
    """Turn a corpus spec into a ``Corpus``.

    - ``None`` or ``"auto"``: the model directory's ``corpus.txt`` (testbed models ship one);
    - a ``Corpus`` or a list of texts;
    - a path to an existing text file (one text per line), or a model directory with a corpus.txt (a testbed
      model's; ``editscale.names.resolve_corpus_path`` turns ``testbed:NAME`` into it);
    - a named source of ``editscale.data.sources`` (``wikitext-2-valid``): its fetched file;
    - ``"hub:NAME[:CONFIG]"`` or any other name that is not a path: a hub dataset (needs a network).
    """
    if isinstance(spec, Corpus):
        return spec
    if spec is not None and not isinstance(spec, (str, Path)):
        return Corpus.from_texts(list(spec))
    if spec is None or str(spec) == "auto":
        if model_dir is not None and (model_dir / CORPUS_FILE).is_file():
            return Corpus.from_file(model_dir / CORPUS_FILE)
        try:
            return resolve_corpus(DEFAULT_CORPUS)
        except DataLoadError:
            raise DataLoadError(f"no statistics corpus: this model ships none, and the default, {DEFAULT_CORPUS}, "
                                f"needs the hub (a network and the 'datasets' package); {_PASS_A_FILE}") from None
    text = str(spec)
    if text in SOURCES:  # a named public text, fetched into the data home
        return Corpus.from_file(source_file(text))
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
