"""Stage 5: a mask-conditioned diffusion model that paints cells' look onto a label image.

The condition is three channels derived from the label image (paper 003 concatenates the mask to
the noisy input; NuDiff adds a distance map):

* foreground (1 inside cells, -1 outside),
* cell boundaries (1 on the outermost pixels of each cell, so touching cells stay apart),
* distance to the cell's boundary, normalised per cell to [0, 1] (the nucleus' "structure"),
* (bundles learnt since December 2026) each cell's mean brightness, filled inside its mask, and the
  frame's background level outside, in the model's intensity units. A dim or a bright nucleus is
  then painted as the real ones are, texture included, rather than scaled after painting.
  Synthesis draws the values of one real frame (its background and its cells' brightness), so a
  synthetic frame keeps one exposure and the real frames' cell-to-cell spread.

The UNet has no attention, so it is fully convolutional: trained on small random tiles of the
real images, it paints a canvas of any size in one pass, or on overlapping tiles that agree at
every step for canvases larger than ``max_side``. Sampling is DDIM with eta = 0; output values
are mapped back to the data set's dtype with its own intensity statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cellsynth.atlas import IntensityStats, to_dtype
from cellsynth.diffusion.core import DiffusionConfig, correlated_noise, ddim_sample, to_numpy
from cellsynth.errors import CellsynthInputError

N_COND = 3  # mask-derived channels; a brightness-conditioned model has one more


def texture_config(
    widths: tuple[int, ...] = (32, 48, 64), tile: int = 64, brightness: bool = False
) -> DiffusionConfig:
    return DiffusionConfig(
        sample_size=tile,
        in_channels=1,
        cond_channels=N_COND + int(brightness),
        out_channels=1,
        widths=widths,
        layers_per_block=1,
        attention=(False,) * len(widths),
        sampling_steps=10,
    )


def brightness_conditioned(cfg: DiffusionConfig) -> bool:
    """Whether a texture model takes the per-cell brightness channel."""
    return cfg.cond_channels > N_COND


@dataclass
class FrameBrightness:
    """One real frame's (or slice's) background level and its cells' mean brightness (raw
    intensity units): what a brightness-conditioned texture model is told to paint; and the
    frame's own camera noise and uneven illumination relative to its cells' contrast
    (:func:`cellsynth.metrics.background_stats`), which a synthetic frame drawn with this
    frame's exposure is given (a dim frame's noise is a larger part of its contrast)."""

    background: float
    cells: list[float]
    noise: float | None = None
    illumination: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"background": self.background, "cells": self.cells}
        if self.noise is not None:
            d.update(noise=self.noise, illumination=self.illumination)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameBrightness:
        def num(key: str) -> float | None:
            v = d.get(key)
            return float(v) if isinstance(v, int | float) and np.isfinite(v) else None

        return cls(
            float(d["background"]),
            [float(v) for v in d["cells"]],
            num("noise"),
            num("illumination"),
        )

    def background_target(self) -> dict[str, float] | None:
        """This frame's noise and illumination, as ``match_background`` takes them."""
        if self.noise is None or self.illumination is None:
            return None
        return {"background_noise": self.noise, "illumination": self.illumination}


def measure_brightness(image: np.ndarray, labels: np.ndarray) -> tuple[float, dict[int, float]]:
    """Background level (median outside the cells and a 3 px rim) and each cell's mean."""
    from scipy import ndimage

    from cellsynth.metrics.texture import background_pixels

    img = np.asarray(image, np.float64)
    lab = np.asarray(labels)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    outside = background_pixels(img, lab)
    background = float(np.median(outside)) if outside.size else float(np.min(img))
    means = ndimage.mean(img, lab, ids) if ids.size else []
    return background, {int(i): float(m) for i, m in zip(ids, means, strict=True)}


def frame_brightness(image: np.ndarray, labels: np.ndarray) -> FrameBrightness:
    from cellsynth.metrics import background_stats

    background, cells = measure_brightness(image, labels)
    stats = background_stats(image, labels)

    def rounded(v: float) -> float | None:
        return round(float(v), 5) if np.isfinite(v) else None

    return FrameBrightness(
        round(background, 4),
        [round(v, 4) for v in cells.values()],
        rounded(stats["background_noise"]),
        rounded(stats["illumination"]),
    )


def draw_frame_brightness(
    labels: np.ndarray, frames: Sequence[FrameBrightness], rng: np.random.Generator
) -> tuple[np.ndarray, float, FrameBrightness]:
    """A lookup table label -> mean brightness, a background level, and the real frame they
    come from, for a synthetic frame.

    One real frame is drawn (its exposure), then each cell's brightness from that frame's
    cells, so the frame keeps the real frames' cell-to-cell spread."""
    usable = [f for f in frames if f.cells]
    lut = np.zeros(int(np.max(labels, initial=0)) + 1, np.float64)
    if not usable:
        raise CellsynthInputError("the bundle records no cell brightness to condition on")
    frame = usable[int(rng.integers(len(usable)))]
    lut[1:] = rng.choice(np.asarray(frame.cells), size=lut.size - 1, replace=True)
    lut[0] = frame.background
    return lut, frame.background, frame


def draw_brightness(
    labels: np.ndarray, frames: Sequence[FrameBrightness], rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """:func:`draw_frame_brightness` without the frame: what :func:`paint` takes."""
    lut, background, _ = draw_frame_brightness(labels, frames, rng)
    return lut, background


def model_units(raw: np.ndarray, stats: IntensityStats) -> np.ndarray:
    """Raw intensities in the texture model's units: the data set's range to [-1, 1], clipped
    to [-1.5, 1.5] (what it trains on, is conditioned on and starts from)."""
    return np.clip(stats.normalise(raw) * 2 - 1, -1.5, 1.5)


def _brightness_channel(
    labels: np.ndarray, lut: np.ndarray, background: float, stats: IntensityStats
) -> np.ndarray:
    """The brightness channel in model units: each cell's value inside it, background outside."""
    values = model_units(np.asarray(lut, np.float64), stats)
    bg = float(model_units(np.asarray([background], np.float64), stats)[0])
    chan = values[labels].astype(np.float32)
    chan[labels == 0] = bg
    return chan


def label_condition(labels: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 condition channels in [-1, 1] for a 2D label image."""
    from scipy import ndimage
    from skimage.segmentation import find_boundaries, relabel_sequential

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise CellsynthInputError(f"texture condition needs a 2D label image, got {labels.shape}")
    fg = labels > 0
    boundary = find_boundaries(labels, mode="inner") & fg
    dist = ndimage.distance_transform_edt(fg & ~boundary)
    norm = np.zeros(labels.shape, np.float32)
    if fg.any():
        seq, _, _ = relabel_sequential(labels)
        peak = ndimage.maximum(dist, seq, index=np.arange(1, seq.max() + 1))
        peak = np.concatenate([[1.0], np.maximum(np.asarray(peak, np.float64), 1.0)])
        norm = (dist / peak[seq]).astype(np.float32)
    return np.stack(
        [
            fg.astype(np.float32) * 2 - 1,
            boundary.astype(np.float32) * 2 - 1,
            norm * 2 - 1,
        ]
    ).astype(np.float32)


class TextureTiles:
    """Random training tiles of (normalised image, condition) from real 2D images/slices."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        stats: IntensityStats,
        tile: int,
        *,
        brightness: bool = False,
    ) -> None:
        """With ``brightness``, the condition has each cell's own mean brightness and the
        image's background level (:func:`measure_brightness`) as a fourth channel."""
        self.tile = tile
        self.x: list[torch.Tensor] = []
        self.c: list[torch.Tensor] = []
        self.weights: list[float] = []
        for img, lab in zip(images, labels, strict=True):
            if min(img.shape) < tile:
                img, lab = _pad_to(img, tile, "reflect"), _pad_to(lab, tile, "constant")
            x = model_units(img, stats)
            self.x.append(torch.from_numpy(x[None].astype(np.float32)))
            cond = label_condition(lab)
            if brightness:
                background, cells = measure_brightness(img, lab)
                lut = np.full(int(lab.max()) + 1, background)
                for i, v in cells.items():
                    lut[i] = v
                chan = _brightness_channel(lab, lut, background, stats)
                cond = np.concatenate([cond, chan[None]])
            self.c.append(torch.from_numpy(cond))
            self.weights.append(float(img.size))
        if not self.x:
            raise CellsynthInputError("no images to train the texture model on")
        w = np.asarray(self.weights)
        self.p = torch.from_numpy(w / w.sum())

    def batch(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tile
        idx = torch.multinomial(self.p, batch_size, replacement=True, generator=generator)
        xs, cs = [], []
        for i in idx.tolist():
            x, c = self.x[i], self.c[i]
            h, w = x.shape[-2:]
            y0 = int(torch.randint(0, h - t + 1, (1,), generator=generator))
            x0 = int(torch.randint(0, w - t + 1, (1,), generator=generator))
            xy = torch.cat([x[:, y0 : y0 + t, x0 : x0 + t], c[:, y0 : y0 + t, x0 : x0 + t]])
            k = int(torch.randint(0, 4, (1,), generator=generator))
            xy = torch.rot90(xy, k, dims=(-2, -1))
            if torch.rand(1, generator=generator) < 0.5:
                xy = xy.flip(-1)
            xs.append(xy[:1])
            cs.append(xy[1:])
        return torch.stack(xs), torch.stack(cs)


def _pad_to(a: np.ndarray, size: int, mode: str) -> np.ndarray:
    pads = [(0, max(0, size - s)) for s in a.shape]
    return np.pad(a, pads, mode=mode)


@torch.inference_mode()
def paint(
    unet: Any,
    sampler: Any,
    labels: np.ndarray,
    stats: IntensityStats,
    *,
    cfg: DiffusionConfig,
    steps: int,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    rho: float | None = None,
    device: Any = "cpu",
    max_side: int = 1024,
    batch_size: int = 2,  # larger batches of big slices run slower on CPU (cache)
    brightness: tuple[np.ndarray, float] | None = None,
    init: np.ndarray | None = None,
    strength: float = 1.0,
    strength_map: np.ndarray | None = None,
) -> np.ndarray:
    """Synthesise the intensity image of a 2D label image, or of each slice of a 3D one.

    ``init`` (raw intensity units, the labels' shape) is a starting image the model repaints
    from ``strength`` of the way along its schedule (:mod:`cellsynth.exemplars`); by default
    it paints from pure noise. ``strength_map`` (the labels' shape, values in [0, strength])
    repaints some pixels less (:func:`cellsynth.exemplars.strength_map`: the cells' edges).

    ``noise`` (S, 1, H, W) sets the initial noise; by default it is drawn from ``generator``,
    independent per slice, or, with ``rho``, correlated across the slices of a stack
    (paper 001, eq. 2). A brightness-conditioned model needs ``brightness``: a lookup table
    label -> mean brightness and the background level, raw units (:func:`draw_brightness`).
    """
    lab = np.asarray(labels)
    stack = lab if lab.ndim == 3 else lab[None]
    s, h, w = stack.shape
    m = cfg.downsampling
    ph, pw = (-h) % m, (-w) % m
    if brightness_conditioned(cfg) != (brightness is not None):
        raise CellsynthInputError(
            "this texture model "
            + ("needs" if brightness_conditioned(cfg) else "takes no")
            + " per-cell brightness"
        )
    cond = np.stack([label_condition(sl) for sl in stack])
    if brightness is not None:
        lut, background = brightness
        chans = [_brightness_channel(sl, lut, background, stats) for sl in stack]
        cond = np.concatenate([cond, np.stack(chans)[:, None]], axis=1)
    if ph or pw:
        cond = np.pad(cond, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
    if noise is None and rho is not None:
        noise = correlated_noise(s, (1, h + ph, w + pw), rho, generator)
    elif noise is None:
        noise = torch.randn((s, 1, h + ph, w + pw), generator=generator)
    elif noise.shape[-2:] != (h + ph, w + pw):
        noise = torch.nn.functional.pad(noise, (0, pw, 0, ph))

    def per_slice(a: np.ndarray, what: str) -> torch.Tensor:
        """An image of the labels' shape as the model's (S, 1, H, W) batch, padded."""
        if np.shape(a) != lab.shape:
            raise CellsynthInputError(
                f"the {what} {np.shape(a)} and the labels {lab.shape} differ in shape"
            )
        b = np.asarray(a, np.float32).reshape(s, 1, h, w)
        if ph or pw:
            b = np.pad(b, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
        return torch.from_numpy(b).to(device)

    start = held = None
    if init is not None and strength < 1.0:
        start = per_slice(model_units(np.asarray(init, np.float64), stats), "starting image")
        if strength_map is not None:
            held = per_slice(np.clip(strength_map, 0.0, strength), "strength map")
    c = torch.from_numpy(cond).to(device)
    tile = max_side if max(h + ph, w + pw) > max_side else None
    x = ddim_sample(
        unet,
        sampler,
        noise.to(device),
        c,
        steps=steps,
        tile=tile,
        overlap=min(64, max_side // 4),
        batch_size=batch_size,
        init=start,
        strength=strength if start is not None else 1.0,
        strength_map=held,
    )
    out = to_numpy(x)[:, 0, :h, :w]
    img = stats.denormalise((np.clip(out, -1.5, 1.5) + 1.0) / 2.0)
    return img if lab.ndim == 3 else img[0]


def match_cell_brightness(
    image: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray,
    background: float,
    rng: np.random.Generator,
    *,
    sigma: float = 1.5,
    max_factor: float = 8.0,
    spread: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Give each cell a mean brightness drawn from ``targets`` (the training cells' means).

    The texture model is conditioned on the masks only, so it paints every cell at about the
    average brightness; real cells range from dim to saturated. Each cell's contrast above the
    ``background`` is scaled so that its mean becomes a value drawn from ``targets``; the
    per-cell factors are smoothed in-plane (``sigma`` px) so boundaries carry no step. The
    texture inside a cell is kept (scaled). Returns the image (same dtype) and the factors.

    ``targets`` pools the cells of many frames, each with its own exposure, so independent
    draws mix them in one frame. With ``spread`` (the training frames' median coefficient of
    variation of cell contrasts) the frame gets one typical contrast (the median of as many
    draws as it has cells) and each cell's contrast deviates from it by ``spread`` times a
    standardised draw from the pool, so the shape of the pool is kept within a frame.
    """
    from scipy import ndimage

    lab = np.asarray(labels)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    targets = np.asarray(targets, dtype=np.float64)
    targets = targets[np.isfinite(targets)]
    if ids.size == 0 or targets.size == 0:
        return image, np.ones(0)
    img = np.asarray(image, dtype=np.float64)
    means = np.asarray(ndimage.mean(img, lab, ids), dtype=np.float64)
    want = rng.choice(targets, size=ids.size, replace=True)
    pool = targets - background
    if spread is not None and np.isfinite(spread) and spread > 0 and pool.std() > 0:
        anchor = float(np.median(pool[rng.integers(0, pool.size, ids.size)]))
        z = (want - background - pool.mean()) / pool.std()
        want = background + anchor * np.maximum(1.0 + spread * z, 0.1)
    contrast = means - background
    ok = contrast > 1e-6 * max(abs(background), 1.0)
    factors = np.ones(ids.size)
    factors[ok] = np.clip((want[ok] - background) / contrast[ok], 1.0 / max_factor, max_factor)
    lut = np.ones(int(lab.max()) + 1)
    lut[ids] = factors
    # each cell's factor also covers a rim of 2 sigma around it (its glow scales with it); the
    # map is then smoothed in-plane, so a cell keeps its own factor up to its boundary
    slices = lab.reshape(-1, *lab.shape[-2:])
    fmap = np.stack([_grown(sl, lut, 2 * sigma) for sl in slices]).reshape(lab.shape)
    if sigma > 0:
        fmap = ndimage.gaussian_filter(fmap, (0,) * (lab.ndim - 2) + (sigma, sigma))
    out = background + (img - background) * fmap
    return to_dtype(out, np.asarray(image).dtype), factors


def _grown(labels2d: np.ndarray, lut: np.ndarray, radius: float) -> np.ndarray:
    """``lut[label]`` per pixel, background pixels within ``radius`` taking the nearest cell's."""
    from skimage.segmentation import expand_labels

    grown = expand_labels(labels2d, distance=radius) if radius > 0 else labels2d
    return np.where(grown > 0, lut[grown], 1.0)


def match_background(
    image: np.ndarray,
    labels: np.ndarray,
    target: dict[str, float],
    rng: np.random.Generator,
    *,
    noise_in_cells: bool = False,
) -> np.ndarray:
    """Add the camera noise and uneven illumination the texture model leaves out.

    ``target`` holds the training images' ``background_noise`` and ``illumination`` (median of
    :func:`cellsynth.metrics.background_stats`, relative to the cells' contrast). What the
    painted image already has is measured the same way, and only the missing part is added (in
    quadrature): white noise over the whole image, and a smooth random field (Gaussian-filtered
    noise at twice the median cell diameter) for the illumination; their amplitudes are
    corrected twice by measuring the result (the measure sees them through its filters and the
    dtype's rounding). The white noise goes on the background only (fading over 1 px at the
    cells' edges), unless ``noise_in_cells``: inside the cells the texture model paints their
    own grain, and noise added on top widens the cells' texture beyond the real cells'.
    2D only; same dtype back.
    """
    from scipy import ndimage

    from cellsynth.metrics import background_stats

    img = np.asarray(image, np.float64)
    lab = np.asarray(labels)
    if img.ndim != 2 or not lab.any():
        return image
    have = background_stats(img, lab)
    ids, areas = np.unique(lab[lab > 0], return_counts=True)
    bg = ndimage.binary_dilation(lab > 0, iterations=3)
    c = float(np.median(ndimage.mean(img, lab, ids)) - np.median(img[~bg]))
    if not c > 0:
        return image
    diam = 2 * np.sqrt(np.median(areas) / np.pi)
    white = rng.normal(size=img.shape)
    if not noise_in_cells:
        white *= ndimage.gaussian_filter((lab == 0).astype(np.float64), 1.0)
    field = ndimage.gaussian_filter(rng.normal(size=img.shape), 2 * diam, mode="wrap")
    field -= np.median(field)  # a variation around the painted level, not an offset: on a
    # canvas a few diameters wide the filtered field is nearly flat, and scaling it to unit
    # spread would blow its mean up into a uniform shift of the whole image
    field /= 1.4826 * np.median(np.abs(field)) + 1e-12
    keys = ("background_noise", "illumination")
    amp = {k: _missing(target.get(k), have[k]) * c for k in keys}
    out = image
    first = dict(amp)
    for _ in range(3):  # the measure sees the added noise through its filters and the rounding
        out = to_dtype(img + amp[keys[0]] * white + amp[keys[1]] * field, np.asarray(image).dtype)
        got = background_stats(out, lab)
        for k in keys:
            extra = _missing(got[k], have[k])
            want = _missing(target.get(k), have[k])
            if amp[k] > 0 and extra > 0:
                # bounded: on a dark background the dtype's floor clips the field, and the
                # measure would ask for ever more of it
                amp[k] = min(amp[k] * float(np.clip(want / extra, 0.5, 2.0)), 2.0 * first[k])
    return out


def _missing(want: float | None, have: float) -> float:
    """The part of ``want`` that ``have`` lacks, for independent sources (in quadrature)."""
    if want is None or not np.isfinite(want) or not np.isfinite(have):
        return 0.0
    return float(np.sqrt(max(want**2 - have**2, 0.0)))
