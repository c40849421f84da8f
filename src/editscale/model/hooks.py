"""Forward hooks as context managers: capture, add, stop early; and ``frozen_eval``, the model in eval mode with
no parameter gradients for a block (optimising an added vector, sampling).

Editing (keys, target vectors), statistics and causal tracing all use these, so there is one hook layer.
Positions are given per batch row: ``positions[b]`` is the token index to read or write in row ``b``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import nn


class StopForward(Exception):
    """Raised inside a hook to end a forward pass once everything needed has been computed."""


def _main(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_main(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


@contextmanager
def capture(
    model: nn.Module,
    names: Sequence[str],
    *,
    inputs: bool = True,
    positions: torch.Tensor | None = None,
    stop_after: str | None = None,
    detach: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the input (or output) of each named module during the forward passes inside the block.

    With ``positions`` (LongTensor of shape (batch,)), only those token positions are kept, giving
    (batch, dim) tensors; otherwise the full (batch, seq, dim). With ``stop_after``, the forward pass raises
    ``StopForward`` after that module (catch it with ``run_until``). Results of several forward passes
    inside one block are concatenated along the batch dimension.
    """
    store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    result: dict[str, torch.Tensor] = {}
    handles = []

    def make(name: str):
        def hook(module, args, output):
            x = args[0] if inputs else _main(output)
            if positions is not None:
                x = x[torch.arange(x.shape[0], device=x.device), positions.to(x.device)]
            store[name].append(x.detach() if detach else x)
            if name == stop_after:
                raise StopForward
        return hook

    for name in names:
        handles.append(model.get_submodule(name).register_forward_hook(make(name)))
    if stop_after is not None and stop_after not in names:
        def stopper(module, args, output):
            raise StopForward
        handles.append(model.get_submodule(stop_after).register_forward_hook(stopper))
    try:
        yield result
    finally:
        for h in handles:
            h.remove()
        for n, parts in store.items():
            if parts:
                result[n] = torch.cat(parts, 0) if len(parts) > 1 else parts[0]


@contextmanager
def capture_calls(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, tuple[tuple, dict]]]:
    """Record the ``(args, kwargs)`` each named module is called with (the last call inside the block).

    Causal tracing calls decoder layers itself with the arguments the model gave them (attention mask,
    rotary position embeddings, ...) to run only the layers above a restored state.
    """
    calls: dict[str, tuple[tuple, dict]] = {}
    handles = []

    def make(name: str):
        def hook(module, args, kwargs):
            calls[name] = (args, dict(kwargs))
        return hook

    for name in names:
        handles.append(model.get_submodule(name).register_forward_pre_hook(make(name), with_kwargs=True))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def run_until(model: nn.Module, **batch) -> None:
    """Run a forward pass that may be cut short by ``StopForward``."""
    try:
        model(**batch)
    except StopForward:
        pass


def add_at(
    model: nn.Module,
    name: str,
    positions: torch.Tensor,
    vectors: torch.Tensor | Callable[[], torch.Tensor],
) -> AbstractContextManager[None]:
    """Add ``vectors[b]`` to the output of module ``name`` at token ``positions[b]`` of each row b.

    ``vectors`` may be a callable returning the (batch, dim) tensor, evaluated at each forward pass, so an
    optimizer can update it between passes. Gradients flow into the vectors.
    """

    def add(h: torch.Tensor) -> torch.Tensor:
        v = vectors() if callable(vectors) else vectors
        rows, cols = torch.arange(h.shape[0], device=h.device), positions.to(h.device)
        h = h.clone()
        h[rows, cols] = h[rows, cols] + v.to(device=h.device, dtype=h.dtype)
        return h

    return edit_output(model, name, add)


@contextmanager
def edit_output(model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the main output h of module ``name`` by ``fn(h)`` (causal tracing's corrupt/restore)."""

    def hook(module, args, output):
        return _replace_main(output, fn(_main(output)))

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def skip_modules(model: nn.Module, names: Sequence[str], output: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Inside the block the named modules are not run: each call returns ``output()`` instead.

    For a module whose result a caller already has (decoder layers below an intervention, whose outputs do not
    change between optimisation steps): the caller records it once (``capture(..., inputs=False)``) and replays
    it. Only for modules that return a plain tensor, as decoder layers do in transformers 5.
    """
    patched = []

    def replay(*args, **kwargs):
        return output()

    for name in names:
        module = model.get_submodule(name)
        patched.append((module, module.__dict__.get("forward")))
        module.forward = replay
    try:
        yield
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside the block (both restored afterwards), so optimising an
    added vector never writes ``.grad`` into the model."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
