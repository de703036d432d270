"""The four dock widgets, opened from the Plugins menu's path on a real viewer (Xvfb), tiny models.

Every widget comes from ``window.add_plugin_dock_widget`` on a ``make_napari_viewer_proxy``
viewer, as a user gets it; napari's exception hooks are on (conftest.py), so a traceback
notification fails the test, and ``notifications`` lists what the user was told.
"""

from __future__ import annotations

import glob
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellsynth.errors import CellsynthInputError
from conftest import disks, image_for

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def open_widget(viewer, name: str):
    """The widget as *Plugins ▸ cellsynth ▸ name* opens it."""
    _, widget = viewer.window.add_plugin_dock_widget("cellsynth", name)
    return widget


def _dataset(root, n=3, seed=0, shape=(96, 96), origin=None):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        centres = [tuple(c) for c in rng.integers(12, shape[0] - 12, (6, 2))]
        lab = disks(shape=shape, centres=centres, radius=7)
        tifffile.imwrite(root / "images" / f"p{i}.tif", image_for(lab, i))
        tifffile.imwrite(root / "labels" / f"p{i}.tif", lab)
    if origin is not None:
        (root / "dataset.json").write_text(json.dumps({"origin": origin}))
    return root


def tiny(steps=12, minutes=None):
    def configure(s):
        s.use_tiny_models()
        s.mask_size, s.crop_size = 16, 32
        s.mask_steps = s.texture_steps = steps
        s.minutes = minutes
        s.device = "cpu"

    return configure


def _wait(qtbot, get_job, timeout=120_000):
    qtbot.waitUntil(lambda: get_job() is not None and not get_job().running, timeout=timeout)
    qtbot.wait(50)


def _pair_layers(viewer, tmp_path, n=1):
    from cellsynth.io import read_dataset

    pair = read_dataset(_dataset(tmp_path / "d", n=n)).pairs[0]
    img = viewer.add_image(pair.image, name="cells")
    lab = viewer.add_labels(pair.labels, name="cells labels")
    return img, lab


# ---------------------------------------------------------------------- Learn


def _learn_from_layers(viewer, tmp_path, configure):
    """Learn (on an Image + Labels pair of layers) and Synthesize, opened from the menu."""
    img, lab = _pair_layers(viewer, tmp_path)
    w = open_widget(viewer, "Learn")
    synth = open_widget(viewer, "Synthesize")
    w.image_pick.value, w.labels_pick.value = img, lab
    w.output.value = tmp_path / "bundle"
    w._configure = configure
    return w, synth


def _learn_from_a_folder(viewer, tmp_path, configure):
    """Learn started on a data folder, opened from the menu."""
    w = open_widget(viewer, "Learn")
    w.folder.value = _dataset(tmp_path / "d")
    w.output.value = tmp_path / "bundle"
    w._configure = configure
    w.start_btn.clicked.emit()
    return w


def test_learn_trains_from_layers_with_progress_and_hands_the_bundle_on(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    w, synth = _learn_from_layers(make_napari_viewer_proxy(), tmp_path, tiny(12))
    w.progress.value = 1000  # a previous run's bar
    w.start_btn.clicked.emit()
    assert w.progress.value == 0  # reset at start
    _wait(qtbot, lambda: w.job)
    assert (tmp_path / "bundle" / "bundle.json").exists()
    assert w.progress.value == 1000 and w.steps_trained == 24
    assert sum(len(v) for v in w.plot.series.values()) == 24
    assert w.plot.drawn_points == 24
    assert w.status.value.startswith("done")
    assert str(synth.bundle.value) == str(tmp_path / "bundle")
    assert notifications.errors == []
    assert any("bundle saved" in m for m in notifications.infos)


def test_learn_loss_plot_draws_its_first_point():
    from cellsynth._widgets._common import LossPlot

    plot = LossPlot()
    plot.add("mask", 1, 0.5)
    assert plot.drawn_points == 1
    assert plot.ax.get_lines()[0].get_marker() == "o"  # a lone point shows


def test_learn_that_trains_no_step_says_so_and_hands_nothing_on(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    # the budget is gone while preparing the data
    w, synth = _learn_from_layers(make_napari_viewer_proxy(), tmp_path, tiny(12, minutes=1e-6))
    w.start_btn.clicked.emit()
    _wait(qtbot, lambda: w.job)
    assert w.steps_trained == 0
    assert w.status.value.startswith("no training step ran")
    assert w.progress.value == 0 and w.bundle_path is None
    assert synth.bundle.value is None or str(synth.bundle.value) in ("", ".")
    assert not any("bundle saved" in m for m in notifications.infos)
    assert len([m for m in notifications.warnings if "no training step ran" in m]) == 1


def test_learn_resume_that_trains_no_step_says_so(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    w = _learn_from_a_folder(make_napari_viewer_proxy(), tmp_path, tiny(6))
    _wait(qtbot, lambda: w.job)
    assert w.steps_trained == 12
    w._configure = tiny(100, minutes=1e-6)
    w.resume_btn.clicked.emit()
    _wait(qtbot, lambda: w.job)
    assert w.steps_trained == 0
    assert w.status.value.startswith("no training step ran")


def test_learn_trains_in_a_subprocess_whose_cancel_leaves_a_resumable_checkpoint(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    import os

    from cellsynth.bundle import GeneratorBundle

    viewer = make_napari_viewer_proxy()
    img, lab = _pair_layers(viewer, tmp_path)
    w = open_widget(viewer, "Learn")
    w.image_pick.value, w.labels_pick.value = img, lab
    w.output.value = tmp_path / "bundle"
    w._configure = tiny(100_000)
    w.start_btn.clicked.emit()
    child = w.subprocess.process
    assert child.proc.pid != os.getpid()  # not in napari's process
    copy = w._tmp  # the layers, written for the subprocess
    assert copy is not None and copy.exists()
    qtbot.waitUntil(lambda: len(w.plot.series.get("mask", [])) >= 3, timeout=120_000)
    w.cancel_btn.clicked.emit()
    _wait(qtbot, lambda: w.job)
    assert w.subprocess.result.kind == "cancelled" and not child.running
    assert not copy.exists()  # removed when the job ended
    steps = GeneratorBundle.load(tmp_path / "bundle").meta["training"]["mask_model"]["steps"]
    assert steps >= 3
    assert w.start_btn.enabled
    assert w.status.value.startswith("cancelled; the last checkpoint")
    assert str(tmp_path / "bundle") in w.status.value
    # ... and Resume continues from that checkpoint
    w._configure = tiny(steps + 2)
    w.resume_btn.clicked.emit()
    _wait(qtbot, lambda: w.job)
    assert w.status.value.startswith("done"), w.status.value
    resumed = GeneratorBundle.load(tmp_path / "bundle").meta["training"]["mask_model"]["steps"]
    assert resumed == steps + 2 and w.steps_trained >= 2
    assert notifications.errors == []


def test_learn_3d_stacks_runs_the_3d_fits_in_the_subprocess(
    make_napari_viewer_proxy, qtbot, tmp_path, ctc_folder, notifications
):
    viewer = make_napari_viewer_proxy()
    w = open_widget(viewer, "Learn")
    w.folder.value = ctc_folder / "02"  # stacks with one annotated slice each
    w.output.value = tmp_path / "bundle3d"
    w.three_d.value = True
    w._configure = tiny(3)
    w._configure_3d = lambda s: setattr(s, "multiview_steps", 1)
    w.start_btn.clicked.emit()
    _wait(qtbot, lambda: w.job)
    assert w.status.value.startswith("done"), w.status.value
    meta = json.loads((tmp_path / "bundle3d" / "bundle.json").read_text())
    assert "shape_prior" in meta and meta["settings_3d"]["multiview_steps"] == 1
    assert notifications.errors == []


def test_closing_napari_stops_a_running_learn(make_napari_viewer_proxy, qtbot, tmp_path):
    viewer = make_napari_viewer_proxy()
    w = _learn_from_a_folder(viewer, tmp_path, tiny(100_000))
    child = w.subprocess.process
    assert child.running
    viewer.close()
    qtbot.waitUntil(lambda: not child.running, timeout=120_000)


def test_widget_defaults_are_the_core_settings_defaults(make_napari_viewer_proxy):
    from cellsynth.learn import LearnSettings
    from cellsynth.segmenters import FinetuneSettings
    from cellsynth.synthesize import SynthesisParams

    viewer = make_napari_viewer_proxy()
    learn, tune = open_widget(viewer, "Learn"), open_widget(viewer, "Fine-tune")
    synth = open_widget(viewer, "Synthesize")
    assert learn.minutes.value == LearnSettings().minutes
    assert tune.epochs.value == FinetuneSettings().epochs
    assert tune.p_real.value == FinetuneSettings().p_real
    assert synth.params() == SynthesisParams()  # texture steps 0 = the bundle's (None)
    synth.exemplar.value = 0.4  # exemplar strength: 0 = the bundle's, else passed on
    assert synth.params().exemplar_strength == pytest.approx(0.4)
    synth.divisions.value = 0.5  # dividing cells: passed on as they are (default 0, none)
    assert synth.params().divisions == pytest.approx(0.5)
    synth.dims.value = "3D"
    # 3D stacks start from exemplars too (3D bundles holding them); the blurs are 2D only
    assert not synth.exemplar.native.isHidden() and synth.blur.native.isHidden()


def test_layer_pickers_list_the_layers_of_their_napari_class(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    w = open_widget(viewer, "Learn")
    img = viewer.add_image(np.zeros((8, 8)), name="an image")
    lab = viewer.add_labels(np.zeros((8, 8), np.uint16), name="some labels")
    viewer.add_points(np.zeros((1, 2)), name="points")
    assert [c for c in w.image_pick.choices if c is not None] == [img]
    assert [c for c in w.labels_pick.choices if c is not None] == [lab]
    viewer.layers.remove(lab)
    assert [c for c in w.labels_pick.choices if c is not None] == []


def test_picking_an_image_layer_picks_its_labels_by_their_link(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    viewer.open_sample("cellsynth", "nuclei")
    unrelated = viewer.add_labels(np.zeros((8, 8), np.uint16), name="unrelated")
    image, labels = viewer.layers[0], viewer.layers[1]
    for name in ("Learn", "Fine-tune"):
        w = open_widget(viewer, name)
        w.image_pick.value, w.labels_pick.value = None, unrelated
        w.image_pick.value = image
        assert w.labels_pick.value.name == labels.name


def test_learn_bad_input_is_one_notification(make_napari_viewer_proxy, notifications):
    w = open_widget(make_napari_viewer_proxy(), "Learn")
    w.start_btn.clicked.emit()
    assert len(notifications.errors) == 1 and "choose an Image layer" in notifications.errors[0]
    assert w.job is None


def test_finetune_pretrain_epochs_reach_the_job_and_need_a_synthetic_folder(
    make_napari_viewer_proxy, tmp_path, notifications
):
    viewer = make_napari_viewer_proxy()
    img, lab = _pair_layers(viewer, tmp_path)
    w = open_widget(viewer, "Fine-tune")
    assert w.pretrain_epochs.value == 0  # off unless asked for
    w.image_pick.value, w.labels_pick.value = img, lab
    w.output.value = tmp_path / "model"
    w.pretrain_epochs.value = 3
    w.start_btn.clicked.emit()  # no synthetic folder: one clear error, nothing started
    assert len(notifications.errors) == 1 and "synthetic folder" in notifications.errors[0]
    assert w.subprocess is None
    w.synthetic.value = _dataset(tmp_path / "synthetic", seed=1, origin="synthetic")
    spec = w._spec()
    w._remove_tmp()
    assert spec["settings"]["pretrain_epochs"] == 3 and spec["synthetic"]
    (tmp_path / "model_synthetic_pretrain").write_bytes(b"mine")  # never overwritten
    with pytest.raises(CellsynthInputError, match="first stage"):
        w._spec()
    assert (tmp_path / "model_synthetic_pretrain").read_bytes() == b"mine"


def test_learn_into_a_used_folder_names_the_resume_button(
    make_napari_viewer_proxy, tmp_path, notifications
):
    viewer = make_napari_viewer_proxy()
    img, lab = _pair_layers(viewer, tmp_path)
    w = open_widget(viewer, "Learn")
    w.image_pick.value, w.labels_pick.value = img, lab
    used = tmp_path / "used"
    used.mkdir()
    (used / "x.txt").write_text("mine")
    w.output.value = used
    w.start_btn.clicked.emit()
    w.resume_btn.clicked.emit()
    assert len(notifications.errors) == 2
    assert "press Resume" in notifications.errors[0] and "--" not in notifications.errors[0]
    assert (
        "nothing to resume" in notifications.errors[1] or "no training" in (notifications.errors[1])
    )
    assert w.job is None and (used / "x.txt").read_text() == "mine"


def test_learn_error_in_the_worker_is_one_notification_and_resets_the_status(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    viewer = make_napari_viewer_proxy()
    lab = disks(centres=((32, 32),))  # one cell: the atlas refuses, inside the worker
    img = viewer.add_image(image_for(lab), name="one")
    labels = viewer.add_labels(lab, name="one labels")
    w = open_widget(viewer, "Learn")
    w.image_pick.value, w.labels_pick.value = img, labels
    w.output.value = tmp_path / "bundle"
    w._configure = tiny(12)
    w.start_btn.clicked.emit()
    _wait(qtbot, lambda: w.job)
    qtbot.wait(100)
    assert len(notifications.errors) == 1 and "usable cell" in notifications.errors[0]
    assert notifications.tracebacks == []
    assert w.status.value.startswith("failed:") and w.start_btn.enabled


# ---------------------------------------------------------------------- Synthesize


def _synth(viewer, qtbot, seed=7, how_many=1, **values):
    w = open_widget(viewer, "Synthesize")
    w.canvas_h.value, w.canvas_w.value, w.cells.value, w.steps.value = 64, 80, 3, 1
    w.seed.value, w.how_many.value, w.device.value = seed, how_many, "cpu"
    for k, v in values.items():
        getattr(w, k).value = v
    w.run_btn.clicked.emit()
    if w.job is not None:  # None: refused at once
        _wait(qtbot, lambda: w.job)
    return w


def test_synthesize_adds_linked_pairs_side_by_side_and_writes_a_folder(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    viewer = make_napari_viewer_proxy()
    _synth(viewer, qtbot, seed=7, how_many=2, save_to=tmp_path / "synth")
    names = [la.name for la in viewer.layers]
    assert names == [
        "synth bundle_dsb2018 seed 7",
        "synth bundle_dsb2018 seed 7 labels",
        "synth bundle_dsb2018 seed 8",
        "synth bundle_dsb2018 seed 8 labels",
    ]
    assert viewer.layers[1].data.shape == (64, 80)
    # side by side: the second pair starts right of the first one
    first, second = viewer.layers[0], viewer.layers[2]
    assert second.translate[-1] >= first.translate[-1] + 80 * first.scale[-1]
    assert tuple(viewer.layers[3].translate) == tuple(second.translate)
    ids = [la.metadata["cellsynth"]["pair_id"] for la in viewer.layers]
    assert ids[0] == ids[1] != ids[2] == ids[3]
    meta = json.loads((tmp_path / "synth" / "dataset.json").read_text())
    assert sorted(r["seed"] for r in meta["samples"].values()) == [7, 8]
    assert notifications.errors == []


def test_synthesize_draws_what_the_core_synthesize_draws_and_leaves_no_temporary_folder(
    make_napari_viewer_proxy, qtbot, tmp_path
):
    from cellsynth.synthesize import synthesize

    before = set(glob.glob(str(Path(tempfile.gettempdir()) / "cellsynth-synth-*")))
    viewer = make_napari_viewer_proxy()
    w = _synth(viewer, qtbot, seed=11)
    img, lab = viewer.layers
    assert img.metadata["cellsynth"]["dataset_name"] is None  # nothing kept on disk
    assert w.params().cluster_prob is None  # the bundle's clustering, as the CLI's default
    assert w.params().blur is None  # the bundle's optical blur, likewise
    after = set(glob.glob(str(Path(tempfile.gettempdir()) / "cellsynth-synth-*")))
    assert after <= before
    for _ in synthesize(tmp_path / "cli", 1, w.params(), device="cpu"):
        pass
    assert np.array_equal(tifffile.imread(tmp_path / "cli" / "images" / "synth_0011.tif"), img.data)
    assert np.array_equal(tifffile.imread(tmp_path / "cli" / "labels" / "synth_0011.tif"), lab.data)


def test_synthesize_refuses_a_real_data_set_as_its_folder(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    real = _dataset(tmp_path / "real", n=1)
    (real / "labels").rename(real / "masks")  # annotations in masks/
    before = sorted(p.relative_to(real) for p in real.rglob("*"))
    viewer = make_napari_viewer_proxy()
    w = _synth(viewer, qtbot, save_to=real)
    assert w.job is None and len(viewer.layers) == 0
    assert len(notifications.errors) == 1 and "masks/" in notifications.errors[0]
    assert sorted(p.relative_to(real) for p in real.rglob("*")) == before


def test_synthesize_from_a_folder_that_is_no_bundle_is_one_notification(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    viewer = make_napari_viewer_proxy()
    (tmp_path / "empty").mkdir()
    w = _synth(viewer, qtbot, bundle=tmp_path / "empty")
    assert len(notifications.errors) == 1 and "no bundle.json" in notifications.errors[0]
    assert w.job is None and w.run_btn.enabled


def test_synthesize_error_in_the_worker_is_one_notification(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bundle.json").write_text("{ not json")
    viewer = make_napari_viewer_proxy()
    w = _synth(viewer, qtbot, bundle=bad)
    qtbot.wait(100)
    assert len(notifications.errors) == 1 and "bundle.json" in notifications.errors[0]
    assert notifications.tracebacks == []
    assert w.status.value.startswith("failed") and w.run_btn.enabled


def test_synthesize_draws_3d_stacks(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    w = open_widget(viewer, "Synthesize")
    assert w.canvas_z.native.isHidden()
    w.dims.value = "3D"
    assert not w.canvas_z.native.isHidden() and not w.rho.native.isHidden()
    w.canvas_z.value, w.canvas_h.value, w.canvas_w.value = 8, 48, 48
    w.cells.value, w.steps.value, w.rho.value = 3, 1, 1.5
    w.device.value = "cpu"
    w.run_btn.clicked.emit()
    _wait(qtbot, lambda: w.job)
    img, lab = viewer.layers
    assert lab.data.shape == img.data.shape == (8, 48, 48)
    assert list(lab.scale) == [1.0, 1.0, 1.0]
    assert img.metadata["cellsynth"]["params"]["rho"] == 1.5
    assert "rho 1.5" in w.status.value


# ---------------------------------------------------------------------- Curate


def test_curate_finds_both_pairs_of_two_runs_with_the_same_seed(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    viewer = make_napari_viewer_proxy()
    _synth(viewer, qtbot, seed=5)
    _synth(viewer, qtbot, seed=5)
    assert viewer.layers[2].name.endswith("[1]")  # napari renamed the second pair
    c = open_widget(viewer, "Curate")
    c.output.value = tmp_path / "curated"
    c.load_btn.clicked.emit()
    assert len(c.candidates) == 2
    c.accept_btn.clicked.emit()
    c.accept_btn.clicked.emit()
    assert c.accepted == 2
    assert len(list((tmp_path / "curated" / "labels").glob("*.tif"))) == 2
    assert notifications.errors == []


def test_curate_finds_a_3d_pair_by_its_link(make_napari_viewer_proxy, tmp_path):
    from cellsynth._widgets._common import link_metadata

    viewer = make_napari_viewer_proxy()
    vol = disks(shape=(5, 48, 48), centres=((2, 20, 20), (2, 30, 34)), radius=5)
    meta = {"cellsynth": {"synthetic": True, "bundle": "/b/b3", "params": {"seed": 1}}}
    im, lm = link_metadata(meta)
    viewer.add_image(image_for(vol), name="renamed by the user", metadata=im)
    viewer.add_labels(vol, name="something else", metadata=lm)
    c = open_widget(viewer, "Curate")
    c.output.value = tmp_path / "curated"
    c.load_btn.clicked.emit()
    assert [x.name for x in c.candidates] == ["b3_seed1"]
    assert c.labels_layer.data.shape == (5, 48, 48)


def test_curate_saves_corrected_labels_and_never_touches_the_originals(
    make_napari_viewer_proxy, tmp_path
):
    from cellsynth.io import read_dataset

    src = _dataset(tmp_path / "synthetic", n=3)
    original = {p.name: tifffile.imread(p) for p in (src / "labels").iterdir()}
    meta = {
        "origin": "synthetic",
        "samples": {
            "p0": {"quality": {"SEG": 0.2}},
            "p1": {"quality": {"SEG": 0.9}},
            "p2": {"quality": {"SEG": 0.5}},
        },
    }
    (src / "dataset.json").write_text(json.dumps(meta))
    viewer = make_napari_viewer_proxy()
    w = open_widget(viewer, "Curate")
    w.source.value, w.output.value = src, tmp_path / "curated"
    w.load_btn.clicked.emit()
    assert w.current.name == "p1"  # best quality first
    w.labels_layer.data[:5, :5] = 99  # a correction with napari's Labels tools
    w.labels_layer.refresh()
    w.accept_btn.clicked.emit()
    assert w.current.name == "p2"
    w.reject_btn.clicked.emit()
    assert "accepted 1 · rejected 1" in w.counts.value
    curated = read_dataset(tmp_path / "curated", require_labels=True)
    assert [p.name for p in curated] == ["p1"]
    assert curated.pairs[0].labels[:5, :5].max() == 99
    cmeta = json.loads((tmp_path / "curated" / "dataset.json").read_text())
    assert cmeta["samples"]["p1"]["status"] == "accepted"
    assert cmeta["samples"]["p1"]["corrected"] is True
    assert "p2" in cmeta["rejected"]
    for p in (src / "labels").iterdir():
        assert np.array_equal(tifffile.imread(p), original[p.name])


def test_curate_refuses_a_real_data_set_as_synthetic_source_and_target(
    make_napari_viewer_proxy, tmp_path, notifications
):
    real = _dataset(tmp_path / "real", n=2, origin="real")
    viewer = make_napari_viewer_proxy()
    w = open_widget(viewer, "Curate")
    w.source.value, w.output.value = real, tmp_path / "curated"
    w.load_btn.clicked.emit()
    assert len(notifications.errors) == 1 and "not a synthetic data set" in notifications.errors[0]
    assert w.candidates == []
    w.source.value = _dataset(tmp_path / "synthetic", n=1, origin="synthetic")
    w.output.value = real
    w.load_btn.clicked.emit()
    w.accept_btn.clicked.emit()
    assert len(notifications.errors) == 2 and "origin 'real'" in notifications.errors[1]
    assert sorted(p.name for p in (real / "labels").iterdir()) == ["p0.tif", "p1.tif"]


def test_curate_keyboard_shortcut_accepts(make_napari_viewer_proxy, tmp_path):
    from app_model.types import KeyBinding

    from cellsynth._widgets._common import link_metadata

    viewer = make_napari_viewer_proxy()
    lab = disks()
    im, lm = link_metadata(
        {"cellsynth": {"synthetic": True, "bundle": "/b/mybundle", "params": {"seed": 3}}}
    )
    viewer.add_image(image_for(lab), name="synth mybundle seed 3", metadata=im)
    viewer.add_labels(lab, name="synth mybundle seed 3 labels", metadata=lm)
    w = open_widget(viewer, "Curate")
    w.output.value = tmp_path / "curated"
    w.load_btn.clicked.emit()
    assert w.current.name == "mybundle_seed3"
    viewer.keymap[KeyBinding.from_str("A")](viewer)  # the A key accepts
    assert (tmp_path / "curated" / "labels" / "mybundle_seed3.tif").exists()
    assert w.accepted == 1
    assert "all pairs reviewed" in w.current_label.value


# ---------------------------------------------------------------------- Fine-tune

TINY_CELLPOSE = {"bsize": 64, "batch_size": 4, "nimg_per_epoch": 4}


def _real_copies() -> set[str]:
    return set(glob.glob(str(Path(tempfile.gettempdir()) / "cellsynth-real-*")))


def test_finetune_trains_in_a_subprocess_then_predicts_evaluates_and_cleans_up(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    viewer = make_napari_viewer_proxy()
    real = _dataset(tmp_path / "real")
    img, lab = _pair_layers(viewer, tmp_path)
    before = _real_copies()
    w = open_widget(viewer, "Fine-tune")
    w.image_pick.value, w.labels_pick.value = img, lab
    w.synthetic.value = _dataset(tmp_path / "synthetic", seed=1, origin="synthetic")
    w.validation.value = real
    w.epochs.value = 1
    w.device.value = "cpu"
    w.output.value = tmp_path / "model"
    w.extra_settings = dict(TINY_CELLPOSE)
    w.progress.value = 1000
    w.start_btn.clicked.emit()
    assert w.progress.value == 0
    copy = w._tmp  # the layers went to a temporary folder for the subprocess
    assert copy is not None and str(copy) in _real_copies() - before
    _wait(qtbot, lambda: w.job, timeout=180_000)
    assert (tmp_path / "model").exists()
    assert not copy.exists()  # ... removed when the job ended
    qtbot.waitUntil(lambda: bool(w.evaluation or notifications.errors), timeout=120_000)
    assert notifications.errors == []
    assert set(w.evaluation) >= {"SEG", "AP50", "bPQ"}
    assert any(la.name == "predictions model" for la in viewer.layers)
    assert w.plot.drawn_points >= 1
    assert w.table.shape[0] == 1
    assert tuple(w.table.column_headers) == ("SEG", "AP50", "bPQ", "images")
    # a prediction without any cell is reported, not shown silently
    blank = viewer.add_image(np.zeros((96, 96), np.uint16), name="blank")
    w.image_pick.value, w.validation.value = blank, ""
    w.predict_and_evaluate()
    _wait(qtbot, lambda: w.job)
    assert w.predicted_cells == 0
    assert any("found no cells" in m for m in notifications.warnings)


def test_finetune_cancel_keeps_the_last_weights(make_napari_viewer_proxy, qtbot, tmp_path):
    from cellsynth.segment import load_model

    viewer = make_napari_viewer_proxy()
    w = open_widget(viewer, "Fine-tune")
    w.real_folder.value = _dataset(tmp_path / "real")
    w.epochs.value = 500
    w.device.value = "cpu"
    w.output.value = tmp_path / "model"
    w.extra_settings = dict(TINY_CELLPOSE)
    w.start_btn.clicked.emit()
    qtbot.waitUntil(lambda: w.progress.value > 0, timeout=120_000)
    w.cancel_btn.clicked.emit()
    _wait(qtbot, lambda: w.job, timeout=120_000)
    assert w.subprocess.result.kind == "cancelled"
    assert w.status.value.startswith("cancelled after")
    load_model(tmp_path / "model", "cpu")


def test_finetune_cancelled_before_the_first_batch_says_so_and_predicts_nothing(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    viewer = make_napari_viewer_proxy()
    w = open_widget(viewer, "Fine-tune")
    w.real_folder.value = _dataset(tmp_path / "real")
    w.device.value = "cpu"
    w.output.value = tmp_path / "model"
    w.extra_settings = dict(TINY_CELLPOSE)
    w.progress.value = 1000
    w.start_btn.clicked.emit()
    w.cancel_btn.clicked.emit()
    _wait(qtbot, lambda: w.job, timeout=120_000)
    assert w.status.value.startswith("cancelled before the first training batch")
    assert w.progress.value == 0
    assert not any(la.name.startswith("predictions") for la in viewer.layers)
    assert not any("model written" in m for m in notifications.infos)
    assert len([m for m in notifications.warnings if "cancelled before" in m]) == 1


def test_closing_napari_stops_a_running_finetune(make_napari_viewer_proxy, qtbot, tmp_path):
    viewer = make_napari_viewer_proxy()
    w = open_widget(viewer, "Fine-tune")
    w.real_folder.value = _dataset(tmp_path / "real")
    w.epochs.value, w.device.value = 500, "cpu"
    w.output.value = tmp_path / "model"
    w.extra_settings = dict(TINY_CELLPOSE)
    w.start_btn.clicked.emit()
    job = w.subprocess
    assert job.running
    viewer.close()
    qtbot.waitUntil(lambda: not job.running, timeout=120_000)


def test_finetune_existing_model_file_is_one_notification(
    make_napari_viewer_proxy, tmp_path, notifications
):
    viewer = make_napari_viewer_proxy()
    w = open_widget(viewer, "Fine-tune")
    w.real_folder.value = _dataset(tmp_path / "real")
    (tmp_path / "model").write_text("someone's model")
    w.output.value = tmp_path / "model"
    w.start_btn.clicked.emit()
    assert len(notifications.errors) == 1 and "already exists" in notifications.errors[0]
    assert w.subprocess is None


def test_widgets_hand_their_results_to_the_next_step(make_napari_viewer_proxy, tmp_path):
    from cellsynth._widgets._common import link_metadata

    viewer = make_napari_viewer_proxy()
    curate, tune = open_widget(viewer, "Curate"), open_widget(viewer, "Fine-tune")
    lab = disks()
    im, lm = link_metadata(
        {"cellsynth": {"synthetic": True, "bundle": "/b/x", "params": {"seed": 0}}}
    )
    viewer.add_image(image_for(lab), name="synth x seed 0", metadata=im)
    viewer.add_labels(lab, name="synth x seed 0 labels", metadata=lm)
    curate.output.value = tmp_path / "curated"
    curate.load_btn.clicked.emit()
    curate.accept()
    assert str(tune.synthetic.value) == str(tmp_path / "curated")


def test_cpu_threads_setting_reaches_the_training_jobs_and_synthesis(
    make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch
):
    """Learn, Fine-tune and Synthesize have a 'CPU threads' box (0 = automatic); its value goes
    into the subprocess job's spec (the child sets torch's threads from it) and into the
    synthesis worker."""
    import torch

    viewer = make_napari_viewer_proxy()
    learn, tune = open_widget(viewer, "Learn"), open_widget(viewer, "Fine-tune")
    for w in (learn, tune, open_widget(viewer, "Synthesize")):
        assert w.threads.value == 0  # automatic by default
    _dataset(tmp_path / "data")
    learn.folder.value = str(tmp_path / "data")
    learn.threads.value = 1
    assert learn._spec(tmp_path / "b", resume=False)["threads"] == 1
    tune.real_folder.value = str(tmp_path / "data")
    tune.output.value = str(tmp_path / "model")
    tune.threads.value = 1
    assert tune._spec()["threads"] == 1
    learn.threads.value = 0
    assert learn._spec(tmp_path / "b", resume=False)["threads"] is None
    seen = []
    monkeypatch.setattr("cellsynth.device.configure_threads", lambda n=None: seen.append(n) or 1)
    before = torch.get_num_threads()
    w = _synth(viewer, qtbot, seed=3, threads=1)
    assert seen == [1] and len(viewer.layers) >= 2
    assert torch.get_num_threads() == before
    assert w.threads.value == 1
