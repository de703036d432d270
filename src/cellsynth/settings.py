"""The settings of long jobs and their defaults, in one light module (no torch import).

The CLI, the widgets and experiment configs read each default from these dataclasses, so a
default lives in one place; ``cellsynth.learn`` and ``cellsynth.learn3d`` re-export them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

#: the learning-rate schedules ``learn`` offers (names of diffusers.optimization.get_scheduler)
LR_SCHEDULES = ("constant_with_warmup", "cosine", "linear")


@dataclass
class LearnSettings:
    """How long and how to train. ``minutes`` and the step targets both stop training."""

    minutes: float | None = 10.0
    mask_steps: int = 2000
    texture_steps: int = 4000
    mask_batch: int = 32
    texture_batch: int = 16
    lr: float = 1e-3
    warmup: int = 50
    # any name of diffusers.optimization.get_scheduler; "cosine" decays to 0 at the step target
    lr_schedule: str = "constant_with_warmup"
    ema_decay: float = 0.995
    crop_size: int = 64
    mask_size: int = 32
    tile: int | None = None  # texture training tile; None: from the cells' size (64..128)
    mask_widths: tuple[int, ...] = (16, 32, 64)
    texture_widths: tuple[int, ...] = (16, 32, 48, 64)
    seed: int = 0
    checkpoint_minutes: float = 2.0
    device: str = "auto"
    mixed_precision: str = "no"  # bf16 or fp16: on CUDA only
    grad_accumulation: int = 1
    # the texture model takes each cell's brightness as a fourth condition channel
    brightness_condition: bool = True
    # continue from this bundle's models (its architecture; a new condition channel starts at 0)
    init_from: str | None = None
    # write BUNDLE/progress/step-<n>.png (sample grid + loss curves) at every checkpoint
    preview: bool = True

    @classmethod
    def quality(cls, **overrides: Any) -> LearnSettings:
        """The ``--quality`` preset: a long, resumable run to a flat loss (hours on a CPU,
        minutes on a GPU): no time budget, 10x the default steps,
        checkpoints (and a preview) every 10 minutes."""
        base = cls(
            minutes=None,
            mask_steps=20_000,
            texture_steps=40_000,
            checkpoint_minutes=10.0,
        )
        return replace(base, **overrides)

    def use_tiny_models(self) -> None:
        """Tiny widths, batches and tiles: for tests and smoke runs, not for real bundles."""
        self.mask_widths, self.texture_widths = (8, 16, 16), (8, 16, 16)
        self.mask_batch, self.texture_batch, self.tile = 8, 4, 32

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mask_widths"] = list(self.mask_widths)
        d["texture_widths"] = list(self.texture_widths)
        return d


RHO_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class Learn3DSettings:
    multiview_steps: int = 600
    voxel_size: tuple[float, float, float] | None = None  # (z, y, x); None: from the files
    rho_grid: tuple[float, ...] = RHO_GRID
    calibration_side: int = 128  # xy side of the stack painted to calibrate rho

    def use_tiny_models(self) -> None:
        """A small rho-calibration stack: for tests and smoke runs."""
        self.calibration_side = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
