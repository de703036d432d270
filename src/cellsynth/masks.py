"""Stage 2, MaskDDPM: a diffusion model of single-cell masks (paper 001).

The model learns the atlas' scale-normalised mask crops (downsampled to ``size`` pixels, values
-1/+1, with random flips and quarter turns). Sampling runs DDIM on a whole batch at once, then
each mask is cleaned to one filled connected component and resized to a cell size drawn from the
atlas' size distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cellsynth.diffusion.core import DiffusionConfig, ddim_sample, to_numpy

log = logging.getLogger(__name__)


def mask_config(size: int = 32, widths: tuple[int, ...] = (32, 64, 64)) -> DiffusionConfig:
    return DiffusionConfig(
        sample_size=size,
        in_channels=1,
        cond_channels=0,
        out_channels=1,
        widths=widths,
        layers_per_block=1,
        attention=(False,) * (len(widths) - 1) + (True,),
        # UniPC at 12 steps: cells as elongated as 50 DDIM steps give (8 DDIM steps come out
        # rounder than the training cells: eccentricity W1 0.58 vs 0.33, docs/synthesis.md)
        sampler="unipc",
        sampling_steps=12,
    )


def prepare_mask_crops(masks: np.ndarray, size: int) -> np.ndarray:
    """Atlas crops (N, S, S) {0, 1} -> float32 (N, size, size) in [-1, 1] (area-averaged)."""
    s = masks.shape[-1]
    m = masks.astype(np.float32)
    if s != size:
        t = torch.from_numpy(m)[:, None]
        m = torch.nn.functional.interpolate(t, size=(size, size), mode="area")[:, 0].numpy()
    return (m > 0.5).astype(np.float32) * 2.0 - 1.0


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and quarter turns, the symmetries a cell mask has no preference for."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    batch = torch.rot90(batch, k, dims=(-2, -1))
    if torch.rand(1, generator=generator) < 0.5:
        batch = batch.flip(-1)
    return batch


def mask_batch(crops: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, crops.shape[0], (batch_size,), generator=generator)
    return augment(crops[idx][:, None], generator)


def clean_mask(m: np.ndarray) -> np.ndarray:
    """The largest connected component of a binary mask, holes filled."""
    from scipy import ndimage

    lab, n = ndimage.label(m)
    if n == 0:
        return m.astype(bool)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        m = lab == sizes.argmax()
    return ndimage.binary_fill_holes(m)


@torch.inference_mode()
def sample_masks(
    unet: Any,
    sampler: Any,
    n: int,
    *,
    size: int,
    steps: int,
    generator: torch.Generator,
    device: Any = "cpu",
    min_fill: float = 0.02,
    batch_size: int = 256,
) -> np.ndarray:
    """``n`` cleaned binary masks (n, size, size); empty or specks are drawn again."""
    out: list[np.ndarray] = []
    tries = 0
    while len(out) < n and tries < 5:
        need = n - len(out)
        k = need + max(2, need // 8)  # a few spares for the ones that come out empty
        noise = torch.randn((k, 1, size, size), generator=generator).to(device)
        x = to_numpy(ddim_sample(unet, sampler, noise, steps=steps, batch_size=batch_size))
        for m in x[:, 0] > 0:
            c = clean_mask(m)
            if c.mean() >= min_fill and not _touches_edge(c):
                out.append(c)
        tries += 1
    if len(out) < n:
        log.warning("mask model produced only %s usable masks of %s", len(out), n)
    return np.stack(out[:n]) if out else np.zeros((0, size, size), bool)


def _touches_edge(m: np.ndarray) -> bool:
    return bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


#: mask smoothing (model pixels) of bundles that do not record their own (``cells.mask_smooth``)
DEFAULT_SMOOTH = 1.25
#: the smoothings ``learn`` tries (:func:`fit_smoothing`)
SMOOTH_CANDIDATES = (0.5, 0.75, 1.0, 1.25, 1.5)


def resize_mask(m: np.ndarray, side: int, smooth: float = DEFAULT_SMOOTH) -> np.ndarray:
    """Resize a normalised mask to ``side`` pixels (bilinear, Gaussian smoothing over ``smooth``
    model pixels, threshold 0.5), then trim it."""
    from scipy.ndimage import gaussian_filter

    t = torch.from_numpy(m.astype(np.float32))[None, None]
    up = torch.nn.functional.interpolate(
        t, size=(side, side), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    # smooth the staircase of the small mask's pixels: too little leaves ragged outlines (low
    # solidity), too much makes cells rounder than real. How much depends on the data (built-in:
    # solidity W1 2.8x real-to-real at 0.6 px, 1.3x at 1.25; GOWT1: 1.2x at 0.6, 1.7x at 1.25;
    # benchmarks/shapes_2d.py), so learn fits it per bundle (fit_smoothing)
    sigma = smooth * side / m.shape[0]
    if sigma > 0.5:
        up = gaussian_filter(up, sigma, mode="constant")
    r = clean_mask(up > 0.5)
    ys, xs = np.nonzero(r)
    if ys.size == 0:
        return np.ones((1, 1), bool)
    return r[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def fit_smoothing(
    masks: np.ndarray,
    sides: np.ndarray,
    solidity: np.ndarray,
    candidates: Sequence[float] = SMOOTH_CANDIDATES,
) -> float:
    """The smoothing (model pixels) whose resized ``masks`` (at ``sides``) have the solidity
    distribution closest (Wasserstein-1) to the real cells' ``solidity``."""
    from scipy.stats import wasserstein_distance
    from skimage.measure import regionprops

    real = np.asarray(solidity, np.float64)
    real = real[np.isfinite(real)]
    if real.size == 0 or len(masks) == 0:
        return DEFAULT_SMOOTH
    best, best_d = DEFAULT_SMOOTH, np.inf
    for smooth in candidates:
        sol = [
            regionprops(resize_mask(m, int(side), smooth).astype(np.uint8))[0].solidity
            for m, side in zip(masks, sides, strict=True)
        ]
        d = wasserstein_distance(sol, real)
        if d < best_d - 1e-12:
            best, best_d = float(smooth), d
    return best


def fit_bundle_smoothing(bundle: Any, solidity: np.ndarray, n: int = 96, seed: int = 0) -> float:
    """:func:`fit_smoothing` for a 2D bundle's mask model: ``n`` masks drawn as synthesis draws
    them (its sampler and steps, sizes from its training cells' areas), seeded."""
    cfg = bundle.mask_cfg
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        masks = sample_masks(
            bundle.mask_unet,
            bundle.mask_sampler(),
            n,
            size=cfg.sample_size,
            steps=cfg.sampling_steps,
            generator=gen,
            device=next(bundle.mask_unet.parameters()).device,
        )
    rng = np.random.default_rng(seed)
    if bundle.areas is not None:
        sides = sides_for_areas(masks, bundle.areas, len(masks), rng)
    else:
        sides = draw_sides(bundle.scales, bundle.crop_size, len(masks), rng)
    return fit_smoothing(masks, sides, solidity)


def draw_sides(
    scales: np.ndarray, crop_size: int, n: int, rng: np.random.Generator, size_factor: float = 1.0
) -> np.ndarray:
    """Crop sides in pixels for ``n`` new cells, drawn from the atlas' observed cell scales."""
    scales = np.asarray(scales, dtype=np.float64)
    scales = scales[np.isfinite(scales) & (scales > 0)]
    if scales.size == 0:
        raise ValueError("no cell sizes to draw from")
    pick = rng.choice(scales, size=n, replace=True)
    jitter = rng.normal(1.0, 0.05, size=n)
    return np.maximum(np.rint(pick * jitter * crop_size * size_factor), 4).astype(int)


def sides_for_areas(
    masks: np.ndarray, areas: np.ndarray, n: int, rng: np.random.Generator, size_factor: float = 1.0
) -> np.ndarray:
    """Crop sides (px) that give each normalised mask an area drawn from the atlas' cell areas.

    Sizing by area rather than by bounding box keeps the area distribution of the real cells
    even when a few real labels are fragmented (a far-away fragment inflates a bounding box).
    """
    areas = np.asarray(areas, dtype=np.float64)
    areas = areas[np.isfinite(areas) & (areas > 0)]
    if areas.size == 0:
        raise ValueError("no cell areas to draw from")
    target = rng.choice(areas, size=n, replace=True) * rng.normal(1.0, 0.05, size=n) ** 2
    target *= size_factor**2
    own = np.maximum(masks.reshape(len(masks), -1).sum(1), 1)  # area at the model's size
    side = masks.shape[-1] * np.sqrt(target / own)
    return np.maximum(np.rint(side), 4).astype(int)
