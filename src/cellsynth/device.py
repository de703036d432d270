"""One device-selection helper and one seeded-random helper for the whole project."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError

log = logging.getLogger(__name__)


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


def seeded(seed: int | None, device: Any = "cpu") -> tuple[np.random.Generator, Any]:
    """A numpy generator and a torch generator derived from one seed (None = fresh entropy)."""
    import torch

    ss = np.random.SeedSequence(seed)
    rng = np.random.default_rng(ss)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63 - 1)))
    return rng, gen
