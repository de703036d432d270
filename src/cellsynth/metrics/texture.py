"""What the pixels inside and around cells look like, relative to the cells' contrast: per-cell
texture (:func:`texture_table`), seams between touching cells (:func:`shared_boundaries`),
background noise and illumination (:func:`background_stats`) and the texture's correlation
between adjacent slices of a 3D stack (:func:`slice_correlation`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cellsynth.errors import CellsynthInputError
from cellsynth.io import check_same_shape
from cellsynth.metrics.morphology import touching_pairs

#: per-cell texture features of :func:`texture_table`, all scale-free (see docs/metrics.md)
TEXTURE_FEATURES = (
    "texture_spread",
    "edge_contrast",
    "edge_gradient",
    "radial_profile",
    "brightness",
)
#: a cell's contrast must exceed this many times the background's noise (robust standard
#: deviation) for the features measured relative to its contrast (:func:`texture_table`)
VISIBLE_CONTRAST = 3.0
#: per-image background features of :func:`background_stats`
BACKGROUND_FEATURES = ("background_noise", "illumination", "brightness_spread")


def background_pixels(image: np.ndarray, labels: np.ndarray, margin: int = 3) -> np.ndarray:
    """Background pixels at least ``margin`` px from any cell (all background if none is)."""
    from scipy import ndimage

    fg = ndimage.binary_dilation(labels > 0, iterations=margin) if labels.any() else labels > 0
    bg = image[~fg]
    return bg if bg.size else image[labels == 0]


def texture_table(image: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-cell texture of one 2D image, each feature relative to the cell's contrast
    ``c = mean inside - background median`` (so any intensity scale or offset gives the same):

    * ``texture_spread``: standard deviation inside the cell / c;
    * ``edge_contrast``: (mean of the cell's outermost pixels - mean of the 2 px ring outside it,
      other cells excluded) / c — how sharply the cell stands out at its boundary;
    * ``edge_gradient``: mean gradient magnitude on the boundary (inner and outer 1-px ring) / c,
      per pixel;
    * ``radial_profile``: (mean of the inner half - background) / (mean of the outer half -
      background), halves by distance to the boundary normalised per cell (> 1: bright centre);
    * ``brightness``: c / the median c of the image's cells (its spread is the cell-to-cell
      brightness spread).

    The first four are NaN for a cell that does not stand out of the camera noise (c below
    :data:`VISIBLE_CONTRAST` x the background's robust noise): divided by a contrast near 0
    they measure the noise, not the cell, and a handful of such cells (1-3 % of the HeLa
    nuclei) would dominate a distance between sets. Its ``brightness`` is kept.
    """
    from scipy import ndimage

    img = np.asarray(image, np.float64)
    lab = np.asarray(labels)
    if img.ndim != 2 or img.shape != lab.shape:
        raise CellsynthInputError(
            f"texture features need a 2D image and labels of one shape, got {img.shape} and "
            f"{lab.shape}"
        )
    ids = np.unique(lab[lab > 0])
    empty = {k: np.zeros(0) for k in ("label", *TEXTURE_FEATURES)}
    if ids.size == 0:
        return empty
    bg = float(np.median(background_pixels(img, lab)))
    noise = _background_noise(img, lab)
    index = np.arange(1, int(lab.max()) + 1)

    def mean_of(values, where, ids_img):
        s = np.bincount(ids_img[where], values[where], minlength=index.size + 1)
        n = np.bincount(ids_img[where], minlength=index.size + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (s / n)[ids]

    lab64 = lab.astype(np.int64)
    inside = lab64 > 0
    mean_in = mean_of(img, inside, lab64)
    sq_in = mean_of(img * img, inside, lab64)
    std_in = np.sqrt(np.maximum(sq_in - mean_in**2, 0))
    c = mean_in - bg
    # rings: the cell's outermost pixels, and up to 2 px outside it (background only)
    eroded = ndimage.grey_erosion(lab64, size=3)
    dilated = ndimage.grey_dilation(lab64, size=3)
    inner = inside & ((eroded != lab64) | (dilated != lab64))
    owner, dist = _nearest_cell(lab64)
    outer = (~inside) & (dist <= 2.0)
    edge_in = mean_of(img, inner, lab64)
    edge_out = mean_of(img, outer, owner)
    gy, gx = np.gradient(ndimage.gaussian_filter(img, 0.7))
    grad = np.hypot(gy, gx)
    band = inner | (~inside & (dist <= 1.0))
    edge_grad = mean_of(grad, band, np.where(inside, lab64, owner))
    # radial halves by distance to the boundary, normalised per cell
    din = ndimage.distance_transform_edt(inside)
    peak = np.zeros(index.size + 1)
    np.maximum.at(peak, lab64[inside], din[inside])
    rel = np.where(inside, din / np.maximum(peak[lab64], 1.0), 0.0)
    core = mean_of(img, inside & (rel > 0.5), lab64)
    rim = mean_of(img, inside & (rel <= 0.5), lab64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cpos = np.where(c > 0, c, np.nan)
        cvis = np.where(c > VISIBLE_CONTRAST * noise, cpos, np.nan)
        out = {
            "label": ids.astype(np.int64),
            "texture_spread": std_in / cvis,
            "edge_contrast": (edge_in - edge_out) / cvis,
            "edge_gradient": edge_grad / cvis,
            "radial_profile": np.where(
                np.isfinite(cvis), (core - bg) / np.where(rim - bg > 0, rim - bg, np.nan), np.nan
            ),
            "brightness": c / np.nanmedian(cpos) if np.isfinite(cpos).any() else c * np.nan,
        }
    return out


def _background_noise(img: np.ndarray, lab: np.ndarray) -> float:
    """The camera noise :func:`background_stats` measures, in intensity units; 0 without
    background."""
    from scipy import ndimage

    noise = _fine_noise(img, ndimage.binary_dilation(lab > 0, iterations=3))
    return noise if np.isfinite(noise) else 0.0


def _fine_noise(img: np.ndarray, fg: np.ndarray) -> float:
    """Robust standard deviation (1.4826 x MAD) of the image minus its Gaussian-smoothed self
    (sigma 2 px) over the pixels outside ``fg``; NaN if there are none."""
    from scipy import ndimage

    return _mad((img - ndimage.gaussian_filter(img, 2.0))[~fg])


def _mad(v: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of the finite values (NaN if none)."""
    v = v[np.isfinite(v)]
    return float(1.4826 * np.median(np.abs(v - np.median(v)))) if v.size else float("nan")


def shared_boundaries(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Brightness where two cells meet, one value per pair of adjacent cells: (mean of the
    pixels of either cell next to the other - background) / (mean of both cells - background).
    About 1: the texture runs across the shared boundary; well below 1: a dark seam between
    them (as when two nuclei only touch)."""
    from scipy import ndimage

    img = np.asarray(image, np.float64)
    lab = np.asarray(labels).astype(np.int64)
    pairs = touching_pairs(lab, 1.0)
    if not pairs.size:
        return np.zeros(0)
    bg = float(np.median(background_pixels(img, lab)))
    ids = np.unique(lab[lab > 0])
    means = dict(zip(ids.tolist(), np.asarray(ndimage.mean(img, lab, ids)).tolist(), strict=True))
    sizes = dict(zip(ids.tolist(), np.bincount(lab.ravel())[ids].tolist(), strict=True))
    # for each pixel, the labels of its 4-neighbours that differ from its own
    seam_sum: dict[tuple[int, int], float] = {}
    seam_n: dict[tuple[int, int], int] = {}
    for axis in range(lab.ndim):
        for step in (1, -1):
            other = np.roll(lab, step, axis)
            edge = [slice(None)] * lab.ndim
            edge[axis] = 0 if step == 1 else -1
            other[tuple(edge)] = 0
            sel = (lab > 0) & (other > 0) & (other != lab)
            a, b = lab[sel], other[sel]
            for i, j, v in zip(np.minimum(a, b), np.maximum(a, b), img[sel], strict=True):
                key = (int(i), int(j))
                seam_sum[key] = seam_sum.get(key, 0.0) + float(v)
                seam_n[key] = seam_n.get(key, 0) + 1
    out = []
    for i, j in pairs.tolist():
        n = seam_n.get((i, j), 0)
        if not n:
            continue
        inside = (means[i] * sizes[i] + means[j] * sizes[j]) / (sizes[i] + sizes[j]) - bg
        if inside > 0:
            out.append((seam_sum[(i, j)] / n - bg) / inside)
    return np.asarray(out, np.float64)


def _nearest_cell(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel, the label of the nearest cell pixel and the distance to it."""
    from scipy import ndimage

    if not labels.any():
        return np.zeros_like(labels), np.full(labels.shape, np.inf)
    dist, idx = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    return labels[tuple(idx)], dist


def background_stats(image: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per-image background and brightness statistics, relative to the median cell contrast
    ``c`` (mean inside a cell - background median) of the image:

    * ``background_noise``: robust standard deviation (1.4826 x MAD) of the background (pixels
      3 px or more from any cell) after removing its smooth part (Gaussian, sigma 2 px) / c —
      camera noise and fine debris;
    * ``illumination``: robust spread of the background smoothed at the median cell diameter
      (using background pixels only) / c — uneven illumination and out-of-focus haze;
    * ``brightness_spread``: coefficient of variation of the cells' contrasts (cell to cell).
    """
    from scipy import ndimage

    img = np.asarray(image, np.float64)
    lab = np.asarray(labels)
    check_same_shape(img, lab, "image", "labels")
    fg = ndimage.binary_dilation(lab > 0, iterations=3) if lab.any() else lab > 0
    bg = img[~fg] if (~fg).any() else img[lab == 0]
    ids, areas = np.unique(lab[lab > 0], return_counts=True)
    nan = float("nan")
    if ids.size == 0 or bg.size == 0:
        return dict.fromkeys(BACKGROUND_FEATURES, nan)
    contrast = np.asarray(ndimage.mean(img, lab, ids), np.float64) - float(np.median(bg))
    c = float(np.median(contrast))
    if not c > 0:
        return dict.fromkeys(BACKGROUND_FEATURES, nan)

    coarse = _masked_smooth(img, ~fg, max(2.0, 2 * np.sqrt(np.median(areas) / np.pi)))
    return {
        "background_noise": _fine_noise(img, fg) / c,
        "illumination": _mad(coarse[~fg]) / c,
        "brightness_spread": float(np.std(contrast) / np.mean(contrast))
        if ids.size > 1 and np.mean(contrast) > 0
        else nan,
    }


def _masked_smooth(img: np.ndarray, where: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of ``img`` using only the pixels ``where`` (normalised convolution)."""
    from scipy import ndimage

    w = where.astype(np.float64)
    num = ndimage.gaussian_filter(img * w, sigma)
    den = ndimage.gaussian_filter(w, sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-3, num / den, np.nan)


def slice_correlation(image: np.ndarray, labels: np.ndarray) -> float:
    """Adjacent-slice correlation of the texture inside cells of a 3D stack.

    For every pair of neighbouring slices, the voxels of one cell in both slices are taken with
    the cell's mean in each slice removed (so it is the texture, not the cells' brightness, that
    counts); the Pearson correlation of these residuals is pooled over all pairs and cells.
    This is what rho (paper 001, eq. 2) controls. NaN when no cell spans two slices.
    """
    img = np.asarray(image, dtype=np.float64)
    lab = np.asarray(labels)
    if img.ndim != 3 or img.shape != lab.shape:
        raise CellsynthInputError(
            f"slice correlation needs a 3D image and labels of one shape, got {img.shape} "
            f"and {lab.shape}"
        )
    a_all, b_all = [], []
    for z in range(img.shape[0] - 1):
        same = (lab[z] > 0) & (lab[z] == lab[z + 1])
        if not same.any():
            continue
        ids = lab[z][same]
        a, b = img[z][same], img[z + 1][same]
        _, inv = np.unique(ids, return_inverse=True)
        cnt = np.bincount(inv)
        a_all.append(a - (np.bincount(inv, a) / cnt)[inv])
        b_all.append(b - (np.bincount(inv, b) / cnt)[inv])
    if not a_all:
        return float("nan")
    a, b = np.concatenate(a_all), np.concatenate(b_all)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def background_summary(
    images: Sequence[np.ndarray], label_images: Sequence[np.ndarray]
) -> dict[str, float]:
    """Median over images of :func:`background_stats` (what a bundle records of its data)."""
    stats = [background_stats(i, lab) for i, lab in zip(images, label_images, strict=True)]
    out = {}
    for k in BACKGROUND_FEATURES:
        v = np.asarray([s[k] for s in stats], np.float64)
        v = v[np.isfinite(v)]
        out[k] = float(np.median(v)) if v.size else float("nan")
    return out
