"""UNets, schedulers, the training loss, the DDIM sampling loop and correlated noise.

Everything a diffusion model of cellsynth needs in one short file, in the spirit of diffusers'
single-file policy: a model is a ``UNet2DModel`` whose constructor arguments are its saved config;
training draws DDPM noise; sampling is a readable loop over ``DDIMScheduler.timesteps`` with
eta = 0. Conditioning (masks for the texture model, a view for the multiview model) is
concatenated to the noisy input along the channel axis (paper 003).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class DiffusionConfig:
    """Architecture and noise schedule of one diffusion model (saved in the bundle)."""

    sample_size: int = 32
    in_channels: int = 1  # noisy channels
    cond_channels: int = 0  # conditioning channels concatenated to the input
    out_channels: int = 1
    widths: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: tuple[bool, ...] = (False, False, True)
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    sampling_steps: int = 10
    #: "ddim" (eta 0) or "unipc" (diffusers' UniPC multistep solver: with 12 steps the mask
    #: model's cells are as elongated as with 50 DDIM steps)
    sampler: str = "ddim"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["attention"] = list(self.attention)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionConfig:
        d = dict(d)
        d["widths"] = tuple(d["widths"])
        d["attention"] = tuple(d["attention"])
        return cls(**d)

    @property
    def downsampling(self) -> int:
        """Canvas sides must be multiples of this (one halving per level below the first)."""
        return 2 ** (len(self.widths) - 1)


def build_unet(cfg: DiffusionConfig) -> Any:
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels + cfg.cond_channels,
        out_channels=cfg.out_channels,
        block_out_channels=tuple(cfg.widths),
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=min(32, cfg.widths[-1]),
        add_attention=any(cfg.attention),
    )


def load_widened(target: Any, source: Any) -> list[str]:
    """Copy ``source``'s weights into ``target`` (same architecture) to continue training.

    The first convolution may take more input channels in ``target`` (a new condition channel):
    the source's weights fill the first channels and the new ones start at zero, so the model
    paints exactly as before until training teaches it the new channel. Returns the names of
    the widened weights."""
    src = {k: v.detach() for k, v in source.state_dict().items()}
    own = {k: v.detach().clone() for k, v in target.state_dict().items()}
    if set(src) != set(own):
        raise ValueError("the two models have different architectures")
    widened = []
    for key, w in src.items():
        t = own[key]
        if t.shape == w.shape:
            t.copy_(w)
        elif t.ndim == 4 and t.shape[0] == w.shape[0] and t.shape[1] > w.shape[1]:
            t.zero_()
            t[:, : w.shape[1]].copy_(w)
            widened.append(key)
        else:
            raise ValueError(f"{key}: shape {tuple(w.shape)} cannot become {tuple(t.shape)}")
    target.load_state_dict(own)
    return widened


def make_train_scheduler(cfg: DiffusionConfig) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
    )


SAMPLERS = ("ddim", "unipc")


def make_sampler(train_scheduler: Any, kind: str = "ddim") -> Any:
    """A deterministic sampler sharing the training noise schedule: DDIM (eta 0) or UniPC.

    "trailing" spacing starts from pure noise at t = T-1, which matters with few steps.
    """
    from diffusers import DDIMScheduler, UniPCMultistepScheduler

    if kind == "unipc":
        return UniPCMultistepScheduler.from_config(
            train_scheduler.config, timestep_spacing="trailing", final_sigmas_type="zero"
        )
    if kind != "ddim":
        raise ValueError(f"unknown sampler {kind!r} (known: {', '.join(SAMPLERS)})")
    return DDIMScheduler.from_config(
        train_scheduler.config,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
    )


def diffusion_loss(
    model: Any,
    scheduler: Any,
    x0: torch.Tensor,
    cond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The DDPM training loss (MSE on epsilon or velocity) for a batch of clean samples."""
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(
        x0.device
    )
    xt = scheduler.add_noise(x0, noise, t)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    elif scheduler.config.prediction_type == "sample":
        target = x0
    else:
        target = noise
    inp = xt if cond is None else torch.cat([xt, cond], dim=1)
    pred = model(inp, t).sample
    return torch.nn.functional.mse_loss(pred, target)


def _tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = [*range(0, n - tile, step), n - tile]
    return sorted(set(starts))


def tiled_forward(
    model: Any, inp: torch.Tensor, t: torch.Tensor, tile: int, overlap: int
) -> torch.Tensor:
    """Evaluate a fully convolutional UNet on overlapping tiles, blending with a linear ramp.

    Used at every denoising step for canvases too large for one pass, so the tiles agree.
    """
    _, _, h, w = inp.shape
    if h <= tile and w <= tile:
        return model(inp, t).sample
    out = None
    weight = torch.zeros((1, 1, h, w), dtype=inp.dtype, device=inp.device)
    ramp = torch.ones(tile, dtype=inp.dtype, device=inp.device)
    if overlap:
        r = torch.linspace(0.05, 1.0, overlap, dtype=inp.dtype, device=inp.device)
        ramp[:overlap] = r
        ramp[-overlap:] = r.flip(0)
    for y in _tile_starts(h, tile, overlap):
        for x in _tile_starts(w, tile, overlap):
            th, tw = min(tile, h), min(tile, w)
            wy = ramp[:th] if h > tile else torch.ones(th, dtype=inp.dtype, device=inp.device)
            wx = ramp[:tw] if w > tile else torch.ones(tw, dtype=inp.dtype, device=inp.device)
            wt = (wy[:, None] * wx[None, :])[None, None]
            pred = model(inp[:, :, y : y + th, x : x + tw], t).sample
            if out is None:
                out = torch.zeros(
                    (inp.shape[0], pred.shape[1], h, w), dtype=pred.dtype, device=pred.device
                )
            out[:, :, y : y + th, x : x + tw] += pred * wt
            weight[:, :, y : y + th, x : x + tw] += wt
    assert out is not None
    return out / weight


@torch.inference_mode()
def ddim_sample(
    model: Any,
    sampler: Any,
    noise: torch.Tensor,
    cond: torch.Tensor | None = None,
    *,
    steps: int = 10,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    callback: Callable[[int, int], None] | None = None,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
    strength_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoise ``noise`` (B, C, H, W) with DDIM, eta = 0: the same noise gives the same result.

    ``cond`` (B, K, H, W) is concatenated to the input at every step. ``tile`` evaluates large
    canvases on overlapping tiles; ``batch_size`` splits a large batch into chunks.

    With ``init`` (B, C, H, W, model units) and ``strength`` < 1, sampling starts from ``init``
    noised to that fraction of the schedule (SDEdit, Meng et al. 2022): the model repaints the
    fine detail and keeps the coarse layout. About ``steps`` steps are run either way.
    ``strength_map`` (B, 1, H, W, values in [0, ``strength``]) gives each pixel its own
    strength (differential diffusion, Levin & Fried 2023): until the schedule comes down to a
    pixel's strength, the pixel is held at ``init`` noised to the current step, so the model
    repaints it less, and it still blends with its repainted neighbours.
    """
    if strength_map is not None and (init is None or strength >= 1.0):
        raise ValueError("a strength map needs a starting image and a strength below 1")
    if init is not None and strength < 1.0:
        if not 0.0 < strength:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        sampler.set_timesteps(max(steps, math.ceil(steps / strength)))
        t_max = strength * sampler.config.num_train_timesteps
        begin = int(np.searchsorted(-sampler.timesteps.numpy(), -t_max))
        begin = min(begin, len(sampler.timesteps) - 1)
        if hasattr(sampler, "set_begin_index"):
            sampler.set_begin_index(begin)
        timesteps = sampler.timesteps[begin:]
        x = sampler.add_noise(init.to(noise), noise, timesteps[:1])
    else:
        sampler.set_timesteps(steps)
        timesteps = sampler.timesteps
        x = noise
    # DDIM with eta = 0 is deterministic; multistep solvers (UniPC) have no eta and are too
    step_kw = {"eta": 0.0} if "eta" in inspect.signature(sampler.step).parameters else {}
    n = x.shape[0]
    chunk = batch_size or n
    if strength_map is not None:
        assert init is not None
        release = strength_map.to(x) * sampler.config.num_train_timesteps
        init, start_noise = init.to(x), noise.to(x)
    for i, t in enumerate(timesteps):
        if strength_map is not None:
            held = release < float(t)
            x = torch.where(held, sampler.add_noise(init, start_noise, t.reshape(1)), x)
        outs = []
        for s in range(0, n, chunk):
            xs = x[s : s + chunk]
            inp = xs if cond is None else torch.cat([xs, cond[s : s + chunk]], dim=1)
            tt = torch.full((xs.shape[0],), int(t), device=x.device, dtype=torch.long)
            outs.append(
                tiled_forward(model, inp, tt, tile, overlap) if tile else model(inp, tt).sample
            )
        model_out = torch.cat(outs) if len(outs) > 1 else outs[0]
        x = sampler.step(model_out, t, x, **step_kw).prev_sample
        if callback is not None:
            callback(i + 1, len(timesteps))
    return x


def correlated_noise(
    n_slices: int,
    shape: tuple[int, ...],
    rho: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Initial noise for the S slices of one stack (paper 001, eq. 2).

    x_T(s) = rho / sqrt(1 + rho^2) * c_common + 1 / sqrt(1 + rho^2) * c_s, with c ~ N(0, I):
    unit variance per slice, correlation rho^2 / (1 + rho^2) between slices.
    """
    common = torch.randn((1, *shape), generator=generator)
    own = torch.randn((n_slices, *shape), generator=generator)
    a = rho / math.sqrt(1.0 + rho * rho)
    b = 1.0 / math.sqrt(1.0 + rho * rho)
    return a * common + b * own


# --------------------------------------------------------------------------- optimiser state


def save_optimizer(optimizer: torch.optim.Optimizer, folder: str | Path, extra: dict) -> None:
    """Save an optimiser's tensors as safetensors and the rest as JSON (never pickle).

    Each file is written to a unique temporary name in ``folder`` and renamed.
    """
    from cellsynth.diffusion.training import optimizer_state, save_tensors
    from cellsynth.io import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = optimizer_state(optimizer)
    save_tensors(folder / "optimizer.safetensors", tensors)
    write_json(folder / "optimizer.json", {**meta, **extra})


def load_optimizer(optimizer: torch.optim.Optimizer, folder: str | Path) -> dict:
    from cellsynth.diffusion.training import load_optimizer_state, load_tensors

    folder = Path(folder)
    meta = json.loads((folder / "optimizer.json").read_text())
    load_optimizer_state(optimizer, load_tensors(folder / "optimizer.safetensors"), meta)
    return meta


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()
