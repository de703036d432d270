"""Dropping a dataset or CTC folder on the viewer, as docs/usage.md describes it.

napari offers every reader that accepts folders (cellsynth and its built-in reader), so a drop
opens napari's "Choose reader" dialog; cellsynth is its first, pre-selected choice, so *OK*
opens the folder with cellsynth. A remembered choice (the dialog's checkbox, or a folder pattern
in Preferences ▸ Plugins) opens later drops without the dialog. The drop goes through the same
Qt handler as a real drag and drop; only the dialog's modal ``exec_`` is answered by the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def _drop(viewer, *folders: Path) -> None:
    from qtpy.QtCore import QUrl

    qt_viewer = viewer.window._qt_viewer
    urls = [QUrl.fromLocalFile(str(f)) for f in folders]
    qt_viewer._open_from_list_of_urls_data(urls, stack=False, choose_plugin=False)


@pytest.fixture
def reader_dialog(monkeypatch):
    """Answer napari's reader dialog with OK (keeping its default choice) and record it."""
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog

    shown = []

    def exec_(self):
        shown.append(
            {
                "choices": [b.text() for b in self.reader_btn_group.buttons()],
                "selected": self._get_plugin_choice(),
                "remember": self._persist_text,
            }
        )
        return 1  # OK

    monkeypatch.setattr(QtReaderDialog, "exec_", exec_)
    return shown


@pytest.mark.parametrize("kind", ["dataset", "ctc"])
def test_a_dropped_folder_offers_cellsynth_first_and_opens_with_it(
    make_napari_viewer, reader_dialog, dataset_folder, ctc_folder, kind, notifications
):
    folder = dataset_folder if kind == "dataset" else ctc_folder / "01"
    viewer = make_napari_viewer()
    _drop(viewer, folder)
    (dialog,) = reader_dialog
    assert dialog["choices"][0] == "cellsynth" and dialog["selected"] == "cellsynth"
    assert "napari builtins" in dialog["choices"]
    assert [type(la).__name__ for la in viewer.layers] == ["Image", "Labels"]
    assert viewer.layers[1].data.shape == (3, 64, 64)
    assert notifications.errors == []


def test_a_folder_pattern_in_the_preferences_opens_drops_without_the_dialog(
    make_napari_viewer, reader_dialog, dataset_folder, ctc_folder, tmp_path
):
    from napari.settings import get_settings

    viewer = make_napari_viewer()
    # Preferences ▸ Plugins ▸ file extension readers: every folder inside tmp_path
    get_settings().plugins.extension2reader = {f"{tmp_path.resolve()}/*/": "cellsynth"}
    _drop(viewer, dataset_folder)
    assert reader_dialog == []
    assert [type(la).__name__ for la in viewer.layers] == ["Image", "Labels"]
    viewer.layers.clear()
    get_settings().plugins.extension2reader = {f"{ctc_folder.resolve()}/*/": "cellsynth"}
    _drop(viewer, ctc_folder / "02")
    assert reader_dialog == []
    assert viewer.layers[1].data.shape == (2, 6, 64, 64)
