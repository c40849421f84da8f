"""Public datasets a user can name (``--data counterfact-val``, ``mom2_corpus: wikitext-2-valid``).

Each named source is one file under the data home, ``$EDITSCALE_HOME/data`` (default
``~/.cache/editscale/data``), at a fixed relative path; ``editscale data fetch NAME`` downloads it there from
its public URL. A name resolves to its file once fetched; before that, to a one-line error that says how to
fetch it or to pass a local file instead. The downstream panel reads the same data home (``glue/``,
``wikitext/``, ``known_1000/``). ``editscale.data.fetch`` downloads (``EDITSCALE_DATA_MIRROR``: a base URL with
the data home's layout, used instead of each source's URL) and keeps ``manifest.json`` in the data home.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from editscale.cache import cache_root
from editscale.errors import DataLoadError

MIRROR_ENV = "EDITSCALE_DATA_MIRROR"  # a base URL with the data home's layout, used instead of each source's URL


@dataclass(frozen=True)
class Source:
    """A named public file: where it lives under the data home and where it comes from."""

    name: str
    path: str  # relative to the data home
    url: str
    about: str
    sha256: str | None = None  # of the file under the data home, when known: a fetch that differs is refused


_HF = "https://huggingface.co/datasets"
SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("counterfact", "counterfact/counterfact.json", "https://rome.baulab.info/data/dsets/counterfact.json",
           "CounterFact (Meng et al. 2022), 21,919 records in ROME's shape"),
    Source("counterfact-train", "counterfact/counterfact-train.json",
           f"{_HF}/zjunlp/KnowEdit/resolve/main/benchmark/wiki_counterfact/train_cf.json",
           "CounterFact's train split in EasyEdit's record shape (10,000)"),
    Source("counterfact-val", "counterfact/counterfact-val.json",
           f"{_HF}/zjunlp/KnowEdit/resolve/main/benchmark/wiki_counterfact/test_cf.json",
           "CounterFact's held-out split in EasyEdit's record shape (1,919)"),
    Source("zsre", "zsre/zsre_mend_eval.json", "https://rome.baulab.info/data/dsets/zsre_mend_eval.json",
           "zsRE question answering edits (MEND / ROME shape)"),
    Source("known_1000", "known_1000/known_1000.json", "https://rome.baulab.info/data/dsets/known_1000.json",
           "ROME's 1,209 known facts (causal tracing; the panel's known-fact retention)"),
    Source("wikitext-2", "wikitext/wikitext-2-raw.test.hfjoined.txt",
           f"{_HF}/Salesforce/wikitext/resolve/main/wikitext-2-raw-v1/test-00000-of-00001.parquet",
           "WikiText-2 test text (the panel's perplexity)"),
    Source("wikitext-2-valid", "wikitext/wikitext-2.valid.tokens.txt",
           f"{_HF}/Salesforce/wikitext/resolve/main/wikitext-2-v1/validation-00000-of-00001.parquet",
           "WikiText-2 validation text (a statistics corpus disjoint from the perplexity text)"),
    Source("sst2", "glue/SST-2/dev.tsv", "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip",
           "GLUE SST-2 dev set (872)"),
)}


def data_home() -> Path:
    """Where named sources are fetched to: ``$EDITSCALE_HOME/data``."""
    return cache_root() / "data"


def source_file(name: str) -> Path:
    """The fetched file of a named source; a one-line ``DataLoadError`` if it is not fetched."""
    src = SOURCES[name]
    path = data_home() / src.path
    if not path.is_file():
        raise DataLoadError(f"dataset {name!r} is not fetched; run `editscale data fetch {name}` (from {src.url}), "
                            f"or pass a local file instead")
    return path


def resolve_named(spec: str) -> str:
    """``spec`` as a file path: a named source's fetched file, anything else as given."""
    return str(source_file(spec)) if spec in SOURCES else spec
