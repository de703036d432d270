"""The four dock widgets driven end to end in a real napari viewer (Xvfb), with tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from conftest import disks, image_for

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def _dataset(root, n=3, seed=0, shape=(96, 96)):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        centres = [tuple(c) for c in rng.integers(12, shape[0] - 12, (6, 2))]
        lab = disks(shape=shape, centres=centres, radius=7)
        tifffile.imwrite(root / "images" / f"p{i}.tif", image_for(lab, i))
        tifffile.imwrite(root / "labels" / f"p{i}.tif", lab)
    return root


def _tiny(settings):
    settings.mask_widths, settings.texture_widths = (8, 16, 16), (8, 16, 16)
    settings.mask_batch, settings.texture_batch, settings.tile = 8, 4, 32
    settings.mask_size, settings.crop_size = 16, 32
    settings.minutes = None
    settings.device = "cpu"


def _wait(qtbot, job, timeout=120_000):
    qtbot.waitUntil(lambda: job is not None and not job.running, timeout=timeout)
    qtbot.wait(50)


@pytest.fixture
def errors(monkeypatch):
    seen = []
    import cellsynth._widgets._common as common

    monkeypatch.setattr(common, "show_error_hook", seen.append, raising=False)

    def record(exc):
        seen.append(str(exc))

    for mod in ("_learn", "_synthesize", "_curate", "_finetune", "_common"):
        m = __import__(f"cellsynth._widgets.{mod}", fromlist=["x"])
        monkeypatch.setattr(m, "notify_error", record)
    return seen


def test_learn_widget_trains_from_layers_with_progress_and_loss_curve(
    make_napari_viewer, qtbot, tmp_path
):
    from cellsynth._widgets._learn import LearnWidget
    from cellsynth.io import read_dataset

    viewer = make_napari_viewer()
    pair = read_dataset(_dataset(tmp_path / "d")).pairs[0]
    img = viewer.add_image(pair.image, name="cells")
    lab = viewer.add_labels(pair.labels, name="cells labels")
    w = LearnWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image_pick.value, w.labels_pick.value = img, lab
    w.output.value = tmp_path / "bundle"

    def configure(s):
        _tiny(s)
        s.mask_steps = s.texture_steps = 12

    w._configure = configure
    w.start_btn.clicked.emit()
    _wait(qtbot, w.job)
    assert (tmp_path / "bundle" / "bundle.json").exists()
    assert w.progress.value == 1000
    assert sum(len(v) for v in w.plot.series.values()) == 24
    assert "done" in w.status.value


def test_learn_widget_cancel_keeps_a_checkpoint(make_napari_viewer, qtbot, tmp_path):
    from cellsynth._widgets._learn import LearnWidget
    from cellsynth.bundle import GeneratorBundle

    viewer = make_napari_viewer()
    w = LearnWidget(viewer)
    w.folder.value = _dataset(tmp_path / "d")
    w.output.value = tmp_path / "bundle"

    def configure(s):
        _tiny(s)
        s.mask_steps = s.texture_steps = 100_000

    w._configure = configure
    w.start_btn.clicked.emit()
    qtbot.waitUntil(lambda: len(w.plot.series.get("mask", [])) >= 3, timeout=60_000)
    w.cancel_btn.clicked.emit()
    _wait(qtbot, w.job)
    b = GeneratorBundle.load(tmp_path / "bundle")
    assert b.meta["training"]["mask_model"]["steps"] >= 3
    assert w.start_btn.enabled


def test_learn_widget_reports_bad_input_as_a_notification(make_napari_viewer, errors):
    from cellsynth._widgets._learn import LearnWidget

    w = LearnWidget(make_napari_viewer())
    w.start_btn.clicked.emit()
    assert errors and "choose an Image layer" in errors[0]
    assert w.job is None


def test_synthesize_widget_adds_named_layers_and_writes_a_folder(
    make_napari_viewer, qtbot, tmp_path
):
    from cellsynth._widgets._synthesize import SynthesizeWidget

    viewer = make_napari_viewer()
    w = SynthesizeWidget(viewer)
    w.canvas_h.value, w.canvas_w.value, w.cells.value, w.steps.value = 64, 80, 3, 2
    w.seed.value, w.how_many.value = 7, 2
    w.save_to.value = tmp_path / "synth"
    w.device.value = "cpu"
    w.run_btn.clicked.emit()
    _wait(qtbot, w.job)
    names = [la.name for la in viewer.layers]
    assert names == [
        "synth bundle_dsb2018 seed 7",
        "synth bundle_dsb2018 seed 7 labels",
        "synth bundle_dsb2018 seed 8",
        "synth bundle_dsb2018 seed 8 labels",
    ]
    assert viewer.layers[1].data.shape == (64, 80)
    meta = json.loads((tmp_path / "synth" / "dataset.json").read_text())
    assert sorted(r["seed"] for r in meta["samples"].values()) == [7, 8]


def test_synthesize_widget_draws_3d_stacks(make_napari_viewer, qtbot):
    from cellsynth._widgets._synthesize import SynthesizeWidget

    viewer = make_napari_viewer()
    w = SynthesizeWidget(viewer)
    assert w.canvas_z.native.isHidden()
    w.dims.value = "3D"
    assert not w.canvas_z.native.isHidden() and not w.rho.native.isHidden()
    w.canvas_z.value, w.canvas_h.value, w.canvas_w.value = 8, 48, 48
    w.cells.value, w.steps.value, w.rho.value = 3, 1, 1.5
    w.device.value = "cpu"
    w.run_btn.clicked.emit()
    _wait(qtbot, w.job)
    img, lab = viewer.layers
    assert lab.data.shape == img.data.shape == (8, 48, 48)
    assert list(lab.scale) == [1.0, 1.0, 1.0]
    assert img.metadata["cellsynth"]["params"]["rho"] == 1.5
    assert "rho 1.5" in w.status.value


def test_curate_widget_saves_corrected_labels_and_never_touches_the_originals(
    make_napari_viewer, qtbot, tmp_path
):
    from cellsynth._widgets._curate import CurateWidget
    from cellsynth.io import read_dataset

    src = _dataset(tmp_path / "synthetic", n=3)
    original = {p.name: tifffile.imread(p) for p in (src / "labels").iterdir()}
    meta = {
        "samples": {
            "p0": {"quality": {"SEG": 0.2}},
            "p1": {"quality": {"SEG": 0.9}},
            "p2": {"quality": {"SEG": 0.5}},
        }
    }
    (src / "dataset.json").write_text(json.dumps(meta))
    viewer = make_napari_viewer()
    w = CurateWidget(viewer)
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


def test_curate_widget_keyboard_shortcuts_and_layers_from_synthesize(
    make_napari_viewer, qtbot, tmp_path
):
    from cellsynth._widgets._curate import CurateWidget

    viewer = make_napari_viewer()
    lab = disks()
    meta = {"cellsynth": {"synthetic": True, "bundle": "/b/mybundle", "params": {"seed": 3}}}
    viewer.add_image(image_for(lab), name="synth mybundle seed 3", metadata=meta)
    viewer.add_labels(lab, name="synth mybundle seed 3 labels", metadata=meta)
    w = CurateWidget(viewer)
    w.output.value = tmp_path / "curated"
    w.load_btn.clicked.emit()
    assert w.current.name == "mybundle_seed3"
    from app_model.types import KeyBinding

    viewer.keymap[KeyBinding.from_str("A")](viewer)  # the A key accepts
    assert (tmp_path / "curated" / "labels" / "mybundle_seed3.tif").exists()
    assert w.accepted == 1
    assert "all pairs reviewed" in w.current_label.value


def test_finetune_widget_trains_in_a_subprocess_then_predicts_and_evaluates(
    make_napari_viewer, qtbot, tmp_path, errors
):
    from cellsynth._widgets._finetune import FinetuneWidget
    from cellsynth.io import read_dataset

    viewer = make_napari_viewer()
    real = _dataset(tmp_path / "real")
    pair = read_dataset(real).pairs[0]
    img = viewer.add_image(pair.image, name="real")
    lab = viewer.add_labels(pair.labels, name="real labels")
    w = FinetuneWidget(viewer)
    w.image_pick.value, w.labels_pick.value = img, lab
    w.synthetic.value = _dataset(tmp_path / "synthetic", seed=1)
    w.validation.value = real
    w.epochs.value = 1
    w.device.value = "cpu"
    w.output.value = tmp_path / "model"
    w.extra_settings = {"bsize": 64, "batch_size": 4, "nimg_per_epoch": 4}
    w.start_btn.clicked.emit()
    _wait(qtbot, w.job, timeout=180_000)
    assert (tmp_path / "model").exists()
    qtbot.waitUntil(lambda: bool(w.evaluation or errors), timeout=120_000)
    assert not errors
    assert set(w.evaluation) >= {"SEG", "AP50", "bPQ"}
    assert any(la.name == "predictions model" for la in viewer.layers)
    assert w.table.shape[0] == 1
    assert tuple(w.table.column_headers) == ("SEG", "AP50", "bPQ", "images")


def test_finetune_widget_cancel_keeps_the_last_weights(make_napari_viewer, qtbot, tmp_path):
    from cellsynth._widgets._finetune import FinetuneWidget
    from cellsynth.segment import load_model

    viewer = make_napari_viewer()
    w = FinetuneWidget(viewer)
    w.real_folder.value = _dataset(tmp_path / "real")
    w.epochs.value = 500
    w.device.value = "cpu"
    w.output.value = tmp_path / "model"
    w.extra_settings = {"bsize": 64, "batch_size": 4, "nimg_per_epoch": 4}
    w.start_btn.clicked.emit()
    qtbot.waitUntil(lambda: w.progress.value > 0, timeout=120_000)
    w.cancel_btn.clicked.emit()
    _wait(qtbot, w.job, timeout=120_000)
    assert w.subprocess.result.kind == "cancelled"
    load_model(tmp_path / "model", "cpu")


def test_plugin_menu_lists_the_four_widgets():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    names = {w.display_name for w in pm.get_manifest("cellsynth").contributions.widgets}
    assert names == {"Learn", "Synthesize", "Curate", "Fine-tune"}


def test_widgets_hand_their_results_to_the_next_step(make_napari_viewer, qtbot, tmp_path):
    from cellsynth._widgets._curate import CurateWidget
    from cellsynth._widgets._finetune import FinetuneWidget
    from cellsynth._widgets._learn import LearnWidget
    from cellsynth._widgets._synthesize import SynthesizeWidget
    from cellsynth.bundle import builtin_bundle_path

    viewer = make_napari_viewer()
    learn, synth = LearnWidget(viewer), SynthesizeWidget(viewer)
    curate, tune = CurateWidget(viewer), FinetuneWidget(viewer)
    learn.output.value = builtin_bundle_path()  # as if training had just written it
    learn._on_finished()
    assert str(synth.bundle.value) == str(builtin_bundle_path())
    lab = disks()
    meta = {"cellsynth": {"synthetic": True, "bundle": "/b/x", "params": {"seed": 0}}}
    viewer.add_image(image_for(lab), name="synth x seed 0", metadata=meta)
    viewer.add_labels(lab, name="synth x seed 0 labels", metadata=meta)
    curate.output.value = tmp_path / "curated"
    curate.load_btn.clicked.emit()
    curate.accept()
    assert str(tune.synthetic.value) == str(tmp_path / "curated")
