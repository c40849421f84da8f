"""What the benchmarks share: the model options (--model, --threads) and loading the model they name."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch


def add_model_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=None, help="testbed:NAME or a model directory (default: a random model)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def model_from_options(args: argparse.Namespace, default: Callable[[], tuple], default_name: str):
    """``(model, tokenizer, name)``: the model ``--model`` names, else ``default()``; applies ``--threads``."""
    from editscale.names import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model, tok, _ = load_model(args.model)
        return model, tok, args.model
    model, tok = default()
    return model, tok, default_name
