"""3D synthesis stages: shape prior, multiview model, NeuS / visual hull, 3D population and
texture with correlated slice noise. Tiny models or the shipped multiview model; seconds each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from cellsynth.cli import main
from cellsynth.errors import CellsynthInputError
from cellsynth.metrics import slice_correlation
from cellsynth.shapes.harmonics import TOP_RADIUS, ShapePriorConfig, sample_shapes, volume_points
from cellsynth.shapes.multiview import (
    MultiviewModel,
    builtin_multiview_path,
    normalise_masks,
    sample_views,
    train_multiview,
)
from cellsynth.shapes.neus import NeuSConfig, cell_volumes, fit_sdf, sample_grid, visual_hull
from cellsynth.shapes.views import view_matrices
from cellsynth.synthesize import SynthesisParams, Synthesizer
from conftest import disks, image_for

VIEWS = view_matrices()


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a & b).sum(-1) / np.maximum((a | b).sum(-1), 1)


@pytest.fixture(scope="module")
def shapes():
    return sample_shapes(12, ShapePriorConfig(), np.random.default_rng(3))


@pytest.fixture(scope="module")
def silhouettes(shapes):
    return shapes.silhouettes(VIEWS, 32, 40)


# --------------------------------------------------------------------------- 3a prior


def test_views_are_orthonormal_and_the_first_looks_down_z():
    for v in VIEWS:
        torch.testing.assert_close(v @ v.T, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(VIEWS[0], torch.eye(3))


def test_top_view_is_the_projection_of_the_volume_and_fills_the_frame_as_documented(
    shapes, silhouettes
):
    vol = shapes.volume(32)
    agree = (vol.any(axis=1) == silhouettes[:, 0]).mean()
    assert agree > 0.99
    c = (np.arange(32) + 0.5) / 16 - 1
    for s in silhouettes[:, 0]:
        ys, xs = np.nonzero(s)
        r = np.sqrt(c[ys] ** 2 + c[xs] ** 2).max()
        assert abs(r - TOP_RADIUS) < 0.1


def test_z_ratio_makes_cells_taller():
    def mean_z_extent(ratio):
        s = sample_shapes(16, ShapePriorConfig(z_ratio=ratio, tilt_deg=0), np.random.default_rng(0))
        v = s.volume(32)
        return np.mean([np.ptp(np.nonzero(x.any(axis=(1, 2)))[0]) for x in v])

    assert mean_z_extent(1.2) > 1.6 * mean_z_extent(0.5)


def test_prior_rejects_impossible_settings():
    with pytest.raises(CellsynthInputError, match="z ratio"):
        sample_shapes(2, ShapePriorConfig(z_ratio=5.0), np.random.default_rng(0))


# --------------------------------------------------------------------------- 3c volumes


def test_visual_hull_contains_the_shape_and_neus_fits_its_silhouettes(shapes, silhouettes):
    pts = volume_points(32)[0]
    gt = shapes.volume(32).reshape(len(shapes), -1)
    hull = visual_hull(silhouettes, VIEWS, pts).numpy()
    assert (gt & ~hull).sum() / gt.sum() < 0.06  # contains the shape, up to pixel aliasing
    assert _iou(hull, gt).mean() > 0.85
    grids = fit_sdf(silhouettes, VIEWS, NeuSConfig())
    occ = (sample_grid(grids, pts[None].expand(len(shapes), -1, -1)) < 0).numpy()
    assert _iou(occ, gt).mean() > 0.8


def test_neus_refuses_silhouettes_of_the_wrong_shape():
    with pytest.raises(CellsynthInputError, match="silhouettes must be"):
        fit_sdf(np.zeros((2, 3, 32, 32), bool), VIEWS)


def test_volumes_follow_the_voxel_anisotropy_and_never_vanish(silhouettes):
    grids = fit_sdf(silhouettes[:4], VIEWS, NeuSConfig(iterations=20))
    px = np.full(4, 10.0)  # 10 px per frame unit: cells ~12 px across
    rng = np.random.default_rng(0)
    iso = cell_volumes(grids, px, 1.0, rng)
    aniso = cell_volumes(grids, px, 4.0, rng)
    for a, b in zip(iso, aniso, strict=True):
        assert a.shape[0] >= 3 * b.shape[0] - 2  # 4x coarser z: about a quarter of the slices
        assert abs(a.shape[1] - b.shape[1]) <= 1
        assert ndimage.label(a)[1] == 1
    flat = cell_volumes(grids, px, 1000.0, rng, fallback=[np.ones((5, 5), bool)] * 4)
    assert all(v.any() and v.ndim == 3 for v in flat)  # thinner than a slice: kept as one
    with pytest.raises(CellsynthInputError, match="anisotropy"):
        cell_volumes(grids, px, 0.0, rng)


# --------------------------------------------------------------------------- 3b multiview


def test_masks_are_centred_and_scaled_into_the_view_frame():
    m = disks(shape=(60, 80), centres=((30, 50),), radius=12) > 0
    top, px = normalise_masks([m], 32)
    assert px[0] == pytest.approx(12.5 / TOP_RADIUS, rel=0.05)
    ys, xs = np.nonzero(top[0])
    assert abs(ys.mean() - 15.5) < 1 and abs(xs.mean() - 15.5) < 1
    with pytest.raises(CellsynthInputError, match="empty"):
        normalise_masks([np.zeros((5, 5), bool)], 32)


def test_multiview_model_trains_saves_loads_and_samples_deterministically(tmp_path):
    m = MultiviewModel.new(widths=(8, 16, 16))
    reports = list(train_multiview(m, 3, batch_size=4, pool=8))
    assert reports[-1].done and np.isfinite(reports[-1].loss)
    m.save(tmp_path / "mv")
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    back = MultiviewModel.load(tmp_path / "mv")
    assert back.meta["training_steps"] == 3
    top = normalise_masks([disks((40, 40), ((20, 20),), 9) > 0] * 2, back.res)[0]
    a = sample_views(back, top, generator=torch.Generator().manual_seed(1), steps=2)
    b = sample_views(back, top, generator=torch.Generator().manual_seed(1), steps=2)
    assert a.shape == (2, 7, back.res, back.res)
    np.testing.assert_array_equal(a[:, 0], top)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(CellsynthInputError, match="not a cellsynth multiview"):
        MultiviewModel.load(tmp_path)


def test_shipped_multiview_model_gives_views_of_plausible_size():
    mv = MultiviewModel.load()
    assert mv.path == builtin_multiview_path()
    assert (builtin_multiview_path() / "unet" / "diffusion_pytorch_model.safetensors").exists()
    rng = np.random.default_rng(7)
    s = sample_shapes(8, mv.prior, rng)
    true = s.silhouettes(mv.views, mv.res, 40)
    gen = sample_views(mv, true[:, 0], generator=torch.Generator().manual_seed(0))
    area_true, area_gen = true[:, 1:].sum((2, 3)), gen[:, 1:].sum((2, 3))
    assert np.median(area_gen / np.maximum(area_true, 1)) == pytest.approx(1.0, abs=0.35)
    assert _iou(gen[:, 1:].reshape(8, -1), true[:, 1:].reshape(8, -1)).mean() > 0.6


# --------------------------------------------------------------------------- 3D synthesis


@pytest.fixture(scope="module")
def synth():
    return Synthesizer(None, device="cpu")


def test_a_stack_gets_the_training_images_camera_noise_on_every_slice(synth):
    assert synth.bundle.meta.get("background")  # the built-in bundle records it
    lab = disks(shape=(4, 64, 64), centres=((2, 20, 20), (2, 40, 44)), radius=8)
    clean = np.where(lab > 0, 180, 20).astype(np.uint8)
    params = SynthesisParams(size=(4, 64, 64), seed=0)
    noisy = synth.background(clean, lab, params, None)
    assert noisy.shape == clean.shape and noisy.dtype == clean.dtype
    spread = [float(noisy[z][lab[z] == 0].std()) for z in range(4)]
    assert min(spread) > 0.5 and max(spread) < 2 * min(spread)  # one noise level, all slices
    model = synth.background(clean, lab, SynthesisParams(size=(4, 64, 64), brightness="model"))
    np.testing.assert_array_equal(model, clean)


def test_3d_stack_has_cells_spanning_several_slices_each_one_component(synth):
    pair = synth.sample(SynthesisParams(size=(16, 96, 96), cells=6, seed=0, steps=2))
    lab = pair.labels
    assert lab.shape == pair.image.shape == (16, 96, 96)
    assert lab.dtype == np.uint16 and pair.image.dtype == np.uint8
    ids = [i for i in np.unique(lab) if i]
    assert len(ids) >= 3
    for i in ids:
        m = lab == i
        assert ndimage.label(m)[1] == 1
        assert m.any(axis=(1, 2)).sum() >= 3
    assert pair.params["rho"] == 2.0 and pair.params["voxel_size"] == [1.0, 1.0, 1.0]


def test_higher_rho_gives_more_correlated_slices_same_seed(synth):
    corr = {}
    for rho in (0.0, 1.0, 4.0):
        p = synth.sample(SynthesisParams(size=(6, 96, 96), cells=8, seed=1, steps=4, rho=rho))
        corr[rho] = slice_correlation(p.image.astype(float), p.labels)
    assert corr[0.0] < corr[1.0] < corr[4.0]
    assert corr[4.0] > corr[0.0] + 0.03


def test_anisotropic_voxels_give_fewer_slices_per_cell(synth):
    def mean_z(vs):
        p = synth.sample(
            SynthesisParams(
                size=(32, 64, 64), cells=4, seed=2, steps=1, voxel_size=vs, size_factor=0.4
            )
        )
        return np.mean([(p.labels == i).any(axis=(1, 2)).sum() for i in np.unique(p.labels) if i])

    assert mean_z((1.0, 1.0, 1.0)) > 2 * mean_z((3.0, 1.0, 1.0))


def test_cli_synthesize_3d_writes_stacks_with_voxel_size(tmp_path, capsys):
    out = tmp_path / "s3"
    code = main(
        [
            "synthesize",
            "-o",
            str(out),
            "-n",
            "1",
            "--size",
            "8",
            "48",
            "48",
            "--steps",
            "1",
            "--cells",
            "3",
            "--rho",
            "1.5",
            "--voxel-size",
            "2",
            "0.5",
            "0.5",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rec = json.loads((out / "dataset.json").read_text())
    assert rec["voxel_size"] == [2.0, 0.5, 0.5]
    (sample,) = rec["samples"].values() if isinstance(rec["samples"], dict) else rec["samples"]
    assert sample["rho"] == 1.5 and sample["size"] == [8, 48, 48]
    with tifffile.TiffFile(next((out / "labels").glob("*.tif"))) as t:
        assert t.asarray().shape == (8, 48, 48)
        assert t.imagej_metadata["spacing"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "4", "64", "64", "64"], "Z Y X"),
        (["--size", "8", "64", "64", "--rho", "-1"], "--rho"),
        (["--size", "8", "64", "64", "--voxel-size", "0", "1", "1"], "--voxel-size"),
    ],
)
def test_cli_3d_bad_parameters(tmp_path, capsys, args, message):
    assert main(["synthesize", "-o", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- learn --3d


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacks")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        centres = [(int(z), *map(int, rng.integers(12, 52, 2))) for z in rng.integers(7, 13, 4)]
        lab = disks(shape=(20, 64, 64), centres=centres, radius=6)
        img = image_for(lab, i).astype(np.float64)
        img = ndimage.gaussian_filter(img, (1.5, 0.5, 0.5))  # slices that agree, like real data
        tifffile.imwrite(root / "images" / f"s{i}.tif", img.astype(np.uint16))
        tifffile.imwrite(root / "labels" / f"s{i}.tif", lab)
    return root


def test_learn_3d_fits_z_ratio_refines_multiview_and_calibrates_rho(stacks, tmp_path, capsys):
    out = tmp_path / "b3"
    code = main(
        [
            "learn",
            str(stacks),
            "-o",
            str(out),
            "--3d",
            "--tiny",
            "--minutes",
            "0",
            "--mask-steps",
            "4",
            "--texture-steps",
            "4",
            "--multiview-steps",
            "2",
            "--voxel-size",
            "0.5",
            "1",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["voxel_size"] == [0.5, 1.0, 1.0]
    # balls 13 voxels across, slices of half a pixel: z extent / diameter = 0.5
    assert 0.4 < meta["shape_prior"]["z_ratio"] < 0.6
    assert meta["shape_prior"]["cells_cut_by_stack"] == 0
    assert meta["texture3d"]["rho"] in [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert 0 < meta["texture3d"]["real_correlation"] < 1
    assert meta["cells"]["density_3d"] > 0
    assert (out / "multiview_model" / "multiview.json").exists()
    # where the cells are widest: at their centres, slices 7 to 12 of 0.5 um
    equators = np.asarray(meta["shape_prior"]["z_equators"])
    assert len(equators) == meta["training_data"]["atlas"]["cells"]
    assert equators.min() >= 7.5 * 0.5 and equators.max() <= 12.5 * 0.5
    # the stacks' cells as 3D exemplars, each with its cross-sections in slice order; rho is
    # calibrated painting from them, as synthesis paints
    assert meta["texture3d"]["exemplar_strength"] == pytest.approx(0.3)
    synth = Synthesizer(out, device="cpu")
    cells = {}
    for e in synth.bundle.exemplars():
        cells.setdefault(e.cell, []).append(e.z)
    assert min(cells) >= 0 and all(
        zs == list(range(len(zs))) and len(zs) > 5 for zs in cells.values()
    )
    assert synth.multiview.path == out / "multiview_model"
    pair = synth.sample(SynthesisParams(size=(20, 64, 64), seed=0, steps=1))
    assert pair.params["voxel_size"] == [0.5, 1.0, 1.0]
    assert pair.params["rho"] == meta["texture3d"]["rho"]
    assert pair.params["exemplar_strength"] == pytest.approx(0.3)
    # the synthetic cells placed on their own are widest where the training cells are
    t = pair.table
    for i, clustered, touching in zip(t["label"], t["clustered"], t["touching"], strict=True):
        if not (clustered or touching):
            widest = int(np.argmax((pair.labels == i).sum(axis=(1, 2))))
            assert 6 <= widest <= 13, (i, widest)


def test_learn_3d_from_single_annotated_slices_keeps_the_default_prior(ctc_folder, tmp_path):
    from cellsynth.io import read_pairs
    from cellsynth.learn import LearnSettings
    from cellsynth.learn3d import Learn3DSettings, learn_3d

    pairs = read_pairs([ctc_folder / "02"], require_labels=True)
    assert pairs[0].annotated_slices
    settings = LearnSettings(
        minutes=None,
        mask_steps=3,
        texture_steps=3,
        device="cpu",
        mask_widths=(8, 16, 16),
        texture_widths=(8, 16, 16),
        mask_batch=4,
        texture_batch=2,
        tile=32,
        mask_size=16,
        crop_size=32,
    )
    reports = list(learn_3d(pairs, tmp_path / "b", settings, Learn3DSettings(multiview_steps=1)))
    assert reports[-1].done
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["shape_prior"]["z_ratios"] == []
    assert meta["shape_prior"]["z_ratio"] == ShapePriorConfig().z_ratio
    assert "texture3d" not in meta  # no dense stack to calibrate rho on


def test_learn_3d_refuses_2d_data(dataset_folder, tmp_path, capsys):
    assert main(["learn", str(dataset_folder), "-o", str(tmp_path / "b"), "--3d"]) == 2
    assert "needs a 3D stack" in capsys.readouterr().err


def test_slice_correlation_needs_a_stack():
    with pytest.raises(CellsynthInputError, match="3D image"):
        slice_correlation(np.zeros((8, 8)), np.zeros((8, 8), np.uint16))
    lab = np.zeros((2, 8, 8), np.uint16)
    lab[:, 2:6, 2:6] = 1
    img = np.random.default_rng(0).normal(size=(1, 8, 8)).repeat(2, axis=0)
    assert slice_correlation(img, lab) == pytest.approx(1.0)


def test_cli_train_multiview_writes_a_loadable_model_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "mv"
    args = [
        "train-multiview",
        "-o",
        str(out),
        "--steps",
        "2",
        "--batch",
        "4",
        "--widths",
        "8",
        "16",
        "16",
        "--z-ratio",
        "0.5",
        "--device",
        "cpu",
    ]
    assert main(args) == 0, capsys.readouterr().err
    m = MultiviewModel.load(out)
    assert m.prior.z_ratio == 0.5 and m.meta["training_steps"] == 2
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
