"""Background modelling after painting: the training images' camera noise and illumination."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth.metrics import background_stats
from cellsynth.texture import match_background


def _clean(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lab = np.zeros((160, 160), np.uint16)
    yy, xx = np.mgrid[:160, :160]
    for i in range(1, 11):
        cy, cx = rng.integers(15, 145, 2)
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= 64) & (lab == 0)] = i
    img = 1000.0 + 400.0 * (lab > 0) + rng.normal(0, 1.0, lab.shape)
    return img.astype(np.uint16), lab


def test_missing_noise_and_illumination_are_added_to_the_target():
    img, lab = _clean()
    target = {"background_noise": 0.03, "illumination": 0.02}
    out = match_background(img, lab, target, np.random.default_rng(1))
    got = background_stats(out, lab)
    assert out.dtype == img.dtype and out.shape == img.shape
    assert got["background_noise"] == pytest.approx(0.03, rel=0.15)
    assert got["illumination"] == pytest.approx(0.02, rel=0.25)


def test_an_image_noisier_than_the_target_is_left_alone():
    img, lab = _clean()
    noisy = (img + np.random.default_rng(2).normal(0, 40, img.shape)).astype(np.uint16)
    out = match_background(noisy, lab, {"background_noise": 0.01}, np.random.default_rng(3))
    np.testing.assert_array_equal(out, noisy)


def _cv_of_cells(img, lab, background):
    c = np.array([img[lab == i].mean() - background for i in range(1, int(lab.max()) + 1)])
    return c.std() / c.mean()


def test_brightness_spread_keeps_one_frame_from_mixing_exposures():
    from cellsynth.texture import match_cell_brightness

    rng = np.random.default_rng(0)
    lab = np.zeros((200, 200), np.uint16)
    for k, (y, x) in enumerate((y, x) for y in range(15, 200, 30) for x in range(15, 200, 30)):
        lab[y - 8 : y + 8, x - 8 : x + 8] = k + 1
    img = np.where(lab > 0, 300.0, 100.0)
    # two exposures pooled: frames of cells at ~200 and frames at ~1000 above the background
    targets = 100.0 + np.concatenate([rng.normal(200, 20, 200), rng.normal(1000, 100, 200)])
    mixed, _ = match_cell_brightness(img, lab, targets, 100.0, np.random.default_rng(1))
    one, _ = match_cell_brightness(
        img, lab, targets, 100.0, np.random.default_rng(1), spread=0.1, sigma=0
    )
    assert _cv_of_cells(mixed, lab, 100.0) > 0.5
    assert 0.05 < _cv_of_cells(one, lab, 100.0) < 0.2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_illumination_varies_around_the_painted_level_without_shifting_it(seed):
    """Large cells on a small canvas: the illumination field (sigma twice a diameter) is nearly
    flat; it once kept its mean when scaled to unit spread, which shifted a whole dark uint8
    frame by up to 23 grey levels and clipped its background to 0."""
    yy, xx = np.mgrid[:128, :128]
    lab = np.zeros((128, 128), np.uint16)
    for i, (cy, cx) in enumerate([(30, 30), (90, 40), (50, 95)], start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 22**2] = i
    img = np.where(lab > 0, 22, 6).astype(np.uint8)
    target = {"background_noise": 0.03, "illumination": 0.03}
    out = match_background(img, lab, target, np.random.default_rng(seed))
    for i in range(1, 4):
        assert abs(float(out[lab == i].mean()) - 22) < 1.5
    assert abs(float(np.median(out[lab == 0])) - 6) <= 1
