"""How many CPU threads torch uses, chosen for a machine that other processes share.

torch's OpenMP threads spin while they wait for each other. Beside one busy process on 2 cores, a training step
of the demo testbed took 4-9 s with 2 spinning threads against 0.7 s on 1 thread (``bench/bench_threads.py``).
So the ``editscale`` command, before torch starts its thread pool:

- sets ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep), unless the environment sets a policy;
- uses ``--threads N`` / ``EDITSCALE_THREADS``, else ``OMP_NUM_THREADS``, else the cores other processes
  leave free (at least 1; ``free_cores``): all of them on an idle machine, one fewer for each busy process.

The library itself (``import editscale``) changes nothing: torch's own default applies.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "EDITSCALE_THREADS"


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def busy_now(interval: float = 0.1) -> float | None:
    """How many cores other processes keep busy right now: the machine's busy CPU time over ``interval``
    seconds (``/proc/stat``) less this process's own. None where ``/proc/stat`` cannot be read."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        return sum(values), values[3] + values[4]  # all, idle + iowait

    try:
        (total0, idle0), own0 = sample(), sum(os.times()[:2])
        time.sleep(interval)
        (total1, idle1), own1 = sample(), sum(os.times()[:2])
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    n_cpus = os.cpu_count() or 1
    busy = (1 - (idle1 - idle0) / (total1 - total0)) * n_cpus
    return max(0.0, busy - (own1 - own0) / interval)


def free_cores() -> int:
    """The cores other processes leave free, at least 1: the larger of the 1-minute load average and what is
    busy right now (``busy_now``: a process that started a moment ago is not in the load average yet)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    busy = max(load, busy_now() or 0.0)
    return max(1, min(cores(), cores() - round(busy)))


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
    """Use ``n`` torch CPU threads from now on; returns it. Before torch is imported this only sets the
    environment torch starts from (importing torch here would cost a command that needs none a second or more)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return n
