"""Diffusion building blocks shared by the mask, multiview and texture models.

Models are diffusers ``UNet2DModel``s; training uses ``DDPMScheduler`` noise, sampling
``DDIMScheduler`` (eta = 0, deterministic). Noise for the slices of one 3D stack can be correlated
(paper 001, eq. 2) with :func:`correlated_noise`. All three models train with one loop,
:func:`cellsynth.diffusion.training.train_loop` (Accelerate, diffusers' EMAModel and LR
schedules, crash-safe checkpoints).
"""

from cellsynth.diffusion.core import (
    DiffusionConfig,
    build_unet,
    correlated_noise,
    ddim_sample,
    diffusion_loss,
    make_sampler,
    make_train_scheduler,
)
from cellsynth.diffusion.training import (
    Checkpoints,
    ModelTrainer,
    OptimSettings,
    TrainReport,
    make_accelerator,
    train_loop,
)

__all__ = [
    "Checkpoints",
    "DiffusionConfig",
    "ModelTrainer",
    "OptimSettings",
    "TrainReport",
    "build_unet",
    "correlated_noise",
    "ddim_sample",
    "diffusion_loss",
    "make_accelerator",
    "make_sampler",
    "make_train_scheduler",
    "train_loop",
]
