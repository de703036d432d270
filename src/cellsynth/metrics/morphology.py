"""What label images alone say about cells, and how far two sets of cells are apart.

* **Layout**: which cells touch (:func:`touching_pairs`), nearest-neighbour distances and density
  (:func:`layout_table`, :func:`layout_summary`).
* **Realism**: per-feature distances between the per-cell feature distributions of two sets
  (Wasserstein-1 divided by the reference set's standard deviation, and the Kolmogorov-Smirnov
  statistic), reported for synthetic-to-real next to real-to-real (:func:`realism_distances`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def realism_distances(
    reference: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
    features: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Distances between the per-cell feature distributions of two cell tables.

    For each feature: ``w1`` (Wasserstein-1 distance divided by the reference standard deviation,
    so features of different units compare) and ``ks`` (two-sample Kolmogorov-Smirnov statistic).
    A ``mean`` entry averages them over the features.
    """
    from scipy.stats import ks_2samp, wasserstein_distance

    from cellsynth.atlas import MORPHOLOGY_FEATURES

    features = list(features or (*MORPHOLOGY_FEATURES, "mean_intensity", "z_extent"))
    out: dict[str, dict[str, float]] = {}
    for f in features:
        a = np.asarray(reference.get(f, []), dtype=np.float64)
        b = np.asarray(other.get(f, []), dtype=np.float64)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size < 2 or b.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0]):
            continue  # missing, or the same constant (z extent of 2D data): nothing to compare
        sd = a.std() or 1.0
        out[f] = {
            "w1": float(wasserstein_distance(a, b) / sd),
            "ks": float(ks_2samp(a, b).statistic),
        }
    if out:
        out["mean"] = {k: float(np.mean([v[k] for v in out.values()])) for k in ("w1", "ks")}
    return out


# --------------------------------------------------------------------------- layout

#: two cells "touch" when some pixel of one lies within this distance of a pixel of the other
#: (1 = adjacent pixels, 2 = at most one background pixel between them)
TOUCH_DISTANCE = 2.0


def touching_pairs(labels: np.ndarray, distance: float = TOUCH_DISTANCE) -> np.ndarray:
    """(K, 2) sorted pairs of distinct labels with pixels within ``distance`` (any dimension).

    Every offset of length <= ``distance`` (half of them, by symmetry) is compared at once, so a
    frame of a few hundred cells takes milliseconds.
    """
    lab = np.asarray(labels)
    r = int(np.floor(distance))
    grids = np.meshgrid(*[np.arange(-r, r + 1)] * lab.ndim, indexing="ij")
    offs = np.stack([g.ravel() for g in grids], 1)
    norm2 = (offs**2).sum(1)
    offs = offs[(norm2 > 0) & (norm2 <= distance**2)]
    offs = offs[[tuple(o) > (0,) * lab.ndim for o in offs]]  # one of each +-pair
    found = []
    for o in offs:
        a = lab[tuple(slice(max(0, -k), lab.shape[i] - max(0, k)) for i, k in enumerate(o))]
        b = lab[tuple(slice(max(0, k), lab.shape[i] + min(0, k)) for i, k in enumerate(o))]
        sel = (a > 0) & (b > 0) & (a != b)
        if sel.any():
            p = np.stack([a[sel], b[sel]], 1).astype(np.int64)
            found.append(np.unique(np.sort(p, 1), axis=0))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


def border_labels(labels: np.ndarray) -> np.ndarray:
    """The labels (> 0) of the cells that reach the border of a label image: cut cells."""
    lab = np.asarray(labels)
    edge = np.unique(
        np.concatenate(
            [np.take(lab, i, axis=ax).ravel() for ax in range(lab.ndim) for i in (0, -1)]
        )
    )
    return edge[edge > 0]


def layout_table(labels: np.ndarray, distance: float = TOUCH_DISTANCE) -> dict[str, np.ndarray]:
    """Per-cell layout of one label image: ``touching`` (another cell within ``distance`` px),
    ``nn_distance`` (centroid distance to the nearest other cell, px; NaN for a lone cell) and
    ``nn_ratio`` (that distance over the cell's equivalent diameter — scale-free) and ``cut``
    (the cell reaches the image border, so the image shows only part of it)."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    lab = np.asarray(labels)
    ids, areas = np.unique(lab[lab > 0], return_counts=True)
    if ids.size == 0:
        keys = ("label", "touching", "nn_distance", "nn_ratio", "area", "cut")
        return {k: np.zeros(0) for k in keys}
    pairs = touching_pairs(lab, distance)
    touching = np.isin(ids, pairs.ravel())
    centres = np.asarray(ndimage.center_of_mass(np.ones(lab.shape), lab, ids), np.float64)
    centres = centres.reshape(len(ids), lab.ndim)
    nn = np.full(len(ids), np.nan)
    if len(ids) > 1:
        d, _ = cKDTree(centres).query(centres, k=2)
        nn = d[:, 1]
    diam = 2.0 * np.sqrt(areas / np.pi) if lab.ndim == 2 else (6.0 * areas / np.pi) ** (1 / 3)
    return {
        "label": ids,
        "touching": touching,
        "nn_distance": nn,
        "nn_ratio": nn / diam,
        "area": areas.astype(np.float64),
        "cut": np.isin(ids, border_labels(lab)),
    }


def layout_summary(
    label_images: Sequence[np.ndarray], distance: float = TOUCH_DISTANCE
) -> dict[str, Any]:
    """Layout of a set of label images: the fraction of cells touching another (within
    ``distance`` px), nearest-neighbour distances (px and over the cell's diameter: median and
    quartiles), density (cells per pixel, and cells per median cell area — scale-free), the
    foreground fraction, the fraction of cells the image border cuts and the 5th percentile of
    their areas (``cut_area_p5``, px; None with fewer than 10 cut cells): the smallest slivers a
    real image shows."""
    tabs = [layout_table(lab, distance) for lab in label_images]
    n = sum(len(t["label"]) for t in tabs)
    pixels = float(sum(np.asarray(lab).size for lab in label_images))
    fg = float(sum(np.count_nonzero(lab) for lab in label_images))
    if n == 0:
        return {"n_cells": 0, "touching_fraction": float("nan"), "density": 0.0}
    cat = {k: np.concatenate([t[k] for t in tabs]) for k in tabs[0]}
    nn, ratio = cat["nn_distance"], cat["nn_ratio"]
    ok = np.isfinite(nn)
    q = (lambda v: [float(x) for x in np.percentile(v, (25, 50, 75))]) if ok.any() else None
    return {
        "n_cells": n,
        "touching_fraction": float(cat["touching"].mean()),
        "nn_distance_quartiles": q(nn[ok]) if q else None,
        "nn_ratio_quartiles": q(ratio[ok]) if q else None,
        "nn_ratios": [round(float(v), 4) for v in ratio[ok]],
        "density": n / max(pixels, 1.0),
        "cells_per_median_area": n / max(pixels, 1.0) * float(np.median(cat["area"])),
        "foreground_fraction": fg / max(pixels, 1.0),
        "cut_fraction": float(cat["cut"].mean()),
        "cut_area_p5": (
            float(np.percentile(cat["area"][cat["cut"]], 5)) if cat["cut"].sum() >= 10 else None
        ),
    }
