"""Loading models: a local model directory, or a hub name (when a network exists).

``load_model`` returns the model in eval mode, its tokenizer (with a pad token) and its anatomy. The dtype
and device are the caller's; ``trust_remote_code`` stays off unless asked for. Names such as ``testbed:demo``,
``smollm2-135m`` or a ``.gguf`` file are turned into directories one layer up (``editscale.names``, whose
``load_model`` takes them all); this module knows none of them.

A model directory may carry a testbed manifest (``MANIFEST_FILE``), which presets and downstream tasks read
through ``model_dir`` and ``read_testbed_manifest``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from editscale.errors import ModelLoadError
from editscale.model.anatomy import Anatomy, get_anatomy
from editscale.model.tokens import ensure_pad_token

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")
MANIFEST_FILE = "editscale_testbed.json"  # a testbed model directory's manifest (written by testbed/train.py)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (None: as they are), restoring the previous count afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def check_device(device: str | torch.device | None) -> None:
    """A one-line ``ModelLoadError`` unless ``device`` names a device this machine has (None: fine)."""
    if device is None:
        return
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if d.type == "meta":  # shapes without storage: nothing can be computed on it
        raise ModelLoadError(f"device {str(device)!r} holds no data (tensors without storage); use cpu, cuda or mps")
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ModelLoadError(f"device {str(device)!r}: this machine has no CUDA GPU that torch can use "
                                 f"(torch {torch.__version__}); use --device cpu")
        if d.index is not None and d.index >= n:
            raise ModelLoadError(f"device {str(device)!r}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelLoadError(f"device {str(device)!r}: MPS is not available on this machine; use --device cpu")
    elif d.type != "cpu":
        try:
            torch.empty(0, device=d)
        except (RuntimeError, NotImplementedError):
            raise ModelLoadError(f"device {str(device)!r} is not available on this machine; use --device cpu") from None


def nonfinite_weights(model: nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """The names of the parameters (all, or those in ``names``: what an edit changed) holding NaN or infinite
    values."""
    wanted = None if names is None else set(names)
    with torch.no_grad():
        return [n for n, p in model.named_parameters() if (wanted is None or n in wanted) and p.is_floating_point()
                and not bool(torch.isfinite(p).all())]


def _check_weight_files(local: Path) -> None:
    """A truncated or corrupt safetensors file of a model directory, in one line (headers only are read)."""
    from editscale.cache import safetensors_problem

    for f in sorted(local.glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            raise ModelLoadError(f"could not load the model in {local}: {problem}; copy or save the model again")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or HF_ENDPOINT) answers a TCP connection; False when offline."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


def model_dir(model: nn.Module) -> Path | None:
    """The local directory the model was loaded from, if any."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
    if not name:
        return None
    p = Path(str(name)).expanduser()
    return p if p.is_dir() else None


def read_testbed_manifest(directory: str | Path | None) -> dict | None:
    """The testbed manifest of a model directory, or None when it has none (not a testbed model)."""
    if directory is None:
        return None
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"testbed manifest {path} is not valid JSON ({e}); rebuild the model with "
                             "`editscale testbed build NAME --force`") from None


def load_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, object, Anatomy]:
    """Load a causal LM and its tokenizer from a local model directory or a hub name.

    Names (``testbed:NAME``, ``smollm2-135m``, ``*.gguf``) are resolved by ``editscale.names.load_model``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    path = str(name_or_path)
    check_device(device)
    if ":" in path.split("/")[0] or path.endswith(".gguf"):
        raise ModelLoadError(f"{path!r} is a model name or file, not a model directory: load it with "
                             "editscale.load_model, which converts or builds it first")
    local = Path(path).expanduser()
    kwargs = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = parse_dtype(dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if local.exists():
        if not (local / "config.json").exists():
            raise ModelLoadError(f"{local} is not a Hugging Face model directory (no config.json)")
        try:
            json.loads((local / "config.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{local / 'config.json'} is not valid JSON ({e}); restore the model's config") from None
        if not any((local / f).is_file() for f in TOKENIZER_FILES):
            raise ModelLoadError(f"{local} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
                                 "tokenizer into the model directory (tokenizer.save_pretrained)")
        _check_weight_files(local)
        source, local_only = str(local), True
    elif path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ModelLoadError(f"model directory {path!r} does not exist")
    else:
        source, local_only = path, False
    try:
        model, tok = _from_pretrained(AutoModelForCausalLM, AutoTokenizer, source, kwargs, local_files_only=True)
    except OSError:
        if local_only:
            raise ModelLoadError(f"could not load the model in {source}: its weights or tokenizer are missing")
        if not hub_reachable():
            raise ModelLoadError(
                f"model {path!r} is not in the local Hugging Face cache and the hub cannot be reached "
                "(no network); download it on a machine with a network and pass its directory, "
                "e.g. --model /path/to/gpt2-xl"
            ) from None
        try:
            model, tok = _from_pretrained(AutoModelForCausalLM, AutoTokenizer, source, kwargs,
                                          local_files_only=False)
        except OSError as e:
            raise ModelLoadError(f"could not load model {path!r} from the hub: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise ModelLoadError(f"could not load model {path!r}: {' '.join(str(e).split())}") from None
    broken = nonfinite_weights(model)
    if broken:
        raise ModelLoadError(f"model {path!r} has NaN or infinite weights (in {broken[0]}"
                             f"{f' and {len(broken) - 1} more' if len(broken) > 1 else ''}); it is damaged: load "
                             "the original weights again")
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    ensure_pad_token(tok)
    return model, tok, get_anatomy(model)


def _from_pretrained(model_cls, tok_cls, source, kwargs, local_files_only):
    tok = tok_cls.from_pretrained(source, local_files_only=local_files_only,
                                  trust_remote_code=kwargs["trust_remote_code"])
    model, info = model_cls.from_pretrained(source, local_files_only=local_files_only, output_loading_info=True,
                                            **kwargs)
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:  # transformers would initialise them at random and only warn
        first = missing[0] if isinstance(missing[0], str) else missing[0][0]
        raise ModelLoadError(f"the weights of {source} do not cover its config: {len(missing)} parameter(s) missing "
                             f"or of another shape (e.g. {first}); the config says more layers or larger matrices "
                             "than the weight files hold: restore the matching config.json or weights")
    return model, tok


def fingerprint(model: nn.Module) -> str:
    """A short content hash of a model: its config and a strided sample of every parameter.

    Used to key caches (statistics, prefixes) and stored with every run. Two models with equal weights and
    config share a fingerprint; changing any weight matrix noticeably changes it.
    """
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None:
        h.update(cfg.to_json_string(use_diff=False).encode())
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].to(device="cpu", dtype=torch.float32)
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(sample.numpy().tobytes())
        h.update(str(float(flat.to(torch.float64).sum())).encode())
    return h.hexdigest()[:16]
