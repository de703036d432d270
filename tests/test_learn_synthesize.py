"""Learning a bundle and synthesizing from it, with tiny models (seconds on a CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from cellsynth.bundle import GeneratorBundle
from cellsynth.cli import main
from cellsynth.device import seeded
from cellsynth.errors import CellsynthInputError
from cellsynth.io import read_dataset
from cellsynth.learn import LearnSettings, learn
from cellsynth.synthesize import SynthesisParams, Synthesizer
from conftest import TINY_LEARN, disks, image_for

TINY = TINY_LEARN


def _settings(**kw) -> LearnSettings:
    return LearnSettings(**{**TINY, "minutes": None, "mask_steps": 6, "texture_steps": 6, **kw})


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        centres = [tuple(c) for c in rng.integers(12, 84, (6, 2))]
        lab = disks(shape=(96, 96), centres=centres, radius=7)
        tifffile.imwrite(root / "images" / f"a{i}.tif", image_for(lab, i))
        tifffile.imwrite(root / "labels" / f"a{i}.tif", lab)
    return root


@pytest.fixture(scope="module")
def tiny_bundle(train_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    for _ in learn(read_dataset(train_folder).pairs, out, _settings()):
        pass
    return out


def test_learning_yields_progress_and_saves_safetensors_only(train_folder, tmp_path):
    reports = list(learn(read_dataset(train_folder).pairs, tmp_path / "b", _settings()))
    assert reports[-1].done
    assert reports[-1].mask_step == 6 and reports[-1].texture_step == 6
    assert all(0 <= r.fraction <= 1 for r in reports)
    assert {r.model for r in reports[:-1]} == {"mask_model", "texture_model"}
    files = {p.suffix for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert ".safetensors" in files
    assert not files & {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["intensity"]["dtype"] == "uint16"
    assert meta["training"]["mask_model"]["steps"] == 6


def test_cancelled_training_keeps_a_loadable_checkpoint_and_resumes(train_folder, tmp_path):
    pairs = read_dataset(train_folder).pairs
    gen = learn(pairs, tmp_path / "b", _settings(mask_steps=50, texture_steps=50))
    for i, _ in enumerate(gen):
        if i == 4:
            break
    gen.close()  # what a cancelled GUI job or Ctrl-C does
    bundle = GeneratorBundle.load(tmp_path / "b")
    done = (
        bundle.meta["training"]["mask_model"]["steps"]
        + bundle.meta["training"]["texture_model"]["steps"]
    )
    assert done == 5
    last = list(
        learn(pairs, tmp_path / "b", _settings(mask_steps=5, texture_steps=5), resume=True)
    )[-1]
    assert last.mask_step == 5 and last.texture_step == 5
    assert last.step == 10


def test_learning_refuses_to_overwrite_a_bundle(tiny_bundle, train_folder):
    with pytest.raises(CellsynthInputError, match="not empty"):
        next(learn(read_dataset(train_folder).pairs, tiny_bundle, _settings()))


def test_learning_needs_cells(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", np.zeros((64, 64), np.uint8))
    tifffile.imwrite(tmp_path / "labels" / "a.tif", np.zeros((64, 64), np.uint16))
    with pytest.raises(CellsynthInputError, match="no cells"):
        next(learn(read_dataset(tmp_path).pairs, tmp_path / "b", _settings()))


def test_synthesis_gives_integer_labels_and_an_image_of_the_data_dtype(tiny_bundle):
    synth = Synthesizer(tiny_bundle, device="cpu")
    pair = synth.sample(SynthesisParams(size=(64, 80), cells=5, seed=3, steps=2))
    assert pair.image.shape == pair.labels.shape == (64, 80)
    assert pair.image.dtype == np.uint16  # the training data's dtype
    assert pair.labels.dtype == np.uint16
    assert pair.params["cells_placed"] == pair.labels.max()


def test_same_seed_gives_the_same_pair_and_another_seed_another(tiny_bundle):
    synth = Synthesizer(tiny_bundle, device="cpu")
    p = dict(size=(48, 48), cells=4, steps=2)
    a = synth.sample(SynthesisParams(seed=5, **p))
    b = synth.sample(SynthesisParams(seed=5, **p))
    c = synth.sample(SynthesisParams(seed=6, **p))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)


def test_learn_fits_the_clustering_and_synthesis_uses_it(tiny_bundle, tmp_path):
    """The learnt 2D bundle records the clustering fitted to its training frames' neighbour
    distances; synthesis places cells with it unless told otherwise, and a bad value in a
    bundle is refused by name."""
    from cellsynth.population import CLUSTER_BANDS, CLUSTER_PROBS, DEFAULT_CLUSTER_PROB

    b = GeneratorBundle.load(tiny_bundle)
    assert b.cells.cluster_prob in CLUSTER_PROBS and b.cells.cluster_band in CLUSTER_BANDS
    synth = Synthesizer(b, "cpu")
    assert synth.clustering(SynthesisParams()) == (b.cells.cluster_prob, b.cells.cluster_band)
    assert synth.clustering(SynthesisParams(cluster_prob=0.05))[0] == 0.05
    b.meta["cells"]["cluster_prob"] = 1.0
    b.meta["cells"]["cluster_band"] = 0.5
    params = SynthesisParams(size=(128, 128), cells=20, steps=2, seed=4)
    colonies = Synthesizer(b, "cpu").sample(params)
    b.meta["cells"]["cluster_prob"] = 0.0
    scattered = Synthesizer(b, "cpu").sample(params)
    assert colonies.params["cluster_prob"] == 1.0 and scattered.params["cluster_prob"] == 0.0
    assert not np.array_equal(colonies.labels, scattered.labels)
    del b.meta["cells"]["cluster_prob"], b.meta["cells"]["cluster_band"]  # an older bundle
    assert Synthesizer(b, "cpu").clustering(SynthesisParams())[0] == DEFAULT_CLUSTER_PROB
    b.meta["cells"]["cluster_prob"] = 1.5
    b.save(tmp_path / "bad")
    with pytest.raises(CellsynthInputError, match="cluster_prob"):
        GeneratorBundle.load(tmp_path / "bad")


def test_learn_fits_the_optical_blur_and_synthesis_puts_it_on(tiny_bundle, train_folder, tmp_path):
    """The learnt 2D bundle records the blur fitted to its training cells' boundary gradient;
    a blurrier training set asks for more blur; synthesis blurs by the bundle's sigma unless
    told otherwise, which softens the cells' boundaries; a bad value is refused by name."""
    from scipy import ndimage

    from cellsynth.metrics import texture_table
    from cellsynth.synthesize import BLUR_SIGMAS, EDGE_BLUR_SIGMAS

    b = GeneratorBundle.load(tiny_bundle)
    fit = b.meta["optical_blur"]
    assert fit["sigma"] in BLUR_SIGMAS and fit["edge_sigma"] in EDGE_BLUR_SIGMAS
    # the optical blurs without softening, then the softenings with the chosen blur
    assert set(fit["edge_gradient_w1"]) == {f"{s:g}/0" for s in BLUR_SIGMAS} | {
        f"{fit['sigma']:g}/{e:g}" for e in EDGE_BLUR_SIGMAS
    }
    pairs = read_dataset(train_folder).pairs
    images, labels = [p.image for p in pairs], [p.labels for p in pairs]
    synth = Synthesizer(b, "cpu")
    sharp = synth.fit_blur(images, labels)
    soft = synth.fit_blur([ndimage.gaussian_filter(i, 2.0) for i in images], labels)
    # more blur, optical or at the edges (a blurred disc also spreads the intensity inside)
    assert soft["sigma"] + soft["edge_sigma"] > sharp["sigma"] + sharp["edge_sigma"]
    assert soft["edge_gradient_real"] < sharp["edge_gradient_real"]
    params = SynthesisParams(size=(96, 96), cells=8, steps=2, seed=3)
    b.meta["optical_blur"] = {"sigma": 1.5}
    blurred = Synthesizer(b, "cpu").sample(params)
    assert blurred.params["blur"] == 1.5
    plain = Synthesizer(b, "cpu").sample(SynthesisParams(**{**vars(params), "blur": 0.0}))
    assert plain.params["blur"] == 0.0 and np.array_equal(plain.labels, blurred.labels)

    def gradient(pair):
        return np.nanmedian(texture_table(pair.image, pair.labels)["edge_gradient"])

    assert gradient(blurred) < gradient(plain)
    with pytest.raises(CellsynthInputError, match="blur"):
        Synthesizer(b, "cpu").sample(SynthesisParams(**{**vars(params), "blur": -1.0}))
    b.meta["optical_blur"] = {"sigma": 50}
    b.save(tmp_path / "bad")
    with pytest.raises(CellsynthInputError, match=r"optical_blur\.sigma"):
        GeneratorBundle.load(tmp_path / "bad")


def test_edge_blur_softens_the_boundaries_only_and_is_fitted_to_soft_edged_cells(
    tiny_bundle, train_folder
):
    """The edge softening changes the image near the cells' boundaries, not far from them;
    synthesis applies the bundle's (or the parameter's) and records it; training cells with
    soft edges (the same images softened at their boundaries) are fitted a softer edge."""
    from cellsynth.metrics import texture_table
    from cellsynth.synthesize import edge_blur

    pairs = read_dataset(train_folder).pairs
    images, labels = [p.image for p in pairs], [p.labels for p in pairs]
    img, lab = images[0], labels[0]
    soft = edge_blur(img, lab, 1.0)
    assert soft.dtype == img.dtype and edge_blur(img, lab, 0.0) is img
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    far = ndimage.distance_transform_edt(~find_boundaries(lab, mode="thick")) > 6
    assert np.array_equal(soft[far], img[far]) and not np.array_equal(soft, img)

    def gradient(image, labels):
        return np.nanmedian(texture_table(image, labels)["edge_gradient"])

    assert gradient(soft, lab) < gradient(img, lab)
    b = GeneratorBundle.load(tiny_bundle)
    b.meta["optical_blur"] = {"sigma": 0.0, "edge_sigma": 1.0}
    params = SynthesisParams(size=(96, 96), cells=8, steps=2, seed=3)
    softened = Synthesizer(b, "cpu").sample(params)
    sharp = Synthesizer(b, "cpu").sample(SynthesisParams(**{**vars(params), "edge_blur": 0.0}))
    assert softened.params["edge_blur"] == 1.0 and sharp.params["edge_blur"] == 0.0
    assert np.array_equal(softened.labels, sharp.labels)
    assert gradient(softened.image, softened.labels) < gradient(sharp.image, sharp.labels)
    synth = Synthesizer(b, "cpu")
    kw = {"sigmas": (0.0,), "edge_sigmas": (0.0, 0.5, 1.0, 2.0), "frames": 2}
    as_is = synth.fit_blur(images, labels, **kw)
    softer = synth.fit_blur(
        [edge_blur(i, m, 2.0) for i, m in zip(images, labels, strict=True)], labels, **kw
    )
    assert softer["edge_sigma"] > as_is["edge_sigma"]
    assert softer["edge_gradient_real"] < as_is["edge_gradient_real"]
    with pytest.raises(CellsynthInputError, match="edge-blur"):
        synth.sample(SynthesisParams(**{**vars(params), "edge_blur": 11.0}))


def test_cli_synthesize_writes_a_dataset_folder_with_its_parameters(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "synth"
    assert (
        main(
            [
                "synthesize",
                "--bundle",
                str(tiny_bundle),
                "-o",
                str(out),
                "-n",
                "2",
                "--size",
                "48",
                "64",
                "--cells",
                "3",
                "--steps",
                "2",
                "--seed",
                "11",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    ds = read_dataset(out, require_labels=True)
    assert len(ds) == 2
    meta = json.loads((out / "dataset.json").read_text())
    seeds = sorted(r["seed"] for r in meta["samples"].values())
    assert seeds == [11, 12]
    rec = next(iter(meta["samples"].values()))
    fitted = json.loads((tiny_bundle / "bundle.json").read_text())["cells"]["cluster_prob"]
    assert rec["size"] == [48, 64] and rec["cluster_prob"] == fitted
    assert rec["bundle"] == str(tiny_bundle)
    assert meta["origin"] == "synthetic"


def test_cli_synthesize_divisions_draws_touching_sisters(tiny_bundle, tmp_path):
    """--divisions 1: every cell a daughter of a division, drawn beside her sister (same
    shape turned by 180 degrees); the default draws none."""
    from cellsynth.metrics import touching_pairs

    def pairs(out, *extra):
        args = ["-n", "1", "--size", "128", "128", "--cells", "8", "--steps", "2"]
        argv = ["synthesize", "--bundle", str(tiny_bundle), "-o", str(out), *args, *extra]
        assert main([*argv, "--touching", "0", "--device", "cpu"]) == 0
        lab = read_dataset(out, require_labels=True).pairs[0].labels
        return lab, touching_pairs(lab, 1.0)

    lab, touching = pairs(tmp_path / "div", "--divisions", "1")
    assert len(touching) == 4
    for a, b in touching:
        sa, sb = (np.argwhere(lab == v) for v in (a, b))
        assert abs(len(sa) - len(sb)) <= 0.1 * len(sa)  # sisters: one size
    rec = next(
        iter(json.loads((tmp_path / "div" / "dataset.json").read_text())["samples"].values())
    )
    assert rec["divisions"] == 1.0
    assert len(pairs(tmp_path / "none")[1]) == 0


def test_cli_learn_with_a_time_budget(train_folder, tmp_path, capsys):
    out = tmp_path / "b"
    assert (
        main(
            [
                "learn",
                str(train_folder),
                "-o",
                str(out),
                "--tiny",
                "--minutes",
                "0.05",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bundle"] == str(out)
    GeneratorBundle.load(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "64"], "needs H W"),
        (["--cluster-prob", "2"], "between 0 and 1"),
        (["--steps", "0"], "must be >= 1"),
        (["--divisions", "1.5"], "--divisions must be between 0 and 1"),
    ],
)
def test_cli_synthesize_bad_parameters(tiny_bundle, tmp_path, capsys, args, message):
    assert main(["synthesize", "--bundle", str(tiny_bundle), "-o", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


def test_loading_something_that_is_not_a_bundle(tmp_path):
    with pytest.raises(CellsynthInputError, match="not a cellsynth generator bundle"):
        GeneratorBundle.load(tmp_path)
    with pytest.raises(CellsynthInputError, match="not found"):
        GeneratorBundle.load(tmp_path / "missing")


def test_ctrl_c_keeps_the_last_checkpoint_and_resume_continues(train_folder, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "b"
    cmd = [
        sys.executable,
        "-m",
        "cellsynth.cli",
        "learn",
        str(train_folder),
        "-o",
        str(out),
        "--tiny",
        "--minutes",
        "0",
        "--mask-steps",
        "100000",
        "--texture-steps",
        "100000",
        "--checkpoint-minutes",
        "0.001",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "training_state" / "state.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err
    training = GeneratorBundle.load(out).meta["training"]
    steps, tsteps = training["mask_model"]["steps"], training["texture_model"]["steps"]
    assert steps > 0
    resumed = subprocess.run(
        [
            *cmd[:7],
            "--tiny",
            "--minutes",
            "0",
            "--mask-steps",
            str(steps + 2),
            "--texture-steps",
            str(tsteps + 2),
            "--resume",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert GeneratorBundle.load(out).meta["training"]["mask_model"]["steps"] == steps + 2


def test_large_canvases_are_painted_on_overlapping_tiles(tiny_bundle):
    from cellsynth.texture import draw_brightness, paint

    b = GeneratorBundle.load(tiny_bundle)
    labels = disks(shape=(100, 130), centres=((20, 20), (60, 90)), radius=9)
    img = paint(
        b.texture_unet,
        b.texture_sampler(),
        labels,
        b.intensity,
        cfg=b.texture_cfg,
        steps=2,
        max_side=64,
        brightness=draw_brightness(labels, b.brightness_frames, np.random.default_rng(0)),
    )
    assert img.shape == (100, 130)
    assert img.dtype == np.uint16
    assert img.std() > 0


def test_cell_brightness_is_drawn_from_the_training_cells():
    from cellsynth.texture import match_cell_brightness

    lab = disks(shape=(64, 64), centres=((16, 16), (40, 44), (16, 48)), radius=7)
    img = np.where(lab > 0, 150, 100).astype(np.uint16)  # every cell painted alike
    targets = np.array([110.0, 400.0])
    out, _ = match_cell_brightness(img, lab, targets, 100.0, np.random.default_rng(1))
    assert out.dtype == np.uint16 and out.shape == img.shape
    means = [out[lab == i].mean() for i in (1, 2, 3)]
    for m in means:  # each near one of the targets (the smoothed factor softens the rim)
        assert min(abs(m - t) / t for t in targets) < 0.1, means
    assert np.ptp(means) > 100  # no longer all alike
    assert out[0, 0] == 100  # background untouched
    empty, f = match_cell_brightness(
        img, np.zeros_like(lab), targets, 100.0, np.random.default_rng()
    )
    assert np.array_equal(empty, img) and f.size == 0


@pytest.fixture(scope="module")
def posthoc_bundle(train_folder, tmp_path_factory):
    """A bundle whose texture model takes no brightness condition (like older bundles)."""
    out = tmp_path_factory.mktemp("bundles") / "posthoc"
    for _ in learn(read_dataset(train_folder).pairs, out, _settings(brightness_condition=False)):
        pass
    return out


def test_bundles_record_cell_brightness_and_synthesis_uses_it(posthoc_bundle):
    b = GeneratorBundle.load(posthoc_bundle)
    assert b.texture_cfg.cond_channels == 3
    assert b.cell_intensities is not None and len(b.cell_intensities) >= 10
    synth = Synthesizer(b, device="cpu")
    p = dict(size=(64, 64), cells=5, seed=2, steps=2)
    data = synth.sample(SynthesisParams(brightness="data", **p))
    model = synth.sample(SynthesisParams(brightness="model", **p))
    assert data.params["brightness"] == "data" and model.params["brightness"] == "model"
    assert np.array_equal(data.labels, model.labels)  # same cells, only brightness differs
    assert not np.array_equal(data.image, model.image)
    with pytest.raises(CellsynthInputError, match="--brightness"):
        SynthesisParams(brightness="bright").validate()
    # bundles from before per-cell brightness was recorded paint as the model does
    del b.meta["cells"]["mean_intensities"]
    old = Synthesizer(b, device="cpu")
    assert old.bundle.cell_intensities is None
    assert old.sample(SynthesisParams(**p)).params["brightness"] == "model"


def test_no_sliver_of_a_cut_cell_is_smaller_than_the_bundles_minimum(tiny_bundle, monkeypatch):
    """Cells cut by the canvas edge show at least the bundle's ``min_cut_area`` (the training
    images' smallest slivers), and cut cells are common, as in a field of view."""
    synth = Synthesizer(tiny_bundle, device="cpu")
    yy, xx = np.mgrid[-10:11, -10:11]
    disk = xx**2 + yy**2 <= 100  # 317 px
    monkeypatch.setattr(synth, "cell_masks", lambda n, *a, **k: [disk] * n)
    synth.bundle.meta["cells"]["edge_cut"] = 1.0  # a field of view

    def cut_sizes() -> list[int]:
        out = []
        for seed in range(4):
            params = SynthesisParams(size=(96, 96), cells=8, seed=seed)
            lab = synth.population(params, *seeded(seed)).labels
            edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
            sizes = np.bincount(lab.ravel())
            out += [int(sizes[i]) for i in edge if i]
        return out

    synth.bundle.meta["cells"]["min_cut_area"] = 150.0
    assert synth.min_cut_area() == 150
    sizes = cut_sizes()
    assert len(sizes) >= 8 and min(sizes) >= 150 and min(sizes) < disk.sum()
    synth.bundle.meta["cells"].pop("min_cut_area")
    assert synth.min_cut_area() == 9  # bundles that do not record it
    assert min(cut_sizes()) < 150


def test_a_2d_bundle_records_how_often_its_cells_are_cut_by_the_border(tiny_bundle):
    cells = GeneratorBundle.load(tiny_bundle).cells
    assert cells.edge_cut is not None and 0.0 <= cells.edge_cut <= 1.0
