"""MEND's editor networks: per matrix shape, an MLP over each token's [u, delta] (normalised by running
statistics), one mode (scale and shift) per edited matrix, and a learnt step size lr_W per matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from editscale.errors import EditError
from editscale.methods.mend.hparams import MendHparams


class _LowRankLayer(nn.Module):
    """x + relu(scale_m * (U V x + b) + shift_m): the identity at the start (U = 0)."""

    def __init__(self, dim: int, rank: int, n_modes: int, gen: torch.Generator) -> None:
        super().__init__()
        mid = min(rank, dim)
        self.u = nn.Parameter(torch.zeros(dim, mid))
        self.v = nn.Parameter(torch.randn(mid, dim, generator=gen))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        pre = (x @ self.v.T) @ self.u.T + self.bias
        return x + (pre * self.mode_scale[mode] + self.mode_shift[mode]).clamp(min=0)


class _Transform(nn.Module):
    """The editor of one matrix shape: [u, delta] -> (u~, delta~), inputs normalised by running statistics."""

    def __init__(self, x_dim: int, d_dim: int, rank: int, n_hidden: int, n_modes: int,
                 gen: torch.Generator) -> None:
        super().__init__()
        self.x_dim = x_dim
        dim = x_dim + d_dim
        self.layers = nn.ModuleList([_LowRankLayer(dim, rank, n_modes, gen) for _ in range(n_hidden + 1)])
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def observe(self, rows: torch.Tensor) -> None:
        """Add (T, dim) rows to the running mean and variance (Chan et al.'s parallel update)."""
        rows = rows.double()
        n, mean = rows.shape[0], rows.mean(0)
        m2 = ((rows - mean) ** 2).sum(0)
        total = self.count + n
        diff = mean - self.mean
        self.m2 += m2 + diff ** 2 * self.count * n / total
        self.mean += diff * n / total
        self.count.fill_(total)

    def forward(self, x: torch.Tensor, d: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count < 2:
            raise EditError("the MEND editor has seen fewer than 2 tokens: its normalisation is undefined")
        std = (self.m2 / (self.count - 1)).sqrt().float()
        h = (torch.cat([x, d], -1).float() - self.mean.float()) / (std + 1e-7)
        for layer in self.layers:
            h = layer(h, mode)
        return h[:, :self.x_dim], h[:, self.x_dim:]


class MendNetwork(nn.Module):
    """Every edited matrix's editor (shared per shape, one mode per matrix) and learnt step size lr_W.

    ``params``: (parameter name, out, in) of each edited matrix, in order."""

    def __init__(self, params: Sequence[tuple[str, int, int]], hp: MendHparams) -> None:
        super().__init__()
        self.params = [(str(n), int(o), int(i)) for n, o, i in params]
        self.shapes: dict[str, list[str]] = {}
        for name, out, inp in self.params:
            self.shapes.setdefault(f"{out}x{inp}", []).append(name)
        gen = torch.Generator().manual_seed(hp.seed)
        self.transforms = nn.ModuleDict({
            key: _Transform(int(key.split("x")[1]), int(key.split("x")[0]), hp.rank, hp.n_hidden, len(names), gen)
            for key, names in self.shapes.items()})
        self.edit_lrs = nn.Parameter(torch.full((len(self.params),), float(hp.edit_lr)))

    def _where(self, name: str) -> tuple[int, _Transform, int]:
        index = next(i for i, p in enumerate(self.params) if p[0] == name)
        _, out, inp = self.params[index]
        key = f"{out}x{inp}"
        return index, self.transforms[key], self.shapes[key].index(name)

    def observe(self, name: str, x: torch.Tensor, d: torch.Tensor) -> None:
        self._where(name)[1].observe(torch.cat([x, d], -1))

    def factors(self, name: str, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(left (out, T), right (T, in)) of the update -lr_W sum_t d~_t x~_t^T of one matrix, from its
        per-token inputs x (T, in) and output gradients d (T, out)."""
        index, transform, mode = self._where(name)
        x_new, d_new = transform(x, d, mode)
        return -(self.edit_lrs[index] * d_new).T, x_new
