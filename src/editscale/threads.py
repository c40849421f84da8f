"""How many CPU threads torch uses, chosen for a machine that other processes share.

torch's OpenMP threads spin while they wait for each other. Beside one busy process on 2 cores, a training step
of the demo testbed took 4-9 s with 2 spinning threads against 0.7 s on 1 thread (``bench/bench_threads.py``).
So the ``editscale`` command, before torch starts its thread pool:

- sets ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep), unless the environment sets a policy;
- uses ``--threads N`` / ``EDITSCALE_THREADS``, else the cores that the load average leaves free (at least 1):
  all of them on an idle machine, one fewer for each process already busy.

The library itself (``import editscale``) changes nothing: torch's own default applies.
"""

from __future__ import annotations

import os

ENV = "EDITSCALE_THREADS"


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_cores() -> int:
    """The cores the 1-minute load average leaves free, at least 1."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores()
    return max(1, min(cores(), cores() - round(load)))


def requested(argv: list[str]) -> int | None:
    """``--threads N`` given before the command name (the CLI-wide option), else ``EDITSCALE_THREADS``; None
    when neither is given or the value is not a positive integer (the CLI's parser reports it)."""
    value = os.environ.get(ENV)
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            break  # the command name: options after it are the command's own
        if arg == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
    try:
        n = int(value) if value is not None else None
    except ValueError:
        return None
    return n if n is not None and n >= 1 else None


def prepare_environment(argv: list[str]) -> int:
    """Before torch is imported: the passive wait policy, and the OpenMP/MKL thread counts: the number asked
    for, else ``OMP_NUM_THREADS`` where the environment sets it, else the free cores. Returns the number."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    n = requested(argv)
    if n is None:
        try:
            n = max(1, int(os.environ["OMP_NUM_THREADS"]))
            return n
        except (KeyError, ValueError):
            n = free_cores()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    return n


def apply(n: int) -> int:
    """Use ``n`` torch CPU threads from now on; returns it."""
    import torch

    torch.set_num_threads(n)
    return n
