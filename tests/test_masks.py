"""Mask post-processing and sizing (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth.masks import clean_mask, resize_mask, sides_for_areas


def _disk(n, r):
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    return x * x + y * y <= r * r


def test_clean_mask_keeps_the_largest_component_and_fills_holes():
    m = _disk(32, 10)
    m[15:17, 15:17] = False  # a hole
    m[0:2, 0:2] = True  # a speck
    c = clean_mask(m)
    assert not c[0:2, 0:2].any()
    assert c[15:17, 15:17].all()


def test_sizing_by_area_reproduces_the_atlas_areas():
    rng = np.random.default_rng(0)
    masks = np.stack([_disk(32, r) for r in (6, 9, 12)] * 20)
    areas = np.array([400.0, 900.0, 2500.0])
    sides = sides_for_areas(masks, areas, len(masks), rng)
    got = np.array([resize_mask(m, s).sum() for m, s in zip(masks, sides, strict=True)])
    assert np.median(got) == pytest.approx(900, rel=0.15)
    assert got.min() > 300 and got.max() < 3300


def test_size_factor_scales_areas_quadratically():
    masks = np.stack([_disk(32, 10)] * 50)
    a = sides_for_areas(masks, np.array([1000.0]), 50, np.random.default_rng(1))
    b = sides_for_areas(masks, np.array([1000.0]), 50, np.random.default_rng(1), size_factor=2)
    assert np.median(b / a) == pytest.approx(2.0, rel=0.05)


def _ragged_masks(n: int = 24, size: int = 32, seed: int = 0) -> np.ndarray:
    """Blobs with jagged outlines: a disk whose radius jumps from ray to ray."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size)) - (size - 1) / 2
    theta = np.arctan2(yy, xx)
    out = []
    for _ in range(n):
        k = rng.integers(6, 12)
        radius = 9 + 2.5 * np.sign(np.sin(k * theta + rng.uniform(0, 6.3)))
        out.append(np.hypot(yy, xx) <= radius)
    return np.stack(out)


def test_fit_smoothing_picks_the_smoothing_that_matches_the_real_solidity():
    """Real cells with smooth convex outlines ask for the most smoothing, ragged ones (as the
    masks themselves are) for the least; no real cells: the default."""
    from skimage.measure import regionprops

    from cellsynth.masks import DEFAULT_SMOOTH, SMOOTH_CANDIDATES, fit_smoothing

    masks = _ragged_masks()
    sides = np.full(len(masks), 64)
    assert fit_smoothing(masks, sides, np.full(40, 0.99)) == max(SMOOTH_CANDIDATES)
    raw = [regionprops(resize_mask(m, 64, 0.1).astype(np.uint8))[0].solidity for m in masks]
    assert fit_smoothing(masks, sides, np.asarray(raw)) == min(SMOOTH_CANDIDATES)
    assert fit_smoothing(masks, sides, np.zeros(0)) == DEFAULT_SMOOTH
