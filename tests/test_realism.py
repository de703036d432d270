"""Realism measures that see texture: scale-free per-cell features, background statistics, the
Fréchet distance of learned features and the classifier two-sample test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cellsynth.errors import CellsynthInputError
from cellsynth.metrics import (
    background_stats,
    classifier_two_sample_test,
    frechet_distance,
    relative_image,
    texture_table,
)


def _scene(seed: int, *, noise: float = 2.0, blur: float = 0.0, tilt: float = 0.0, n: int = 12):
    """Nuclei (bright disks with a brighter centre and a little texture) on a noisy background."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((128, 128), np.uint16)
    yy, xx = np.mgrid[:128, :128]
    for i in range(1, n + 1):
        cy, cx, r = rng.integers(12, 116), rng.integers(12, 116), rng.integers(6, 10)
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)
        lab[disk] = i
    img = np.full(lab.shape, 20.0) + tilt * xx / 128
    for i in range(1, n + 1):
        cell = lab == i
        if cell.any():
            d = ndimage.distance_transform_edt(cell)
            img[cell] += rng.uniform(40, 80) * (0.8 + 0.2 * d[cell] / d.max())
    img += rng.normal(0, 3.0, img.shape) * (lab > 0)  # texture inside cells
    if blur:
        img = ndimage.gaussian_filter(img, blur)
    img += rng.normal(0, noise, img.shape)
    return img, lab


def test_texture_features_do_not_depend_on_the_intensity_scale():
    img, lab = _scene(0)
    a, b = texture_table(img, lab), texture_table(3.0 * img + 100.0, lab)
    for k in ("texture_spread", "edge_contrast", "edge_gradient", "radial_profile", "brightness"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, err_msg=k)


def test_a_cell_lost_in_the_camera_noise_has_no_texture_relative_to_its_contrast():
    """Contrast below 3 x the background noise: the four features divided by the contrast are
    NaN (they would measure the noise over a number near 0); its brightness is kept."""
    rng = np.random.default_rng(0)
    lab = np.zeros((96, 96), np.int32)
    lab[20:40, 20:40], lab[60:80, 60:80] = 1, 2
    img = 100.0 + rng.normal(0, 2.0, lab.shape)
    img[lab == 1] += 50.0  # 25 x the noise
    img[lab == 2] += 2.0  # 1 x the noise
    t = texture_table(img, lab)
    for k in ("texture_spread", "edge_contrast", "edge_gradient", "radial_profile"):
        assert np.isfinite(t[k][0]) and np.isnan(t[k][1]), k
    assert 0 < t["brightness"][1] < 0.1 < t["brightness"][0]
    img[lab == 2] += 10.0  # 6 x the noise: measured
    assert np.isfinite(texture_table(img, lab)["texture_spread"]).all()


def test_blurred_boundaries_lower_edge_contrast_and_gradient():
    sharp, lab = _scene(1, blur=0.0)
    soft, _ = _scene(1, blur=2.5)
    s, b = texture_table(sharp, lab), texture_table(soft, lab)
    assert np.nanmedian(b["edge_gradient"]) < 0.7 * np.nanmedian(s["edge_gradient"])
    assert np.nanmedian(b["edge_contrast"]) < 0.7 * np.nanmedian(s["edge_contrast"])


def test_bright_centres_show_in_the_radial_profile():
    img, lab = _scene(2, noise=0.5)
    assert np.nanmedian(texture_table(img, lab)["radial_profile"]) > 1.05


def test_background_noise_and_uneven_illumination_are_measured():
    quiet = background_stats(*_scene(3, noise=1.0))
    noisy = background_stats(*_scene(3, noise=6.0))
    tilted = background_stats(*_scene(3, noise=1.0, tilt=30.0))
    assert noisy["background_noise"] > 3 * quiet["background_noise"]
    assert tilted["illumination"] > 3 * quiet["illumination"]
    assert 0 < quiet["brightness_spread"] < 1


def test_frechet_distance_is_zero_for_one_set_and_grows_with_a_shift():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, x + 2.0) == pytest.approx(8 * 4.0, rel=1e-3)
    with pytest.raises(CellsynthInputError, match="Fréchet"):
        frechet_distance(x, x[:, :4])


def test_style_vectors_of_a_cellpose_model_are_per_tile():
    from cellsynth.metrics import style_vectors
    from cellsynth.segment import load_model

    model = load_model(None, device="cpu")
    imgs = [_scene(s)[0] for s in range(2)]
    v = style_vectors(model, imgs, tile=64, stride=64)
    assert v.shape == (2 * 4, 256) and np.isfinite(v).all()
    assert frechet_distance(v, v) == pytest.approx(0.0, abs=1e-6)


def _relative_scenes(seeds, **kw):
    return [relative_image(*_scene(s, **kw)) for s in seeds]


def test_two_sample_test_cannot_tell_one_process_from_itself():
    a = _relative_scenes(range(0, 8))
    b = _relative_scenes(range(100, 108))
    t = classifier_two_sample_test(a, b, crop=32, crops_per_image=48, epochs=6)
    assert 0.35 <= t.accuracy <= 0.65
    assert t.chance_interval[0] < 0.5 < t.chance_interval[1]


def test_two_sample_test_separates_noisy_from_clean_images():
    a = _relative_scenes(range(0, 8), noise=1.0)
    b = _relative_scenes(range(100, 108), noise=8.0)
    assert classifier_two_sample_test(a, b, crop=32, crops_per_image=48, epochs=6).accuracy > 0.85


def test_relative_images_put_background_at_zero_and_cells_near_one():
    img, lab = _scene(4, noise=0.5)
    rel = relative_image(7.0 * img + 50.0, lab)
    assert abs(np.median(rel[lab == 0])) < 0.05
    assert 0.8 < np.median(rel[lab > 0]) < 1.2


def test_shared_boundary_tells_a_continuous_texture_from_a_dark_seam():
    from cellsynth.metrics import shared_boundaries

    lab = np.zeros((40, 60), np.uint16)
    lab[10:30, 10:30] = 1
    lab[10:30, 30:50] = 2
    img = 10.0 + 100.0 * (lab > 0)
    assert shared_boundaries(img, lab) == pytest.approx([1.0])
    seam = img.copy()
    seam[10:30, 29:31] = 30.0
    assert shared_boundaries(seam, lab)[0] < 0.5
    apart = lab.copy()
    apart[:, 30] = 0
    assert shared_boundaries(img, apart).size == 0


@pytest.mark.parametrize("n_real", [2, 4])
def test_the_report_tests_real_vs_synthetic_from_two_real_frames(n_real):
    """A bundle learnt on two frames is measured against those two: the classifier is trained on
    one real frame and tested on the other; real vs real needs two frames per half."""
    from cellsynth.io import Pair
    from cellsynth.report import texture_realism

    real = [Pair.from_arrays(f"r{i}", *_scene(i)) for i in range(n_real)]
    synthetic = [Pair.from_arrays(f"s{i}", *_scene(50 + i, noise=8.0)) for i in range(4)]
    test = texture_realism(real, synthetic)["two_sample"]
    assert test["real_vs_synthetic"]["n_test"] > 0
    assert ("real_vs_real" in test) == (n_real >= 4)
