"""Exemplar-guided texture (cellsynth.exemplars, issue #18): real training cells warped onto new
masks as the texture model's starting point, saved in the bundle as safetensors, used by
``cellsynth synthesize --exemplar-strength`` and by experiment configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from cellsynth import exemplars
from cellsynth.bundle import GeneratorBundle
from cellsynth.cli import main
from cellsynth.device import seeded
from cellsynth.diffusion.core import (
    DiffusionConfig,
    build_unet,
    ddim_sample,
    make_sampler,
    make_train_scheduler,
)
from cellsynth.errors import CellsynthInputError
from conftest import disks, learn_tiny, write_pairs


def _nucleolus_image(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Cells at 600 over a background of 100, each with a dark 'nucleolus' right of centre."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = np.where(labels > 0, 600.0, 100.0)
    for i, (cy, cx) in enumerate(ndimage.center_of_mass(labels > 0, labels, np.unique(labels)[1:])):
        yy, xx = np.indices(labels.shape)
        img[((yy - cy) ** 2 + (xx - cx - 3) ** 2 <= 4) & (labels == i + 1)] = 250.0
    return np.clip(img + rng.normal(0, 5, labels.shape), 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    lab = disks(shape=(96, 96), centres=((24, 24), (30, 66), (70, 40)), radius=9)
    pairs = [(f"a{i}", _nucleolus_image(lab, i), lab) for i in range(2)]
    return write_pairs(tmp_path_factory.mktemp("ex"), pairs)


@pytest.fixture(scope="module")
def bundle(folder, tmp_path_factory):
    return learn_tiny(folder, tmp_path_factory.mktemp("b") / "bundle")


def test_collect_keeps_whole_cells_with_their_rim_and_skips_cut_ones():
    lab = disks(shape=(64, 64), centres=((20, 20), (40, 44), (2, 60)), radius=6)
    img = _nucleolus_image(lab)
    cells = exemplars.collect([img], [lab])
    assert len(cells) == 2  # the third touches the border
    for e in cells:
        assert e.mask.sum() == (lab == 1).sum()
        assert e.image.shape == e.mask.shape and not e.mask[0].any()  # rim around the cell
        assert e.background == pytest.approx(100, abs=10)
        assert e.image[e.mask].mean() > 450


def test_collect_keeps_a_seeded_subset_of_large_data_sets():
    lab = disks(shape=(64, 64), centres=((20, 20), (40, 44)), radius=6)
    img = _nucleolus_image(lab)
    all_cells = exemplars.collect([img] * 5, [lab] * 5)
    some = exemplars.collect([img] * 5, [lab] * 5, limit=3)
    again = exemplars.collect([img] * 5, [lab] * 5, limit=3)
    assert len(all_cells) == 10 and len(some) == 3
    assert [e.area for e in some] == [e.area for e in again]


def test_exemplars_round_trip_through_safetensors_and_a_bad_file_is_named(tmp_path):
    lab = disks(shape=(64, 64), centres=((20, 20), (40, 44)), radius=6)
    cells = exemplars.collect([_nucleolus_image(lab)], [lab])
    path = tmp_path / exemplars.FILE
    exemplars.save(cells, path)
    back = exemplars.load(path)
    assert len(back) == len(cells)
    for a, b in zip(cells, back, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.image, b.image)  # integers below 2048: float16 is exact
        assert a.background == pytest.approx(b.background)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CellsynthInputError, match=exemplars.FILE):
        exemplars.load(path)


def test_warp_maps_centre_to_centre_and_boundary_to_boundary():
    """A cell warped onto a larger disk keeps its nucleolus at the same relative place."""
    lab = disks(shape=(40, 40), centres=((20, 20),), radius=8)
    img = np.where(lab > 0, 600.0, 100.0)
    img[(lab > 0) & (np.hypot(*np.indices(lab.shape) - 20) <= 2)] = 250.0  # central nucleolus
    (cell,) = exemplars.collect([img], [lab])
    target = disks(shape=(60, 60), centres=((30, 30),), radius=14) > 0
    values, weight = exemplars.warp(cell, target, np.random.default_rng(0))
    r = np.hypot(*(np.indices(target.shape) - 30))
    assert values[r <= 2].mean() < 300  # the nucleolus, scaled with the cell
    assert values[(r > 6) & (r < 12)].mean() == pytest.approx(600, abs=20)
    assert (weight[target] == 1).all() and weight[r > 14 + exemplars.PAD + 1].max() == 0
    assert weight[(r > 14.5) & (r < 14 + exemplars.KEEP - 0.5)].min() == 1  # the edge profile
    assert values[(r > 16) & (weight > 0)].mean() < 400  # the real rim fades outwards


def test_warp_keeps_the_real_edge_profile_in_pixels_on_a_larger_cell():
    """A soft edge (a halo falling 100 per px outside the cell) keeps its width in pixels on a
    cell three times larger, so the edge is as soft as the real one, not stretched or cut."""
    lab = disks(shape=(40, 40), centres=((20, 20),), radius=8)
    beyond = ndimage.distance_transform_edt(lab == 0)
    img = np.where(lab > 0, 600.0, np.maximum(600.0 - 100.0 * beyond, 100.0))
    (cell,) = exemplars.collect([img], [lab])
    target = disks(shape=(80, 80), centres=((40, 40),), radius=24) > 0
    values, weight = exemplars.warp(cell, target, np.random.default_rng(0))
    out = ndimage.distance_transform_edt(~target)
    for d in (1, 2, 3):
        ring = (out > d - 0.5) & (out <= d + 0.5)
        assert values[ring].mean() == pytest.approx(600 - 100 * d, abs=60), d
        assert weight[ring].min() == 1 or d > exemplars.KEEP - 1


def test_compose_gives_each_cell_its_drawn_brightness():
    lab = disks(shape=(64, 64), centres=((20, 20), (40, 44)), radius=6)
    cells = exemplars.collect([_nucleolus_image(lab)], [lab])
    canvas = disks(shape=(80, 80), centres=((20, 20), (50, 55)), radius=8)
    lut = np.array([0.0, 300.0, 900.0])
    out = exemplars.compose(canvas, cells, lut, 50.0, np.random.default_rng(0))
    assert out[canvas == 1].mean() == pytest.approx(300, rel=0.03)
    assert out[canvas == 2].mean() == pytest.approx(900, rel=0.03)
    assert out[0, 0] == pytest.approx(50)  # far from the cells: the background level
    with pytest.raises(CellsynthInputError, match="2D label image or a 3D stack"):
        exemplars.compose(canvas[None, None], cells, lut, 50.0, np.random.default_rng(0))
    with pytest.raises(CellsynthInputError, match="no exemplar"):
        exemplars.compose(canvas, [], lut, 50.0, np.random.default_rng(0))


def _stack_with_layered_cells():
    """A (4, 64, 64) stack of two whole cells and one cut by the XY border; each cell's slices
    grow brighter with z and its dark nucleolus moves from left to right."""
    lab = np.zeros((4, 64, 64), np.uint16)
    img = np.full(lab.shape, 100.0)
    yy, xx = np.indices(lab.shape[1:])
    for i, (cy, cx) in enumerate(((20, 20), (40, 44), (3, 60)), start=1):
        for z in range(4):
            r = 7 - abs(z - 1.5)
            cell = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            lab[z][cell] = i
            img[z][cell] = 300.0 + 100.0 * z
            img[z][cell & ((yy - cy) ** 2 + (xx - cx - 3 + 2 * z) ** 2 <= 2)] = 150.0
    return img.astype(np.uint16), lab


def test_collect_keeps_a_stack_cells_slices_in_order_and_they_round_trip(tmp_path):
    img, lab = _stack_with_layered_cells()
    cells = exemplars.collect([img], [lab])
    assert len(cells) == 8  # two whole cells of 4 slices; the third is cut by the border
    assert [(e.cell, e.z) for e in cells] == [(c, z) for c in range(2) for z in range(4)]
    means = [float(e.image[e.mask].mean()) for e in cells[:4]]
    assert means == sorted(means)  # the slices in order: brighter with z
    path = tmp_path / exemplars.FILE
    exemplars.save(cells, path)
    back = exemplars.load(path)
    assert [(e.cell, e.z) for e in back] == [(e.cell, e.z) for e in cells]
    flat = exemplars.collect([img[1]], [lab[1]])  # 2D cells: no 3D cell
    exemplars.save(flat, path)
    assert {(e.cell, e.z) for e in exemplars.load(path)} == {(-1, 0)}


def test_compose_stack_takes_a_real_cells_slices_in_order_at_the_drawn_brightness():
    img, lab = _stack_with_layered_cells()
    cells = exemplars.collect([img], [lab])
    canvas = np.zeros((4, 80, 80), np.uint16)
    yy, xx = np.indices(canvas.shape[1:])
    for z in range(4):
        canvas[z][(yy - 30) ** 2 + (xx - 35) ** 2 <= (9 - abs(z - 1.5)) ** 2] = 1
    lut = np.array([0.0, 700.0])
    out = exemplars.compose(canvas, cells, lut, 50.0, np.random.default_rng(0))
    per_slice = [float(out[z][canvas[z] == 1].mean()) for z in range(4)]
    assert per_slice == sorted(per_slice) and per_slice[3] > 1.3 * per_slice[0]  # real profile
    assert out[canvas == 1].mean() == pytest.approx(700, rel=0.03)  # one scale per cell
    # the nucleolus moves between slices as in the real cell: the slices differ
    assert np.corrcoef(out[0][canvas[0] == 1], out[3][canvas[0] == 1])[0, 1] < 0.9
    # with 2D exemplars only, every slice takes the same exemplar, turned the same way
    flat = exemplars.collect([img[1]], [lab[1]])
    same = np.repeat(canvas[1:2], 4, axis=0)
    out2 = exemplars.compose(same, flat, lut, 50.0, np.random.default_rng(0))
    np.testing.assert_allclose(out2[0], out2[3])


def _tiny_denoiser():
    """An untrained 16² UNet, its DDIM sampler, a fixed noise and a square as the start."""
    cfg = DiffusionConfig(sample_size=16, widths=(8, 16), attention=(False, False))
    torch.manual_seed(0)
    unet = build_unet(cfg).eval()
    sampler = make_sampler(make_train_scheduler(cfg))
    noise = torch.randn((1, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    init = torch.zeros((1, 1, 16, 16))
    init[..., 4:12, 4:12] = 1.0
    return unet, sampler, noise, init


def test_sdedit_keeps_the_start_at_low_strength_and_ignores_it_at_one():
    unet, sampler, noise, init = _tiny_denoiser()

    def run(strength):
        return ddim_sample(unet, sampler, noise, steps=4, init=init, strength=strength)

    near = run(0.02)
    assert (near - init).abs().mean() < 0.2
    far = run(0.9)
    assert (far - init).abs().mean() > (near - init).abs().mean()
    torch.testing.assert_close(run(1.0), ddim_sample(unet, sampler, noise, steps=4))


def test_a_strength_map_repaints_its_low_pixels_less_and_a_flat_one_changes_nothing():
    """Differential diffusion: where the map is 0 the result stays near the start, where it is
    the full strength the pixels are repainted as without a map."""
    unet, sampler, noise, init = _tiny_denoiser()

    def run(strength_map=None):
        return ddim_sample(  # enough steps that the last one is close to the data
            unet, sampler, noise, steps=20, init=init, strength=0.9, strength_map=strength_map
        )

    torch.testing.assert_close(run(torch.full((1, 1, 16, 16), 0.9)), run())
    held = torch.full((1, 1, 16, 16), 0.9)
    held[..., :, :8] = 0.0  # the left half is held at the start
    out, free = run(held), run()
    left, right = (slice(None), slice(None), slice(None), slice(0, 8)), (..., slice(8, 16))
    assert (out[left] - init[left]).abs().mean() < 0.2 < (free[left] - init[left]).abs().mean()
    assert (out[right] - init[right]).abs().mean() > 0.2
    with pytest.raises(ValueError, match="strength map"):
        ddim_sample(unet, sampler, noise, steps=4, strength_map=held)


def test_the_strength_map_is_low_on_every_cell_edge_and_full_inside():
    lab = disks(shape=(64, 64), centres=((20, 20), (20, 37)), radius=9)  # two touching cells
    assert ((lab == 1) & np.roll(lab == 2, -1, axis=1)).any()
    m = exemplars.strength_map(lab, 0.3, edge=0.0, width=4.0)
    d_in = ndimage.distance_transform_edt(lab > 0)
    assert m[(lab > 0) & (d_in <= 1)].max() <= 0.3 / 4 + 1e-6  # outermost pixels, shared ones
    assert m[(lab == 0) & (ndimage.distance_transform_edt(lab == 0) <= 1)].max() <= 0.3 / 4 + 1e-6
    assert m[20, 20] == m[20, 37] == m[0, 0] == pytest.approx(0.3)  # centres, background
    assert m[20, 28:30].max() <= 0.3 / 4 + 1e-6  # where the two cells touch
    assert exemplars.strength_map(lab, 0.05, edge=0.1).max() == pytest.approx(0.05)
    assert (exemplars.strength_map(np.zeros((8, 8), int), 0.3) == np.float32(0.3)).all()


def test_learn_saves_the_training_cells_and_synthesis_starts_from_them(bundle, tmp_path, capsys):
    """Through the CLI: the learnt bundle holds exemplars; --exemplar-strength changes the
    image (same seed, same labels) and is recorded; out of (0, 1] it is refused by name."""
    b = GeneratorBundle.load(bundle)
    assert len(b.exemplars()) == 6
    copy = tmp_path / "copy"
    b.save(copy)  # a saved copy keeps them
    assert len(GeneratorBundle.load(copy).exemplars()) == 6

    def synth(name, *extra):
        out = tmp_path / name
        args = ["synthesize", "--bundle", str(bundle), "-o", str(out), "-n", "1"]
        assert main([*args, "--size", "64", "64", "--seed", "3", *extra]) == 0
        meta = json.loads((out / "dataset.json").read_text())
        (rec,) = meta["samples"].values()
        img = tifffile.imread(next((out / "images").iterdir()))
        lab = tifffile.imread(next((out / "labels").iterdir()))
        return img, lab, rec

    model_img, model_lab, rec = synth("model", "--exemplar-strength", "1")
    assert rec["exemplar_strength"] == 1.0
    ex_img, ex_lab, rec = synth("ex", "--exemplar-strength", "0.6")
    np.testing.assert_array_equal(model_lab, ex_lab)
    assert model_lab.any() and not np.array_equal(model_img, ex_img)
    assert rec["exemplar_strength"] == 0.6
    assert json.loads((bundle / "bundle.json").read_text())["exemplar_strength"] == 0.3
    default_img, _, rec = synth("default")  # the bundle's own strength
    assert rec["exemplar_strength"] == exemplars.DEFAULT_STRENGTH
    assert not np.array_equal(default_img, model_img)
    bad = ["synthesize", "--bundle", str(bundle), "-o", str(tmp_path / "bad")]
    assert main([*bad, "--exemplar-strength", "0"]) != 0
    assert "--exemplar-strength must be in (0, 1], got 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_bundle_without_exemplars_paints_from_noise_whatever_the_strength(bundle, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    (old / exemplars.FILE).unlink()
    outs = []
    for s in ("1", "0.3"):
        out = tmp_path / f"o{s}"
        args = ["synthesize", "--bundle", str(old), "-o", str(out), "-n", "1", "--seed", "1"]
        assert main([*args, "--size", "64", "64", "--exemplar-strength", s]) == 0
        outs.append(tifffile.imread(next((out / "images").iterdir())))
    np.testing.assert_array_equal(*outs)


def test_a_bundle_with_a_bad_exemplar_strength_is_refused_by_name(bundle, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    meta = json.loads((bad / "bundle.json").read_text())
    meta["exemplar_strength"] = 1.5
    (bad / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(CellsynthInputError, match="exemplar_strength"):
        GeneratorBundle.load(bad)


def test_learn_fits_the_mask_smoothing_and_synthesis_uses_it(bundle, tmp_path):
    """The learnt bundle records the outline smoothing fitted to its training cells; a bundle
    that asks for another smoothing gets other outlines from the same seed."""
    from cellsynth.masks import SMOOTH_CANDIDATES
    from cellsynth.synthesize import SynthesisParams, Synthesizer

    b = GeneratorBundle.load(bundle)
    assert b.cells.mask_smooth in SMOOTH_CANDIDATES
    params = SynthesisParams(size=(96, 96), seed=3, cells=6)

    def labels(smooth):
        b.meta["cells"]["mask_smooth"] = smooth
        return Synthesizer(b, "cpu").population(params, *seeded(3)).labels

    assert not np.array_equal(labels(0.1), labels(3.0))
    b.meta["cells"]["mask_smooth"] = -1.0
    b.save(tmp_path / "bad")
    with pytest.raises(CellsynthInputError, match="mask_smooth"):
        GeneratorBundle.load(tmp_path / "bad")
