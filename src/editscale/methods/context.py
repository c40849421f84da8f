"""``EditContext``: the model being edited and the caches that outlive one edit call.

Everything a method needs besides its hyperparameters and requests: the model, its tokenizer and anatomy, a
seed, the second-moment statistics (from an explicit on-disk ``StatsCache`` plus an in-memory copy), the
sampled context prefixes, a memo for whatever else a method derives once from the unedited model (a norm
anchor), and an optional cache of target vectors (``target_cache``, off by default). No module-level caches:
two contexts never share state unless given the same ``StatsCache`` directory.

The context records the model's fingerprint when it is created. Statistics and prefixes are meant to be
those of the UNEDITED model (as in the papers, where they are computed once and cached), so create the context
(or the ``Editor``) before editing; statistics computed later are still keyed by that first fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from editscale.data.text_corpus import Corpus, resolve_corpus
from editscale.methods.prefixes import PrefixSpec, sample_prefixes
from editscale.model.anatomy import Anatomy, get_anatomy
from editscale.model.loading import fingerprint as model_fingerprint
from editscale.model.loading import model_device, model_dir, read_testbed_manifest
from editscale.model.tokens import ensure_pad_token
from editscale.stats.second_moment import KeySample, StatsCache, second_moments

if TYPE_CHECKING:
    from editscale.methods.hparams import StatsHparams
    from editscale.methods.target_cache import TargetCache

_DEFAULT = "default"
T = TypeVar("T")


def key_sample(hp: StatsHparams) -> KeySample:
    """The keys the hyperparameters' statistics are estimated from."""
    return KeySample(hp.mom2_n_texts, hp.mom2_n_tokens, hp.mom2_sampling, hp.mom2_seed)


def null_space_projector(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = U U^T (k, k), float64: U the eigenvectors of the symmetric PSD ``cov`` with eigenvalue below
    ``threshold`` (AlphaEdit's projector onto the null space of the keys ``cov`` was estimated on)."""
    values, vectors = torch.linalg.eigh(cov.double())
    u = vectors[:, values < threshold]
    return u @ u.T


class EditContext:
    """The model under edit plus its statistics and prefix caches.

    - ``stats_cache``: a ``StatsCache``, a directory, ``"default"`` (``$EDITSCALE_HOME`` or
      ``~/.cache/editscale``) or None (keep statistics in memory only);
    - ``corpus``: the statistics corpus when the hyperparameters name none (default: the model directory's
      corpus.txt, which testbed models ship);
    - ``seed``: for the context prefixes;
    - ``progress``: progress bars on or off (None: ``EDITSCALE_PROGRESS``).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        anatomy: Anatomy | None = None,
        stats_cache: StatsCache | str | Path | None = _DEFAULT,
        corpus: str | Path | Corpus | list[str] | None = None,
        seed: int = 0,
        progress: bool | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        ensure_pad_token(tokenizer)
        self.anatomy = anatomy or get_anatomy(model)
        if stats_cache == _DEFAULT:
            stats_cache = StatsCache()
        elif isinstance(stats_cache, (str, Path)):
            stats_cache = StatsCache(stats_cache)
        self.stats_cache: StatsCache | None = stats_cache
        self.corpus_spec = corpus
        self.seed = seed
        self.progress = progress
        self.fingerprint = fingerprint or model_fingerprint(model)
        self.manifest: dict[str, Any] | None = read_testbed_manifest(model_dir(model))
        self._moments: dict[tuple, torch.Tensor] = {}
        self._prefixes: dict[PrefixSpec, list[list[str]]] = {}
        self._corpora: dict[str, Corpus] = {}
        self._factors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # LU of each C
        self._projectors: dict[tuple, torch.Tensor] = {}  # AlphaEdit's null-space projector of each C
        self._memo: dict[Hashable, Any] = {}  # what methods derive once (memo), e.g. norm anchors
        # optimised target vectors kept across calls, keyed by the weights they were optimised on: off (None)
        # unless set, e.g. by the scaling curve, which edits prefixes of one sample into the unedited model
        self.target_cache: TargetCache | None = None

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def weight_device(self, layer: int) -> torch.device:
        """The device of layer ``layer``'s edited matrix: statistics and solves for it live there (a model
        spread over devices with a device map keeps its layers on several)."""
        return self.anatomy.weight_param(self.model, layer).device

    @property
    def model_dir(self) -> Path | None:
        return model_dir(self.model)

    # --- context prefixes -------------------------------------------------------------------------------
    def prefixes(self, spec: PrefixSpec) -> list[list[str]]:
        """Context prefix groups for ``spec`` (group 0: the bare prompt), sampled once per context."""
        if spec not in self._prefixes:
            self._prefixes[spec] = sample_prefixes(self.model, self.tokenizer, spec, self.seed)
        return self._prefixes[spec]

    # --- statistics -------------------------------------------------------------------------------------
    def corpus(self, spec: str | Path | Corpus | list[str] | None = None) -> Corpus:
        spec = spec if spec is not None else self.corpus_spec
        if isinstance(spec, Corpus):
            return spec
        key = repr(spec)
        if key not in self._corpora:
            self._corpora[key] = resolve_corpus(spec, self.model_dir)
        return self._corpora[key]

    def second_moments(self, layers: list[int], hp: StatsHparams) -> dict[int, torch.Tensor]:
        """E[k k^T] (k, k) for ``layers``, each on its layer's edited matrix's device, in float32/float64 as
        ``hp.mom2_dtype``: from memory, else the disk cache, else computed for all missing layers in one pass."""
        corpus = self.corpus(hp.mom2_corpus)
        spec = self._moment_spec(hp)
        missing = [layer for layer in layers if (layer, *spec) not in self._moments]
        if missing:
            got = second_moments(self.model, self.tokenizer, missing, corpus, sample=key_sample(hp),
                                 dtype=hp.mom2_dtype, max_length=hp.mom2_max_length,
                                 batch_size=hp.mom2_batch_size, cache=self.stats_cache,
                                 fingerprint=self.fingerprint, progress=self.progress)
            for layer, m in got.items():
                self._moments[(layer, *spec)] = m.matrix.to(self.weight_device(layer))
        return {layer: self._moments[(layer, *spec)] for layer in layers}

    def _moment_spec(self, hp: StatsHparams) -> tuple:
        return (self.corpus(hp.mom2_corpus).digest, key_sample(hp), hp.mom2_dtype, hp.mom2_max_length)

    def second_moment(self, layer: int, hp: StatsHparams) -> torch.Tensor:
        return self.second_moments([layer], hp)[layer]

    def second_moment_solver(self, layer: int, hp: StatsHparams) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> C^-1 x`` in float64 for the layer's second moment C, from one LU factorisation kept for
        the context's life (ROME solves with the same C at every edit)."""
        key = (layer, *self._moment_spec(hp))
        if key not in self._factors:
            self._factors[key] = torch.linalg.lu_factor(self.second_moment(layer, hp).double())
        lu, pivots = self._factors[key]
        return lambda x: torch.linalg.lu_solve(lu, pivots, x.double()[:, None])[:, 0]

    def null_space_projector(self, layer: int, hp: StatsHparams, threshold: float) -> torch.Tensor:
        """AlphaEdit's P = U U^T (k, k), float64: U the eigenvectors of the layer's second moment C whose
        eigenvalues are below ``threshold``, so P k ~ 0 for the keys C was estimated on. One
        eigendecomposition per layer, kept for the context's life (as the reference's P, computed once)."""
        key = (layer, *self._moment_spec(hp), threshold)
        if key not in self._projectors:
            self._projectors[key] = null_space_projector(self.second_moment(layer, hp), threshold)
        return self._projectors[key]

    # --- anything else derived once ---------------------------------------------------------------------
    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``'s value, computed once per context and ``key`` (e.g. a norm anchor, which
        ``norm_anchor.anchor_for`` keys by its module and hyperparameters): what a method derives from the
        unedited model lives as long as the context, not in a module-level cache."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]
