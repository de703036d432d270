"""Screenshots of cellsynth in a real napari window, for README.md and docs/.

Widgets are opened the way a user opens them, from *Plugins ▸ cellsynth*
(``window.add_plugin_dock_widget``). Run under an X server, e.g.:
``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py [--only NAME]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "images"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _pump(seconds: float = 0.3) -> None:
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def _wait(job, timeout: float = 900) -> None:
    end = time.time() + timeout
    while job is not None and job.running and time.time() < end:
        _pump(0.2)
    _pump(0.5)


def _grab(viewer: napari.Viewer, name: str) -> None:
    _pump(0.5)
    viewer.screenshot(str(OUT / name), canvas_only=False, flash=False)
    print("wrote", OUT / name)


def _widget(viewer: napari.Viewer, name: str):
    """The dock widget as the Plugins menu opens it."""
    _, widget = viewer.window.add_plugin_dock_widget("cellsynth", name)
    return widget


def _viewer() -> napari.Viewer:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    return viewer


def reader() -> None:
    viewer = _viewer()
    viewer.open_sample("cellsynth", "nuclei")
    _grab(viewer, "reader_sample_nuclei.png")
    cho = SHARED / "ctc_Fluo-N3DH-CHO_02_ERRSEG" / "images" / "t000.tif"
    if cho.exists():
        viewer.layers.clear()
        viewer.open(str(cho), plugin="cellsynth")
        viewer.dims.set_point(0, 2)
        _grab(viewer, "reader_cho_3d.png")
    viewer.close()


def learn() -> None:
    viewer = _viewer()
    viewer.open_sample("cellsynth", "nuclei_set")
    w = _widget(viewer, "Learn")
    w.image_pick.value, w.labels_pick.value = viewer.layers[0], viewer.layers[1]
    w.output.value = Path(tempfile.mkdtemp()) / "bundle"
    w.minutes.value = 2.0
    w.start_btn.clicked.emit()
    _wait(w.job)
    _grab(viewer, "widget_learn.png")
    viewer.close()


def synthesize_and_curate() -> None:
    viewer = _viewer()
    w = _widget(viewer, "Synthesize")
    w.canvas_h.value, w.canvas_w.value, w.seed.value, w.how_many.value = 360, 360, 1, 2
    w.run_btn.clicked.emit()
    _wait(w.job)
    _grab(viewer, "widget_synthesize.png")
    c = _widget(viewer, "Curate")
    c.output.value = Path(tempfile.mkdtemp()) / "curated"
    c.load_btn.clicked.emit()
    for layer in list(viewer.layers)[:4]:
        layer.visible = False
    viewer.layers.selection.active = c.labels_layer
    c.labels_layer.mode = "paint"
    _grab(viewer, "widget_curate.png")
    viewer.close()


def synthesize_divisions() -> None:
    """Half of the cells drawn as daughters of a division (touching sister pairs)."""
    viewer = _viewer()
    w = _widget(viewer, "Synthesize")
    w.canvas_h.value, w.canvas_w.value, w.seed.value = 360, 360, 3
    w.divisions.value = 0.5
    w.run_btn.clicked.emit()
    _wait(w.job)
    _grab(viewer, "widget_synthesize_divisions.png")
    viewer.close()


def synthesize_3d() -> None:
    """A 3D stack in napari: the 3D view (rendered labels) and a slice with the grid view."""
    viewer = _viewer()
    w = _widget(viewer, "Synthesize")
    w.dims.value = "3D"
    w.canvas_z.value, w.canvas_h.value, w.canvas_w.value = 48, 256, 256
    w.seed.value = 1
    w.run_btn.clicked.emit()
    _wait(w.job)
    viewer.dims.ndisplay = 3
    viewer.camera.angles = (-15, 30, 70)
    viewer.camera.zoom = 1.6
    viewer.layers[0].visible = False
    _grab(viewer, "widget_synthesize_3d.png")
    viewer.dims.ndisplay = 2
    viewer.layers[0].visible = True
    viewer.layers[1].opacity = 0.3
    viewer.dims.set_point(0, 24)
    _grab(viewer, "widget_synthesize_3d_slice.png")
    viewer.close()


def finetune(epochs: int = 30) -> None:
    from cellsynth.samples import sample_dataset_path

    viewer = _viewer()
    viewer.open_sample("cellsynth", "nuclei")
    w = _widget(viewer, "Fine-tune")
    w.image_pick.value, w.labels_pick.value = viewer.layers[0], viewer.layers[1]
    w.real_folder.value = sample_dataset_path()
    w.validation.value = sample_dataset_path()
    w.epochs.value = epochs
    w.output.value = Path(tempfile.mkdtemp()) / "cellpose_model"
    w.start_btn.clicked.emit()
    _wait(w.job)
    end = time.time() + 300
    while w.evaluation is None and time.time() < end:
        _pump(0.3)
    viewer.layers[1].visible = False
    _grab(viewer, "widget_finetune.png")
    viewer.close()


STEPS = {
    "reader": reader,
    "learn": learn,
    "synthesize": synthesize_and_curate,
    "synthesize_3d": synthesize_3d,
    "synthesize_divisions": synthesize_divisions,
    "finetune": finetune,
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=list(STEPS), nargs="*")
    ap.add_argument("--finetune-epochs", type=int, default=30, help="epochs of the Fine-tune shot")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.only or STEPS:
        if name == "finetune":
            finetune(args.finetune_epochs)
        else:
            STEPS[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
