"""The synthesis cascade, and writing dataset folders.

2D: masks -> population -> texture. 3D (``size = (Z, Y, X)``): 2D masks -> multiview silhouettes
-> NeuS volumes at the voxel size -> 3D population -> each z-slice textured with the 2D texture
model from correlated initial noise (paper 001, eq. 2), so the slices of a stack agree.

:class:`Synthesizer` draws one fully annotated pair at a time; :func:`synthesize` yields progress
while it writes ``n`` pairs to a dataset folder, recording the bundle, the seed and every
parameter of each sample in ``dataset.json``. The same seed gives the same pair.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth import exemplars
from cellsynth.bundle import MAX_BLUR, GeneratorBundle
from cellsynth.device import launched_processes, seeded, select_device
from cellsynth.errors import CellsynthInputError
from cellsynth.io import DatasetWriter
from cellsynth.masks import (
    DEFAULT_SMOOTH,
    draw_sides,
    resize_mask,
    sample_masks,
    sides_for_areas,
)
from cellsynth.population import (
    DEFAULT_CLUSTER_BAND,
    DEFAULT_CLUSTER_PROB,
    MIN_CUT_PIXELS,
    Population,
    cells_for_canvas,
    divide,
    place_cells,
    touch_prob,
)
from cellsynth.texture import (
    FrameBrightness,
    brightness_conditioned,
    draw_frame_brightness,
    match_background,
    match_cell_brightness,
    paint,
)

log = logging.getLogger(__name__)

#: slice noise correlation for bundles learnt without 3D data (corr = rho^2 / (1 + rho^2) = 0.8)
DEFAULT_RHO = 2.0
#: peak bytes of one sample, to refuse canvases beyond the free memory before allocating: per
#: canvas voxel (labels, occupancy, condition, noise, image), and per pixel the texture model
#: paints at once (its activations; a tile of at most 1024², two slices at a time in 3D).
#: Measured: peak RSS 0.55 GB at 256², 1.60 GB at 1024² (2D, built-in bundle) = 1.07 kB/px.
BYTES_PER_VOXEL = 64
BYTES_PER_PAINTED_PIXEL = 1100


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (None when the system does not say)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


#: the optical blurs (Gaussian sigma, px) :meth:`Synthesizer.fit_blur` tries
BLUR_SIGMAS = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0)
#: the boundary softenings (Gaussian sigma, px) :meth:`Synthesizer.fit_blur` tries with them
EDGE_BLUR_SIGMAS = (0.0, 0.4, 0.5, 0.6, 0.75, 1.0)


def _in_dtype_of(image: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out`` (float) in ``image``'s dtype: integers rounded and clipped to its range."""
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(image.dtype)


def optical_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` seen through a Gaussian point-spread function of ``sigma`` px (2D), in its
    own dtype (integers rounded and clipped); sigma 0 gives it back."""
    from scipy import ndimage

    if not sigma > 0:
        return image
    out = ndimage.gaussian_filter(np.asarray(image, np.float64), sigma)
    return _in_dtype_of(image, out)


def edge_blur(image: np.ndarray, labels: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` with its cells' boundaries softened: near each boundary (between a cell and
    the background or another cell) the image blurred by ``sigma`` px, blended in with a
    Gaussian weight of the distance to the boundary (1 on it, 0.14 at 2 sigma); elsewhere
    unchanged. Real nuclei fade into the background over a pixel or two, the texture
    model's stop at the mask edge; a blur of the whole image would also smooth the grain
    inside them. In ``image``'s dtype; sigma 0 gives it back."""
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    if not sigma > 0:
        return image
    edge = find_boundaries(labels, mode="thick")
    if not edge.any():
        return image
    weight = np.exp(-0.5 * (ndimage.distance_transform_edt(~edge) / sigma) ** 2)
    blurred = ndimage.gaussian_filter(np.asarray(image, np.float64), sigma)
    out = image + weight * (blurred - image)
    return _in_dtype_of(image, out)


@dataclass
class SynthesisParams:
    size: tuple[int, ...] = (256, 256)
    cells: int | None = None  # None: drawn from the training data's density
    density_factor: float = 1.0  # multiply the training data's density (when cells is None)
    # probability that a cell starts next to others (None: the bundle's, fitted to its training
    # frames' nearest-neighbour distances, else 0.3)
    cluster_prob: float | None = None
    touching: float | None = None  # fraction of cells touching another (None: the data's)
    # fraction of cells that are daughters of a recent division: touching pairs of sisters of
    # one size, shape and brightness (:func:`cellsynth.population.divide`); 0: none
    divisions: float = 0.0
    steps: int | None = None  # texture DDIM steps (None: the bundle's default)
    mask_steps: int | None = None
    seed: int = 0
    size_factor: float = 1.0  # scale the cell sizes drawn from the training data
    rho: float | None = None  # 3D: slice noise correlation (None: the bundle's, from its data)
    voxel_size: tuple[float, ...] | None = None  # 3D: (z, y, x); None: the bundle's
    # "data": each cell's mean brightness drawn from the training cells, and the training
    # images' camera noise and uneven illumination added (bundles that record them);
    # "model": as the texture model paints it
    brightness: str = "data"
    # exemplar-guided texture (bundles holding exemplar cells; 3D too): the fraction of the
    # diffusion schedule the texture model repaints over real training cells warped onto the
    # new masks; 1 = the model alone, from noise; None = the bundle's default
    exemplar_strength: float | None = None
    # 2D: Gaussian sigma (px) of the optical blur put on the painted image, before the camera
    # noise; None: the bundle's, fitted to its training cells' boundary gradient, else 0
    blur: float | None = None
    # 2D: Gaussian sigma (px) of the softening of the cells' boundaries (:func:`edge_blur`),
    # before the optical blur; None: the bundle's, fitted with it, else 0
    edge_blur: float | None = None

    @property
    def is_3d(self) -> bool:
        return len(self.size) == 3

    def validate(self) -> None:
        if len(self.size) not in (2, 3):
            raise CellsynthInputError(f"--size needs H W (2D) or Z Y X (3D), got {list(self.size)}")
        if any(s < 16 for s in self.size[-2:]) or (self.is_3d and self.size[0] < 1):
            raise CellsynthInputError(
                f"canvas size {list(self.size)} is too small (min 16 px in Y and X, 1 slice)"
            )
        if self.rho is not None and (self.rho < 0 or not np.isfinite(self.rho)):
            raise CellsynthInputError(f"--rho must be >= 0, got {self.rho}")
        if self.voxel_size is not None:
            if len(self.voxel_size) != 3 or any(not v > 0 for v in self.voxel_size):
                raise CellsynthInputError(
                    f"--voxel-size needs three positive numbers Z Y X, got {self.voxel_size}"
                )
        if self.brightness not in ("data", "model"):
            raise CellsynthInputError(
                f"--brightness must be 'data' or 'model', got {self.brightness!r}"
            )
        if not (self.density_factor > 0 and np.isfinite(self.density_factor)):
            raise CellsynthInputError(f"--density-factor must be > 0, got {self.density_factor}")
        if self.cells is not None and self.cells < 0:
            raise CellsynthInputError(f"--cells must be >= 0, got {self.cells}")
        if self.touching is not None and not 0.0 <= self.touching <= 1.0:
            raise CellsynthInputError(f"--touching must be between 0 and 1, got {self.touching}")
        if not 0.0 <= self.divisions <= 1.0:
            raise CellsynthInputError(f"--divisions must be between 0 and 1, got {self.divisions}")
        if self.cluster_prob is not None and not 0.0 <= self.cluster_prob <= 1.0:
            raise CellsynthInputError(
                f"--cluster-prob must be between 0 and 1, got {self.cluster_prob}"
            )
        if self.steps is not None and self.steps < 1:
            raise CellsynthInputError(f"--steps must be >= 1, got {self.steps}")
        if self.exemplar_strength is not None and not 0.0 < self.exemplar_strength <= 1.0:
            raise CellsynthInputError(
                f"--exemplar-strength must be in (0, 1], got {self.exemplar_strength}"
            )
        for name in ("blur", "edge_blur"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= MAX_BLUR:
                raise CellsynthInputError(
                    f"--{name.replace('_', '-')} must be between 0 and {MAX_BLUR:g} px, got {value}"
                )


@dataclass
class SyntheticPair:
    image: np.ndarray
    labels: np.ndarray
    table: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)


class Synthesizer:
    """Draw synthetic image/label pairs from a :class:`GeneratorBundle`."""

    def __init__(
        self, bundle: GeneratorBundle | str | Path | None = None, device: str | Any = "auto"
    ) -> None:
        self.device = select_device(device)
        if not isinstance(bundle, GeneratorBundle):
            bundle = GeneratorBundle.load(bundle, device=self.device)
        self.bundle = bundle.to(self.device)
        self.mask_sampler = bundle.mask_sampler()
        self.texture_sampler = bundle.texture_sampler()
        self._multiview: Any = None

    def brightness(
        self, image: np.ndarray, labels: np.ndarray, params: SynthesisParams
    ) -> tuple[np.ndarray, str]:
        """Per-cell brightness drawn from the training cells (``params.brightness == "data"``)."""
        targets = self.bundle.cell_intensities
        if params.brightness != "data" or targets is None:
            return image, "model"
        rng = np.random.default_rng(np.random.SeedSequence(params.seed).spawn(1)[0])
        out, _ = match_cell_brightness(
            image, labels, targets, self.bundle.intensity.background_mean, rng
        )
        return out, "data"

    def drawn_brightness(
        self, labels: np.ndarray, params: SynthesisParams, sisters: np.ndarray | None = None
    ) -> tuple[np.ndarray, float, FrameBrightness] | None:
        """For a brightness-conditioned texture model: the brightness of each cell, the
        background level and the training frame they are drawn from (``None`` for older
        bundles). ``sisters`` (each label's sister's label, else 0; label 1 first) share the
        brightness of the first of the two."""
        if not brightness_conditioned(self.bundle.texture_cfg):
            return None
        rng = np.random.default_rng(np.random.SeedSequence(params.seed).spawn(3)[2])
        lut, background, frame = draw_frame_brightness(labels, self.bundle.brightness_frames, rng)
        if sisters is not None:
            for lab, sister in enumerate(np.asarray(sisters, np.int64), start=1):
                if lab < sister < lut.size:
                    lut[sister] = lut[lab]
        return lut, background, frame

    def painted(
        self,
        labels: np.ndarray,
        params: SynthesisParams,
        gen: torch.Generator,
        sisters: np.ndarray | None = None,
        **kw: Any,
    ) -> tuple[np.ndarray, str, FrameBrightness | None]:
        """The texture model's image of ``labels`` with the cells' brightness: as a condition
        of the model (4-channel texture models; ``sisters`` alike), else drawn after painting
        (--brightness data)."""
        b = self.bundle
        drawn = self.drawn_brightness(labels, params, sisters)
        strength = self.exemplar_strength(labels, params)
        if strength < 1.0:
            if drawn is not None:
                lut, background = drawn[0], drawn[1]
            else:  # a texture model without brightness: the exemplars' own brightness
                background = float(b.intensity.background_mean)
                lut = np.full(int(labels.max()) + 1, np.nan)
            rng = np.random.default_rng(np.random.SeedSequence(params.seed).spawn(4)[3])
            kw.update(
                init=exemplars.compose(labels, b.exemplars(), lut, background, rng),
                strength=strength,
                strength_map=exemplars.strength_map(labels, strength),
            )
        image = paint(
            b.texture_unet,
            self.texture_sampler,
            labels,
            b.intensity,
            cfg=b.texture_cfg,
            steps=params.steps or b.texture_cfg.sampling_steps,
            generator=gen,
            device=self.device,
            brightness=None if drawn is None else drawn[:2],
            **kw,
        )
        if drawn is not None:
            return image, "condition", drawn[2]
        return (*self.brightness(image, labels, params), None)

    def exemplar_strength(self, labels: np.ndarray, params: SynthesisParams) -> float:
        """How much of the schedule the texture model repaints: 1 (from noise) for bundles
        without exemplar cells (3D bundles learnt before December 2026 among them), else the
        parameter or the bundle's default."""
        if not self.bundle.exemplars():
            return 1.0
        if params.exemplar_strength is not None:
            return float(params.exemplar_strength)
        return float(self.bundle.meta.get("exemplar_strength", 1.0))

    def blur(self, params: SynthesisParams) -> float:
        """The optical blur of a 2D sample (sigma, px): the parameter, else the bundle's fitted
        one (:meth:`fit_blur`), else 0."""
        if params.blur is not None:
            return float(params.blur)
        return float((self.bundle.meta.get("optical_blur") or {}).get("sigma", 0.0))

    def edge_blur(self, params: SynthesisParams) -> float:
        """The boundary softening of a 2D sample (sigma, px): the parameter, else the bundle's
        fitted one (:meth:`fit_blur`), else 0."""
        if params.edge_blur is not None:
            return float(params.edge_blur)
        return float((self.bundle.meta.get("optical_blur") or {}).get("edge_sigma", 0.0))

    def fit_blur(
        self,
        images: list[np.ndarray],
        label_images: list[np.ndarray],
        *,
        sigmas: tuple[float, ...] = BLUR_SIGMAS,
        edge_sigmas: tuple[float, ...] = EDGE_BLUR_SIGMAS,
        frames: int = 8,
        min_cells: int = 80,
        max_size: int = 384,
        seed: int = 0,
    ) -> dict[str, Any] | None:
        """The optical blur and boundary softening that give synthetic cells the training
        cells' sharpness.

        Synthetic frames of the training frames' size (at most ``max_size`` px a side) are
        painted once, until they hold ``min_cells`` cells or ``frames`` frames are painted.
        The blurs are put on them before the camera noise is added and scored by how near
        their cells' ``edge_gradient`` and ``texture_spread`` (:func:`cellsynth.metrics.
        texture_table`, relative to each cell's contrast) are distributed to the training
        cells' (the sum of the two Wasserstein-1 distances, each over the training cells'
        standard deviation: the realism report's measure; on ties the least blur): first
        the optical blur of ``sigmas`` (:func:`optical_blur`: boundaries and the grain
        inside the cells together), then, with it, the softening of ``edge_sigmas``
        (:func:`edge_blur`: the boundaries only). The texture model paints HeLa boundaries
        and grain a little too sharp (an optical blur), GOWT1 boundaries too sharp with the
        grain right (a softening). None without visible training or synthetic cells.
        """
        from scipy.stats import wasserstein_distance

        from cellsynth.metrics import texture_table

        keys = ("edge_gradient", "texture_spread")

        def values(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
            tables = [texture_table(i, lab) for i, lab in pairs]
            out = []
            for k in keys:
                v = np.concatenate([t[k] for t in tables])
                out.append(v[np.isfinite(v)])
            return out

        real = values([(i, lab) for i, lab in zip(images, label_images, strict=True)])
        if any(v.size < 2 or not np.std(v) > 0 for v in real):
            return None
        drawn, cells = [], 0
        for k in range(frames):
            shape = np.shape(images[k % len(images)])
            params = SynthesisParams(
                size=tuple(min(int(n), max_size) for n in shape), seed=seed + k
            )
            rng, gen = seeded(params.seed)
            labels = self.population(params, rng, gen).labels
            painted, _, frame = self.painted(labels, params, gen)
            drawn.append((labels, painted, params, frame))
            cells += len(np.unique(labels)) - 1
            if cells >= min_cells:
                break
        w1s: dict[tuple[float, float], list[float]] = {}
        ratios: dict[tuple[float, float], list[float]] = {}

        def score(sigma: float, edge: float) -> tuple[float, float, float]:
            key = (float(sigma), float(edge))
            if key not in w1s:
                pairs = [
                    (self.background(optical_blur(edge_blur(im, lab, edge), sigma), lab, p, f), lab)
                    for lab, im, p, f in drawn
                ]
                syn = values(pairs)
                if any(v.size == 0 for v in syn):
                    return (math.inf, *key)
                w1s[key] = [
                    wasserstein_distance(s, r) / float(np.std(r))
                    for s, r in zip(syn, real, strict=True)
                ]
                ratios[key] = [
                    float(np.median(s) / np.median(r)) for s, r in zip(syn, real, strict=True)
                ]
            return (round(float(sum(w1s[key])), 6), *key)

        sigma = min(sigmas, key=lambda v: score(v, 0.0))
        edge = min(edge_sigmas, key=lambda v: score(sigma, v))
        if not w1s or not math.isfinite(score(sigma, edge)[0]):
            return None

        def table(d: dict, j: int) -> dict[str, float]:
            return {f"{s:g}/{e:g}": round(float(v[j]), 4) for (s, e), v in d.items()}

        return {
            "sigma": float(sigma),
            "edge_sigma": float(edge),
            "synthetic_cells": cells,
            **{f"{k}_real": float(np.median(real[j])) for j, k in enumerate(keys)},
            **{f"{k}_w1": table(w1s, j) for j, k in enumerate(keys)},
            **{f"{k}_ratio": table(ratios, j) for j, k in enumerate(keys)},
            "keys": "optical sigma / edge sigma; w1: Wasserstein-1 distance to the training "
            "cells / their standard deviation; ratio: median / the training cells' median",
        }

    def background(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        params: SynthesisParams,
        frame: FrameBrightness | None = None,
    ) -> np.ndarray:
        """Camera noise and uneven illumination of the training images (``brightness ==
        "data"``): the drawn training ``frame``'s own, else the bundle's medians (its optional
        ``background`` key). A 3D stack gets them over all its slices at once (3D bundles
        learnt before December 2026 painted stacks without them)."""
        own = frame.background_target() if frame is not None else None
        target = own or self.bundle.meta.get("background")
        if params.brightness != "data" or not target:
            return image
        rng = np.random.default_rng(np.random.SeedSequence(params.seed).spawn(2)[1])
        if np.ndim(image) == 3:  # a stack: its slices side by side, one noise level for all
            z = image.shape[0]
            out = match_background(np.hstack(image), np.hstack(labels), target, rng)
            return np.stack(np.hsplit(out, z))
        return match_background(image, labels, target, rng)

    def cell_masks(
        self,
        n: int,
        rng: np.random.Generator,
        gen: torch.Generator,
        steps: int | None = None,
        size_factor: float = 1.0,
    ) -> list[np.ndarray]:
        """``n`` single-cell masks at sizes drawn from the training data."""
        if n == 0:
            return []
        b = self.bundle
        norm = sample_masks(
            b.mask_unet,
            self.mask_sampler,
            n,
            size=b.mask_cfg.sample_size,
            steps=steps or b.mask_cfg.sampling_steps,
            generator=gen,
            device=self.device,
        )
        if b.areas is not None:
            sides = sides_for_areas(norm, b.areas, len(norm), rng, size_factor)
        else:  # bundles written before cell areas were recorded
            sides = draw_sides(b.scales, b.crop_size, len(norm), rng, size_factor)
        smooth = b.cells.mask_smooth
        smooth = DEFAULT_SMOOTH if smooth is None else smooth
        return [resize_mask(m, int(s), smooth) for m, s in zip(norm, sides, strict=True)]

    def expected_cells(self, params: SynthesisParams) -> int:
        """Cells in one sample: the parameter, else the expected count at the bundle's density
        times ``density_factor``, as :meth:`population` draws it (3D: at most one slice's worth,
        an upper estimate)."""
        if params.cells is not None:
            return int(params.cells)
        plane = float(np.prod([float(v) for v in params.size[-2:]]))
        return int(float(self.bundle.density) * params.density_factor * plane)

    def memory_estimate(self, params: SynthesisParams) -> int:
        """Bytes one sample of ``params`` needs at its peak, roughly (an upper estimate).

        Per canvas voxel: labels, the occupancy map, the texture model's condition, noise and
        image (float32) and their copies; per painted pixel: the texture model's activations;
        per cell: the sampled mask crop and its resized copies (3D: its volume).
        """
        voxels = float(np.prod([float(v) for v in params.size]))
        painted = min(float(np.prod([float(v) for v in params.size[-2:]])), 1024.0**2)
        painted *= 2 if params.is_3d and params.size[0] > 1 else 1
        crop = int(self.bundle.mask_cfg.sample_size)
        per_cell = 16 * crop * crop + (4 * crop**3 if params.is_3d else 0)
        return int(
            voxels * BYTES_PER_VOXEL
            + painted * BYTES_PER_PAINTED_PIXEL
            + self.expected_cells(params) * per_cell
        )

    def check_memory(self, params: SynthesisParams) -> None:
        """Refuse a sample that would need more memory than this machine has free."""
        need = self.memory_estimate(params)
        free = available_memory()
        if free is not None and need > free:
            raise CellsynthInputError(
                f"a canvas of {'×'.join(str(int(v)) for v in params.size)} px with "
                f"{self.expected_cells(params)} cells needs about {need / 2**30:.1f} GiB of "
                f"memory, more than the {free / 2**30:.1f} GiB available; use a smaller --size "
                "or fewer --cells"
            )

    def population(
        self, params: SynthesisParams, rng: np.random.Generator, gen: torch.Generator
    ) -> Population:
        """The labels of a 2D sample: masks drawn from the bundle, placed on the canvas."""
        b = self.bundle
        n = (
            params.cells
            if params.cells is not None
            else cells_for_canvas(b.density * params.density_factor, params.size, rng)
        )
        masks = self.cell_masks(n, rng, gen, params.mask_steps, params.size_factor)
        masks, sisters = divide(masks, params.divisions, rng)
        cluster_prob, band = self.clustering(params)
        return place_cells(
            masks,
            params.size,
            cluster_prob=cluster_prob,
            band=band,
            touch_prob=touch_prob(self.touching(params)),
            rng=rng,
            # cells cut by the border as often as in the training frames (older bundles: None,
            # half of each cell inside)
            edge_cut=self.bundle.cells.edge_cut,
            min_pixels=self.min_cut_area(),
            pairs=sisters,
        )

    def min_cut_area(self) -> int:
        """The smallest part of a cell cut by the canvas edge that a frame shows: the training
        images' (5th percentile of their cut cells' areas, as ``learn`` records it), else
        :data:`~cellsynth.population.MIN_CUT_PIXELS`."""
        v = self.bundle.cells.min_cut_area
        return max(MIN_CUT_PIXELS, round(v)) if v else MIN_CUT_PIXELS

    def clustering(self, params: SynthesisParams) -> tuple[float, float]:
        """Placement's clustering probability and band (cell radii beyond contact that a
        colony's next cell may lie): the parameter's probability, else the bundle's, fitted to
        its training frames' nearest-neighbour distances (``learn`` records both for 2D
        bundles), else :data:`~cellsynth.population.DEFAULT_CLUSTER_PROB`; the bundle's band,
        else :data:`~cellsynth.population.DEFAULT_CLUSTER_BAND`."""
        cells = self.bundle.cells
        prob = params.cluster_prob if params.cluster_prob is not None else cells.cluster_prob
        band = cells.cluster_band
        return (
            float(DEFAULT_CLUSTER_PROB if prob is None else prob),
            float(DEFAULT_CLUSTER_BAND if band is None else band),
        )

    def touching(self, params: SynthesisParams) -> float:
        """Fraction of cells to touch another: the parameter, else the training data's
        (bundles that record it), else 0."""
        if params.touching is not None:
            return float(params.touching)
        return float(self.bundle.meta["cells"].get("touching_fraction", 0.0))

    def sample(self, params: SynthesisParams) -> SyntheticPair:
        params.validate()
        self.check_memory(params)
        if params.is_3d:
            return self.sample_3d(params)
        b = self.bundle
        rng, gen = seeded(params.seed)
        t0 = time.perf_counter()
        pop = self.population(params, rng, gen)
        n = pop.requested
        t1 = t2 = time.perf_counter()
        image, brightness, frame = self.painted(pop.labels, params, gen, pop.table["sister"])
        blur, edge = self.blur(params), self.edge_blur(params)
        image = optical_blur(edge_blur(image, pop.labels, edge), blur)
        image = self.background(image, pop.labels, params, frame)
        t3 = time.perf_counter()
        log.debug("masks and population %.2fs, texture %.2fs", t1 - t0, t3 - t2)
        cluster_prob, cluster_band = self.clustering(params)
        info = asdict(params)
        info.update(
            size=list(params.size),
            cells_requested=n,
            cells_placed=pop.n_cells,
            cluster_prob=cluster_prob,
            cluster_band=cluster_band,
            bundle=str(b.path) if b.path else None,
            brightness=brightness,
            exemplar_strength=self.exemplar_strength(pop.labels, params),
            blur=blur,
            edge_blur=edge,
            timing={"population": t1 - t0, "texture": t3 - t2},
        )
        return SyntheticPair(image=image, labels=pop.labels, table=pop.table, params=info)

    # ------------------------------------------------------------------ 3D

    @property
    def multiview(self) -> Any:
        """The bundle's multiview model (``learn --3d``), else the built-in one."""
        if self._multiview is None:
            from cellsynth.shapes.multiview import MultiviewModel

            own = self.bundle.path / "multiview_model" if self.bundle.path else None
            path = own if own is not None and (own / "multiview.json").exists() else None
            self._multiview = MultiviewModel.load(path, device=self.device)
        return self._multiview

    def voxel_size_3d(self, params: SynthesisParams) -> tuple[float, float, float]:
        """(z, y, x) voxel size of a 3D sample: the parameter, the bundle's 3D one, or cubic."""
        if params.voxel_size is not None:
            return tuple(float(v) for v in params.voxel_size)  # type: ignore[return-value]
        vs = self.bundle.voxel_size
        if vs is not None and len(vs) == 3:
            return (float(vs[0]), float(vs[1]), float(vs[2]))
        xy = float(vs[-1]) if vs else 1.0
        return (xy, xy, xy)

    def output_voxel_size(self, params: SynthesisParams) -> list[float] | None:
        """Voxel size written with a sample: 3D as above, 2D the bundle's (y, x), if any."""
        if params.is_3d:
            return list(self.voxel_size_3d(params))
        return list(self.bundle.voxel_size or [])[-2:] or None

    def rho(self, params: SynthesisParams) -> float:
        if params.rho is not None:
            return float(params.rho)
        return float(self.bundle.meta.get("texture3d", {}).get("rho", DEFAULT_RHO))

    def cells_3d(
        self,
        size: tuple[int, ...],
        anisotropy: float,
        rng: np.random.Generator,
        size_factor: float,
        density_factor: float = 1.0,
    ) -> int:
        """Cell count for a stack: the bundle's 3D density, or its 2D density divided by the
        mean z extent of a cell in slices (a slice through a population of n cells per voxel
        whose cells span h slices shows n * h cells per pixel)."""
        b = self.bundle
        d3 = b.meta["cells"].get("density_3d")
        if d3 is None:
            areas = b.areas if b.areas is not None else np.array([np.pi * 10.0**2])
            diam = 2 * np.sqrt(np.mean(areas) / np.pi) * size_factor
            h = max(1.0, diam * self.multiview.prior.z_ratio / anisotropy)
            d3 = b.density / h
        return max(1, int(rng.poisson(float(d3) * density_factor * float(np.prod(size)))))

    def cell_volumes(
        self,
        masks: list[np.ndarray],
        anisotropy: float,
        rng: np.random.Generator,
        gen: torch.Generator,
    ) -> tuple[list[np.ndarray], dict[str, float]]:
        """3D volumes (ZYX, bool) of 2D cell masks: multiview silhouettes, then NeuS."""
        from cellsynth.shapes.multiview import normalise_masks, sample_views
        from cellsynth.shapes.neus import NeuSConfig, cell_volumes, fit_sdf

        mv = self.multiview
        t0 = time.perf_counter()
        top, px = normalise_masks(masks, mv.res)
        sil = sample_views(mv, top, generator=gen, device=self.device)
        t1 = time.perf_counter()
        grids = fit_sdf(sil, mv.views, NeuSConfig(), device=self.device)
        vols = cell_volumes(grids, px, anisotropy, rng, fallback=masks)
        t2 = time.perf_counter()
        return vols, {"views": t1 - t0, "neus": t2 - t1}

    def sample_3d(self, params: SynthesisParams) -> SyntheticPair:
        b = self.bundle
        rng, gen = seeded(params.seed)
        vs = self.voxel_size_3d(params)
        anisotropy = vs[0] / vs[2]
        size = tuple(int(v) for v in params.size)
        n = (
            params.cells
            if params.cells is not None
            else self.cells_3d(size, anisotropy, rng, params.size_factor, params.density_factor)
        )
        t0 = time.perf_counter()
        masks = self.cell_masks(n, rng, gen, params.mask_steps, params.size_factor)
        masks, sisters = divide(masks, params.divisions, rng)
        t1 = time.perf_counter()
        vols, timing = self.cell_volumes(list(masks), anisotropy, rng, gen)
        t2 = time.perf_counter()
        cluster_prob, cluster_band = self.clustering(params)
        equators = b.z_equators
        z_centres = equators / vs[0] if equators is not None else None
        pop = place_cells(
            vols,
            size,
            cluster_prob=cluster_prob,
            band=cluster_band,
            touch_prob=touch_prob(self.touching(params)),
            rng=rng,
            z_centres=z_centres,
            # cells widest near the first slice have half of themselves below it, as the
            # training cells do
            min_inside=0.5 if z_centres is None else 0.25,
            pairs=sisters,
        )
        t3 = time.perf_counter()
        rho = self.rho(params)
        image, brightness, frame = self.painted(
            pop.labels, params, gen, pop.table["sister"], rho=rho
        )
        image = self.background(image, pop.labels, params, frame)
        t4 = time.perf_counter()
        info = asdict(params)
        info.update(
            size=list(size),
            rho=rho,
            voxel_size=list(vs),
            cells_requested=n,
            cells_placed=pop.n_cells,
            cluster_prob=cluster_prob,
            cluster_band=cluster_band,
            bundle=str(b.path) if b.path else None,
            brightness=brightness,
            exemplar_strength=self.exemplar_strength(pop.labels, params),
            multiview_model=str(self.multiview.path) if self.multiview.path else None,
            timing={"masks": t1 - t0, **timing, "population": t3 - t2, "texture": t4 - t3},
        )
        return SyntheticPair(image=image, labels=pop.labels, table=pop.table, params=info)


def request_of(params: SynthesisParams, bundle: GeneratorBundle) -> dict[str, Any]:
    """What determines a pair: the bundle and every synthesis parameter (seed included).

    A record with the same request in the target's dataset.json means the pair is already
    there: an interrupted ``synthesize`` rerun completes the missing seeds only.
    """
    req = asdict(params)
    req["size"] = [int(v) for v in params.size]
    if params.voxel_size is not None:
        req["voxel_size"] = [float(v) for v in params.voxel_size]
    req["bundle"] = str(bundle.path) if bundle.path else None
    return json.loads(json.dumps(req))  # as it reads back from dataset.json


def process_share(n: int, device: str | Any = "auto") -> tuple[list[int], Any]:
    """The pair indices (of ``0 .. n-1``) this process draws, and accelerate's ``PartialState``.

    Alone: all of them, and no state. Under ``accelerate launch`` (``WORLD_SIZE`` > 1): a
    contiguous block per process, process 0 first (``PartialState.split_between_processes``);
    on the CPU (``device`` resolves to it) the processes meet over gloo, as in training.
    """
    if launched_processes() <= 1:
        return list(range(n)), None
    from datetime import timedelta

    from accelerate import PartialState

    # the processes meet only at the end, and a resumed run may leave one process far more
    # pairs than another: a week, not torch's 30 minutes (torchrun stops all if one fails)
    cpu = select_device(device).type == "cpu"
    state = PartialState(cpu=cpu, timeout=timedelta(days=7))
    with state.split_between_processes(list(range(n))) as mine:
        mine = list(mine)
    log.info(
        "process %d of %d draws %d of the %d pairs",
        state.process_index,
        state.num_processes,
        len(mine),
        n,
    )
    return mine, state


def synthesize(
    out: str | Path,
    n: int,
    params: SynthesisParams,
    *,
    bundle: GeneratorBundle | str | Path | None = None,
    device: str = "auto",
    prefix: str = "synth_",
) -> Iterator[tuple[int, int, str]]:
    """Write ``n`` pairs (seeds ``seed, seed+1, ...``) to a dataset folder; yields (i, n, name).

    Pair ``seed + i`` is named ``{prefix}{seed + i:04d}`` (the next free name when that one is
    taken). Seeds already in the folder with the same bundle and parameters are not drawn again,
    so rerunning an interrupted command completes it. ``out`` must be new, empty, or a synthetic
    data set of cellsynth's (:func:`cellsynth.outputs.check_synthetic_target`).

    Under ``accelerate launch`` the seeds are split over the processes (:func:`process_share`;
    ``device="auto"`` is each process's own GPU), every process writes its pairs into ``out``
    (the folder's lock and read-merge-write keep one complete ``dataset.json``), and the pairs
    are the same, byte for byte, as one process draws. Each process yields its own pairs; process
    0 then waits for the others and yields theirs too, so that it reports all ``n`` in order.
    """
    from cellsynth.outputs import check_synthetic_target, check_writable

    params.validate()
    if n < 1:
        raise CellsynthInputError(f"-n must be >= 1, got {n}")
    out = check_synthetic_target(out)
    check_writable(out)
    mine, state = process_share(n, device)
    if state is not None and str(device).lower() == "auto" and state.device.type == "cuda":
        device = state.device  # one GPU per process
    synth = Synthesizer(bundle, device=device)
    synth.check_memory(params)
    b = synth.bundle
    writer = DatasetWriter(
        out,
        voxel_size=synth.output_voxel_size(params),
        origin="synthetic",
        meta={"bundle": str(b.path) if b.path else None},
    )
    requests = [
        request_of(SynthesisParams(**{**asdict(params), "seed": params.seed + i}), b)
        for i in range(n)
    ]
    total = n if state is None or state.is_main_process else len(mine)
    for k, i in enumerate(mine):
        p = SynthesisParams(**{**asdict(params), "seed": params.seed + i})
        request = requests[i]
        done = _recorded(writer.reload(), request)
        if done is not None:
            log.info("seed %d is already in %s as %s: kept", p.seed, out, done)
            yield k + 1, total, done
            continue
        pair = synth.sample(p)
        record = {
            "origin": "synthetic",
            "bundle": str(b.path) if b.path else None,
            **pair.params,
            "request": request,
            "status": "unreviewed",
        }
        with writer.transaction() as meta:
            done = _recorded(meta, request)  # a concurrent run may have written it meanwhile
            if done is None:
                preferred = f"{prefix}{p.seed:04d}"
                free = not writer.exists(preferred) and preferred not in meta["samples"]
                done = preferred if free else writer.free_name(prefix)
                writer.add(done, pair.image, pair.labels, record=record)
        yield k + 1, total, done
    if state is None:
        return
    state.wait_for_everyone()
    if state.is_main_process:
        meta = writer.reload()
        others = sorted(set(range(n)) - set(mine))
        for k, i in enumerate(others, start=len(mine) + 1):
            done = _recorded(meta, requests[i])
            if done is None:
                raise CellsynthInputError(f"seed {params.seed + i} was not written", out)
            yield k, n, done


def _recorded(meta: dict[str, Any], request: dict[str, Any]) -> str | None:
    """The name of a sample of ``meta`` recorded with ``request``, if any."""
    for name, rec in meta.get("samples", {}).items():
        if rec.get("request") == request:
            return name
    return None
