"""Screenshots of cellsynth in a real napari window, for README.md and docs/.

Run under an X server, e.g.: ``xvfb-run -s "-screen 0 1600x1000x24" python docs/make_screenshots.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).parent / "images"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _grab(viewer: napari.Viewer, name: str) -> None:
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(str(OUT / name), canvas_only=False, flash=False)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.open_sample("cellsynth", "nuclei")
    viewer.layers[-1].contour = 0
    _grab(viewer, "reader_sample_nuclei.png")

    cho = SHARED / "ctc_Fluo-N3DH-CHO_02_ERRSEG" / "images" / "t000.tif"
    if cho.exists():
        viewer.layers.clear()
        viewer.open(str(cho), plugin="cellsynth")
        viewer.dims.ndisplay = 2
        viewer.dims.set_point(0, 2)
        _grab(viewer, "reader_cho_3d.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
