"""Text corpora for the key statistics: where a second moment's text comes from.

``Corpus``: a list of texts, a local text file (one text per line), a testbed model's corpus.txt, a named public
text fetched into the data home (``wikitext-2-valid``), or a Hugging Face hub dataset when a network exists;
with a content digest for cache keys, its texts in order or drawn at random (seeded) across the whole corpus.
``resolve_corpus`` turns a spec into one.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from editscale.data.sources import SOURCES, source_file
from editscale.errors import DataLoadError
from editscale.model.loading import hub_reachable

CORPUS_FILE = "corpus.txt"  # a testbed model directory's generic text


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
