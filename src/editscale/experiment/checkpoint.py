"""Checkpoints for exact resume: cumulative deltas, the method's state, RNG states and the runner's own state.

A checkpoint is a directory ``checkpoints/update_NNNNNN`` written under a temporary name and renamed when
complete, so a killed run leaves either a whole checkpoint or none:

- ``delta.safetensors``: the cumulative update of every edited matrix, W_now - W_original, in float64 (a
  ``Delta`` in ``Delta.to_tensors`` layout). Float64 makes ``W_original + delta`` round back to exactly
  W_now, which a checksum of the restored weights verifies.
- ``state.safetensors``: the method's ``EditState``, plus the torch RNG states.
- ``info.json``: update and edit counts, the Python and NumPy RNG states, the weights' checksum and the
  runner's own state (which edits succeeded, last distances, the guard's history).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from editscale.errors import RunStateError
from editscale.methods.base import Delta, EditState, Update

CHECKPOINT_DIR = "checkpoints"
_RNG_PREFIX = "rng::"


@dataclass
class Checkpoint:
    update_idx: int
    n_edits: int
    delta: dict[str, torch.Tensor]  # param -> (stored layout) float64 cumulative delta
    state: EditState
    runner: dict[str, Any]
    rng: dict[str, Any]
    checksum: str


def weights_checksum(model: nn.Module, params: list[str]) -> str:
    """sha256 of the named parameters' bytes (order-independent of dict order)."""
    h = hashlib.sha256()
    tensors = dict(model.named_parameters())
    for name in sorted(params):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rng_states() -> dict[str, Any]:
    """Every RNG a method may draw from: torch (CPU and each CUDA device), Python's ``random``, NumPy."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"torch_cuda_{i}"] = s
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch_cpu"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    cuda = sorted(k for k in states if k.startswith("torch_cuda_"))
    if cuda:
        torch.cuda.set_rng_state_all([states[k] for k in cuda])


def checkpoint_dir(run_dir: Path, update_idx: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"update_{update_idx:06d}"


def save_checkpoint(
    run_dir: Path,
    update_idx: int,
    n_edits: int,
    model: nn.Module,
    originals: dict[str, torch.Tensor],
    transposed: dict[str, bool],
    state: EditState,
    runner: dict[str, Any],
) -> Path:
    """Write a checkpoint after ``update_idx`` updates; returns its directory.

    ``originals`` are the edited parameters' original values in their stored layout; ``transposed`` says
    which are stored (in, out), so the saved delta is an ordinary (out, in) ``Delta``.
    """
    final = checkpoint_dir(run_dir, update_idx)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        return _write(final, tmp, update_idx, n_edits, model, originals, transposed, state, runner)
    except BaseException:  # storage full, a file-size limit, a kill: no half-written checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(final: Path, tmp: Path, update_idx: int, n_edits: int, model: nn.Module,
           originals: dict[str, torch.Tensor], transposed: dict[str, bool], state: EditState,
           runner: dict[str, Any]) -> Path:
    params = dict(model.named_parameters())
    updates = {}
    with torch.no_grad():
        for name, orig in originals.items():
            diff = params[name].detach().double().cpu() - orig.double().cpu()
            updates[name] = Update(name, transposed[name], dense=diff.T if transposed[name] else diff)
    delta = Delta(updates)
    save_file(delta.to_tensors(), str(tmp / "delta.safetensors"))
    rng = rng_states()
    tensors = dict(state.state_dict())
    tensors.update({_RNG_PREFIX + k: v for k, v in rng.items() if isinstance(v, torch.Tensor)})
    save_file(tensors, str(tmp / "state.safetensors"))
    info = {
        "update_idx": update_idx,
        "n_edits": n_edits,
        "checksum": weights_checksum(model, list(originals)),
        "rng": {k: v for k, v in rng.items() if not isinstance(v, torch.Tensor)},
        "runner": runner,
        "files": {f: _sha256(tmp / f) for f in CHECKPOINT_FILES},  # verified before the checkpoint is used
    }
    (tmp / "info.json").write_text(json.dumps(info))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


CHECKPOINT_FILES = ("delta.safetensors", "state.safetensors")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint, its files verified against the hashes its info.json recorded; a damaged one (truncated,
    corrupt, missing files) is a one-line ``RunStateError``."""
    path = Path(path)
    try:
        info = json.loads((path / "info.json").read_text())
        for name, digest in info.get("files", {}).items():  # older checkpoints recorded none
            if _sha256(path / name) != digest:
                raise ValueError(f"{name} does not match the hash recorded when it was written")
        flat = load_file(str(path / "delta.safetensors"))
        tensors = load_file(str(path / "state.safetensors"))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a truncated file
        raise RunStateError(f"checkpoint {path} is damaged ({type(e).__name__}: {e})") from None
    delta = {n: u.stored() for n, u in Delta.from_tensors(flat).updates.items()}
    rng = dict(info["rng"])
    rng.update({k[len(_RNG_PREFIX):]: v for k, v in tensors.items() if k.startswith(_RNG_PREFIX)})
    state = EditState.from_state_dict({k: v for k, v in tensors.items() if not k.startswith(_RNG_PREFIX)})
    return Checkpoint(info["update_idx"], info["n_edits"], delta, state, info["runner"], rng, info["checksum"])


def restore_weights(model: nn.Module, originals: dict[str, torch.Tensor], ckpt: Checkpoint) -> None:
    """Set the edited matrices to original + cumulative delta, and check they are bit-identical to the
    weights the checkpoint was taken from."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in ckpt.delta.items():
            p = params[name]
            p.copy_((originals[name].double().cpu() + d).to(dtype=p.dtype, device=p.device))
    if weights_checksum(model, list(ckpt.delta)) != ckpt.checksum:
        raise RunStateError("restored weights differ from the checkpointed ones; the model or its dtype "
                            "changed since the run started")


def prune_checkpoints(run_dir: Path, keep: Sequence[Path]) -> None:
    """Delete every checkpoint directory except those in ``keep`` (the latest, and the one before it for when
    the latest turns out damaged), and any left half-written."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.is_dir() and d not in keep:
            shutil.rmtree(d)
