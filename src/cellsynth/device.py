"""One device-selection helper and one seeded-random helper for the whole project."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError

log = logging.getLogger(__name__)


def launched_processes() -> int:
    """How many processes ``accelerate launch`` (or torchrun) started for this job: its
    ``WORLD_SIZE``, 1 when run alone."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def select_device(name: str | Any = "auto") -> Any:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; ``cpu``/``cuda[:N]``/``mps`` force one."""
    import torch

    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CellsynthInputError(f"device {name!r} was asked for but no CUDA GPU is available")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise CellsynthInputError("device 'mps' was asked for but Apple MPS is not available")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise CellsynthInputError(f"unknown device {name!r} (use auto, cpu, cuda or mps)") from exc


def seeded(seed: int | None) -> tuple[np.random.Generator, Any]:
    """A numpy generator and a torch generator derived from one seed (None = fresh entropy)."""
    import torch

    ss = np.random.SeedSequence(seed)
    rng = np.random.default_rng(ss)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63 - 1)))
    return rng, gen


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def busy_cores(interval: float = 0.2) -> float:
    """Cores kept busy by other processes now: CPU use over ``interval`` seconds (psutil), less
    this process's own; the 1-minute load average where psutil is missing."""
    import os

    try:
        import psutil

        me = psutil.Process()
        mine0, t0 = sum(me.cpu_times()[:2]), time.monotonic()
        total = psutil.cpu_percent(interval=interval) / 100.0 * available_cores()
        mine = (sum(me.cpu_times()[:2]) - mine0) / max(time.monotonic() - t0, 1e-3)
        return max(0.0, total - mine)
    except ImportError:  # pragma: no cover
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0


def choose_threads(
    threads: int | None = None, *, processes: int | None = None, busy: float | None = None
) -> int:
    """How many torch threads one process should use.

    ``threads`` (the ``--threads`` option) wins. Otherwise ``OMP_NUM_THREADS`` if set; otherwise
    the cores divided among this machine's cellsynth processes (``LOCAL_WORLD_SIZE`` under
    ``accelerate launch``), less the cores other processes keep busy. OpenMP threads wait for
    each other at every barrier, so on oversubscribed cores more threads are *slower* (measured
    in docs/performance.md: 8.6x per pair with 2 threads beside three busy torch jobs on 2
    cores); one thread per free core is the safe choice.
    """
    import os

    if threads is not None:
        if threads < 1:
            raise CellsynthInputError(f"--threads must be at least 1, got {threads}")
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    share = available_cores() // max(processes, 1)
    others = busy_cores() if busy is None else busy
    free = available_cores() - int(others + 0.5)
    return max(1, min(share, free // max(processes, 1)) if free > 0 else 1)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to :func:`choose_threads`; returns the number."""
    import torch

    n = choose_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.debug("torch threads: %s", n)
    return n
