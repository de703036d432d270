"""Diffusion building blocks shared by the mask, multiview and texture models.

Models are diffusers ``UNet2DModel``s; training uses ``DDPMScheduler`` noise, sampling
``DDIMScheduler`` (eta = 0, deterministic). Noise for the slices of one 3D stack can be correlated
(paper 001, eq. 2) with :func:`correlated_noise`.
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

__all__ = [
    "DiffusionConfig",
    "build_unet",
    "correlated_noise",
    "ddim_sample",
    "diffusion_loss",
    "make_sampler",
    "make_train_scheduler",
]
