"""docs/usage.md's loop, end to end, as a user walks it: menu → sample → Learn → Synthesize twice
(same seed) → Curate (edit, accept, write) → Fine-tune → predictions; then the files on disk.

Tiny models and budgets keep it to about a minute on one core; napari's exception hooks are on
(conftest.py), so any traceback notification on the way fails it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def _menu(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget("cellsynth", name)
    return widget


def _wait(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running, timeout=timeout)
    qtbot.wait(50)


def test_the_usage_loop_from_the_menu_to_predictions(
    make_napari_viewer_proxy, qtbot, tmp_path, notifications
):
    viewer = make_napari_viewer_proxy()

    # 0. sample data from File ▸ Open Sample
    viewer.open_sample("cellsynth", "nuclei")
    image, labels = viewer.layers

    # 1. Learn a (tiny) bundle from the sample's layers
    learn = _menu(viewer, "Learn")
    synth = _menu(viewer, "Synthesize")
    learn.image_pick.value, learn.labels_pick.value = image, labels
    learn.output.value = tmp_path / "bundle"

    def tiny(s):
        s.use_tiny_models()
        s.mask_size, s.crop_size = 16, 32
        s.mask_steps = s.texture_steps = 8
        s.minutes, s.device = None, "cpu"

    learn._configure = tiny
    learn.start_btn.clicked.emit()
    _wait(qtbot, learn)
    assert learn.steps_trained == 16
    assert str(synth.bundle.value) == str(tmp_path / "bundle")  # handed on

    # 2. Synthesize twice with the same seed: napari renames the second pair
    synth.canvas_h.value = synth.canvas_w.value = 64
    synth.cells.value, synth.steps.value, synth.seed.value = 4, 1, 3
    synth.device.value = "cpu"
    for _ in range(2):
        synth.run_btn.clicked.emit()
        _wait(qtbot, synth)
    assert len(synth.results) == 2
    assert synth.results[1][0].name.endswith("[1]")

    # 3. Curate both pairs from the layers: correct the first, accept both
    curate = _menu(viewer, "Curate")
    tune = _menu(viewer, "Fine-tune")
    curate.output.value = tmp_path / "curated"
    curate.load_btn.clicked.emit()
    assert len(curate.candidates) == 2
    curate.labels_layer.data[:6, :6] = 77  # painted with napari's Labels tools
    curate.labels_layer.refresh()
    curate.accept_btn.clicked.emit()
    curate.accept_btn.clicked.emit()
    assert "all pairs reviewed" in curate.current_label.value
    assert str(tune.synthetic.value) == str(tmp_path / "curated")  # handed on

    # 4. Fine-tune (tiny) on the sample's layers + the curated pairs, then predictions
    tune.image_pick.value, tune.labels_pick.value = image, labels
    tune.epochs.value, tune.device.value = 1, "cpu"
    tune.output.value = tmp_path / "model"
    tune.extra_settings = {"bsize": 64, "batch_size": 4, "nimg_per_epoch": 4}
    tune.start_btn.clicked.emit()
    copy = tune._tmp  # the real layers, copied for the training subprocess
    _wait(qtbot, tune)
    assert tune.status.value.startswith("done")
    qtbot.waitUntil(lambda: tune.predicted_cells is not None, timeout=120_000)
    predictions = [la for la in viewer.layers if la.name == "predictions model"]
    assert len(predictions) == 1 and predictions[0].data.shape == image.data.shape

    # the files on disk
    assert (tmp_path / "bundle" / "bundle.json").is_file()
    assert (tmp_path / "bundle" / "texture_model" / "diffusion_pytorch_model.safetensors").is_file()
    curated = json.loads((tmp_path / "curated" / "dataset.json").read_text())
    assert curated["origin"] == "synthetic-curated"
    records = list(curated["samples"].values())
    assert [r["status"] for r in records] == ["accepted", "accepted"]
    assert [r["corrected"] for r in records] == [True, False]
    first = sorted((tmp_path / "curated" / "labels").glob("*.tif"))[0]
    assert tifffile.imread(first)[:6, :6].max() == 77
    assert len(list((tmp_path / "curated" / "images").glob("*.tif"))) == 2
    log = json.loads((tmp_path / "model.log.json").read_text())
    assert log["n_synthetic"] == 2 and log["cancelled"] is False
    assert (tmp_path / "model").is_file()
    assert copy is not None and not copy.exists()  # removed when the job ended
    assert notifications.errors == []
    assert np.issubdtype(predictions[0].data.dtype, np.integer)
