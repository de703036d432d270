"""Per-cell brightness as a condition of the texture model (issue #18), continuing a bundle's
training from its weights (--init-from), and the training preview."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from cellsynth.bundle import GeneratorBundle
from cellsynth.diffusion.core import build_unet, load_widened
from cellsynth.errors import CellsynthInputError
from cellsynth.io import read_dataset
from cellsynth.learn import LearnSettings, learn
from cellsynth.synthesize import SynthesisParams, Synthesizer
from cellsynth.texture import (
    FrameBrightness,
    TextureTiles,
    draw_brightness,
    frame_brightness,
    measure_brightness,
    paint,
    texture_config,
)
from conftest import TINY_LEARN, disks

TINY = dict(TINY_LEARN, minutes=None, mask_steps=4, texture_steps=4)


def _two_brightness_image(labels: np.ndarray) -> np.ndarray:
    """Odd cells dim (200 over a background of 100), even cells bright (1000)."""
    rng = np.random.default_rng(1)
    img = np.full(labels.shape, 100.0)
    img[(labels > 0) & (labels % 2 == 1)] = 200
    img[(labels > 0) & (labels % 2 == 0)] = 1000
    return np.clip(img + rng.normal(0, 5, labels.shape), 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bright")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        centres = [tuple(c) for c in rng.integers(12, 84, (6, 2))]
        lab = disks(shape=(96, 96), centres=centres, radius=7)
        tifffile.imwrite(root / "images" / f"a{i}.tif", _two_brightness_image(lab))
        tifffile.imwrite(root / "labels" / f"a{i}.tif", lab)
    return root


@pytest.fixture(scope="module")
def bundle(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bundle"
    for _ in learn(read_dataset(folder).pairs, out, LearnSettings(**TINY)):
        pass
    return out


def test_frame_brightness_measures_background_and_each_cell():
    lab = disks(shape=(64, 64), centres=((16, 16), (40, 44)), radius=7)
    img = _two_brightness_image(lab)
    background, cells = measure_brightness(img, lab)
    assert background == pytest.approx(100, abs=3)
    assert cells[1] == pytest.approx(200, abs=3) and cells[2] == pytest.approx(1000, abs=3)
    frame = frame_brightness(img, lab)
    assert sorted(round(v, -1) for v in frame.cells) == [200, 1000]
    # its own camera noise relative to its cells' contrast: what a frame drawn with this
    # exposure is given
    assert frame.noise == pytest.approx(5 / 500, rel=0.5)
    assert FrameBrightness.from_dict(frame.to_dict()) == frame
    assert frame.background_target() == {
        "background_noise": frame.noise,
        "illumination": frame.illumination,
    }


def test_draw_brightness_keeps_one_frame_per_canvas():
    frames = [FrameBrightness(100.0, [200.0, 210.0]), FrameBrightness(1000.0, [5000.0])]
    lab = np.arange(7).reshape(1, 7)
    for seed in range(8):
        lut, background = draw_brightness(lab, frames, np.random.default_rng(seed))
        assert lut.shape == (7,)
        if background == 100.0:
            assert set(lut[1:]) <= {200.0, 210.0}
        else:
            assert set(lut[1:]) == {5000.0}
    with pytest.raises(CellsynthInputError, match="no cell brightness"):
        draw_brightness(lab, [FrameBrightness(1.0, [])], np.random.default_rng(0))


def test_texture_tiles_carry_each_cells_brightness_as_a_fourth_channel(folder):
    ds = read_dataset(folder)
    pair = ds.pairs[0]
    from cellsynth.atlas import build_atlas

    stats = build_atlas(ds.pairs, crop_size=32).intensity
    tiles = TextureTiles([pair.image], [pair.labels], stats, 96, brightness=True)
    cond = tiles.c[0].numpy()
    assert cond.shape == (4, 96, 96)
    chan, lab = cond[3], pair.labels
    dim = chan[(lab > 0) & (lab % 2 == 1)]
    bright = chan[(lab > 0) & (lab % 2 == 0)]
    assert dim.max() < bright.min()  # the channel tells the model which cells are bright
    assert chan[lab == 0].std() == pytest.approx(0, abs=1e-6)
    assert TextureTiles([pair.image], [pair.labels], stats, 96).c[0].shape[0] == 3


def test_learnt_bundle_is_brightness_conditioned_and_records_its_frames(bundle):
    b = GeneratorBundle.load(bundle)
    assert b.texture_cfg.cond_channels == 4
    frames = b.brightness_frames
    assert len(frames) == 2 and all(len(f.cells) == 6 for f in frames)
    assert all(f.noise is not None and f.illumination is not None for f in frames)
    pair = Synthesizer(b, device="cpu").sample(SynthesisParams(size=(48, 48), cells=3, seed=2))
    assert pair.params["brightness"] == "condition"
    progress = bundle / "progress"
    assert (progress / "latest.png").is_file()
    assert (progress / "step-0000008.png").is_file()


def test_conditioned_bundle_without_frames_is_refused_by_name(bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    del meta["cells"]["brightness_frames"]
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(CellsynthInputError, match="brightness_frames") as e:
        GeneratorBundle.read_meta(copy)
    assert "bundle.json" in str(e.value)


def test_brightness_condition_changes_what_is_painted(bundle):
    """The same labels and noise painted with all cells dim vs all bright differ inside the
    cells: the channel reaches the model (an untrained model's output moves with its input)."""
    b = GeneratorBundle.load(bundle)
    lab = disks(shape=(32, 32), centres=((16, 16),), radius=7)
    noise = torch.randn((1, 1, 32, 32), generator=torch.Generator().manual_seed(0))

    def painted(**brightness):
        kw = dict(cfg=b.texture_cfg, steps=2, noise=noise.clone(), **brightness)
        return paint(b.texture_unet, b.texture_sampler(), lab, b.intensity, **kw)

    dim = painted(brightness=(np.array([100.0, 200.0]), 100.0))
    bright = painted(brightness=(np.array([100.0, 1000.0]), 100.0))
    assert not np.array_equal(dim, bright)
    with pytest.raises(CellsynthInputError, match="needs per-cell brightness"):
        painted()


def test_sisters_of_a_division_share_one_brightness(bundle):
    """Cells drawn from two brightness levels (200, 1000): drawn independently, about half of
    the sister pairs would differ; each pair's second sister takes the first's brightness."""
    synth = Synthesizer(bundle, device="cpu")
    lab = np.arange(1, 41, dtype=np.uint16).reshape(5, 8)
    sisters = np.zeros(40, np.int64)
    for a in range(1, 40, 2):  # labels 1-2, 3-4, ... are sisters
        sisters[a - 1], sisters[a] = a + 1, a
    for seed in range(3):
        params = SynthesisParams(seed=seed)
        alone, _, _ = synth.drawn_brightness(lab, params)
        shared, _, _ = synth.drawn_brightness(lab, params, sisters)
        assert np.any(alone[1::2] != alone[2::2])
        np.testing.assert_array_equal(shared[1::2], shared[2::2])
        np.testing.assert_array_equal(shared[1::2], alone[1::2])  # the first sister's


def test_widened_model_paints_exactly_as_its_source_until_trained():
    """--init-from a bundle without the brightness channel: the new channel starts at zero, so
    the continued model is the old one whatever brightness it is told."""
    torch.manual_seed(0)
    old_cfg = texture_config((8, 16, 16), 32, brightness=False)
    new_cfg = texture_config((8, 16, 16), 32, brightness=True)
    old, new = build_unet(old_cfg).eval(), build_unet(new_cfg).eval()
    widened = load_widened(new, old)
    assert widened == ["conv_in.weight"]
    x = torch.randn(2, 4, 32, 32)
    extra = torch.randn(2, 1, 32, 32)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        a = old(x, t).sample
        b = new(torch.cat([x, extra], 1), t).sample
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="cannot become"):
        load_widened(old, new)


def test_learning_continues_from_a_bundle_without_retraining_the_masks(bundle, folder, tmp_path):
    out = tmp_path / "continued"
    settings = LearnSettings(**{**TINY, "mask_steps": 0, "texture_steps": 2})
    settings.init_from = str(bundle)
    for _ in learn(read_dataset(folder).pairs, out, settings):
        pass
    src, cont = GeneratorBundle.load(bundle), GeneratorBundle.load(out)
    for k, v in src.mask_unet.state_dict().items():
        torch.testing.assert_close(cont.mask_unet.state_dict()[k], v)  # 0 mask steps: as it was
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["init_from"]["bundle"] == str(bundle)
    assert meta["training"]["texture_model"]["steps"] == 2
    assert cont.texture_cfg == src.texture_cfg  # the source's architecture


def test_continuing_a_bundle_keeps_its_tile_and_the_batch_asked_for(bundle, folder, tmp_path):
    """The tile is the source model's; the batch is not shrunk for a tile chosen from the
    cells' size (which would happen with tile None)."""
    settings = LearnSettings(**{**TINY, "mask_steps": 0, "texture_steps": 1})
    settings.tile, settings.texture_batch, settings.init_from = None, 6, str(bundle)
    for _ in learn(read_dataset(folder).pairs, tmp_path / "c", settings):
        pass
    meta = json.loads((tmp_path / "c" / "bundle.json").read_text())
    assert meta["settings"]["tile"] == GeneratorBundle.read_meta(bundle).texture_cfg.sample_size
    assert meta["settings"]["texture_batch"] == 6


def test_quality_preset_trains_long_and_checkpoints_less_often():
    q = LearnSettings.quality()
    d = LearnSettings()
    assert q.minutes is None
    assert q.texture_steps >= 10 * d.texture_steps and q.mask_steps >= 10 * d.mask_steps
    assert q.checkpoint_minutes > d.checkpoint_minutes
    assert LearnSettings.quality(seed=3).seed == 3
