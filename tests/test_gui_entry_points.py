"""Every manifest contribution, reached through napari's own entry points, as a user reaches it.

Widgets open from the Plugins menu's path (``window.add_plugin_dock_widget``) on a viewer made by
``make_napari_viewer_proxy`` (plugins get a public-only proxy); the reader through
``viewer.open(..., plugin="cellsynth")``; sample data through ``viewer.open_sample``; writers
through ``viewer.layers.save(..., plugin="cellsynth")``. napari's exception hooks are on (see
conftest.py), so a traceback notification fails a test. The last test fails when a contribution
of napari.yaml has no test here.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from conftest import disks, image_for

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui

COVERED: dict[str, str] = {}  # manifest command id -> the test that reaches it


def covers(*commands: str):
    def mark(fn):
        for c in commands:
            COVERED[c] = fn.__name__
        return fn

    return mark


def _manifest():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    return pm.get_manifest("cellsynth")


def _kinds(viewer) -> list[str]:
    return [type(la).__name__ for la in viewer.layers]


# ---------------------------------------------------------------------- widgets

WIDGETS = {
    "Learn": ("cellsynth.learn_widget", "LearnWidget"),
    "Synthesize": ("cellsynth.synthesize_widget", "SynthesizeWidget"),
    "Curate": ("cellsynth.curate_widget", "CurateWidget"),
    "Fine-tune": ("cellsynth.finetune_widget", "FinetuneWidget"),
}


@covers(*(cmd for cmd, _ in WIDGETS.values()))
@pytest.mark.parametrize("display_name", list(WIDGETS))
def test_each_widget_opens_from_the_plugins_menu_with_the_viewer(
    make_napari_viewer_proxy, display_name, notifications
):
    viewer = make_napari_viewer_proxy()
    dock, widget = viewer.window.add_plugin_dock_widget("cellsynth", display_name)
    assert type(widget).__name__ == WIDGETS[display_name][1]
    assert dock is not None
    # the widget holds the viewer napari gave it: a layer added now reaches it
    layer = viewer.add_image(image_for(disks()), name="cells")
    assert [la.name for la in widget.viewer.layers] == [layer.name]
    picker = getattr(widget, "image_pick", None)
    if picker is not None:
        assert layer.name in [getattr(c, "name", None) for c in picker.choices]
    assert notifications.errors == []


def test_the_widgets_declare_the_viewer_as_napari_passes_it():
    """napari passes the viewer only to a parameter annotated napari.viewer.Viewer."""
    import inspect

    from napari._qt._qplugins._qnpe2 import _get_widget_viewer_param

    for w in _manifest().contributions.widgets:
        cls = w.get_callable()
        assert _get_widget_viewer_param(cls, w.display_name) == "viewer", w.display_name
        assert "viewer" in inspect.signature(cls.__init__).parameters


# ---------------------------------------------------------------------- reader


@covers("cellsynth.get_reader")
def test_reader_opens_a_tiff_file_as_an_image_layer(make_napari_viewer, tmp_path):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, image_for(disks()))
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="cellsynth")
    assert _kinds(viewer) == ["Image"]
    (image,) = viewer.layers
    assert image.data.dtype == np.uint16 and image.data.shape == (64, 64)
    assert tuple(image.scale) == (1.0, 1.0)


def test_reader_opens_a_3d_stack_with_its_voxel_size_as_scale(make_napari_viewer, tmp_path):
    path = tmp_path / "stack.tif"
    vol = disks(shape=(6, 64, 64), centres=((3, 20, 20), (3, 44, 40)), radius=5)
    tifffile.imwrite(
        path,
        image_for(vol),
        imagej=True,
        metadata={"axes": "ZYX", "spacing": 2.0},
        resolution=(1 / 0.5, 1 / 0.5),
    )
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="cellsynth")
    (image,) = viewer.layers
    assert image.data.shape == (6, 64, 64) and image.data.dtype == np.uint16
    assert tuple(image.scale) == pytest.approx((2.0, 0.5, 0.5))


def test_reader_opens_a_dataset_folder_as_stacked_image_and_labels(
    make_napari_viewer, dataset_folder
):
    viewer = make_napari_viewer()
    viewer.open(str(dataset_folder), plugin="cellsynth")
    assert _kinds(viewer) == ["Image", "Labels"]
    image, labels = viewer.layers
    assert image.data.shape == labels.data.shape == (3, 64, 64)
    assert image.data.dtype == np.uint16
    assert np.issubdtype(labels.data.dtype, np.integer) and labels.data.max() == 3
    assert tuple(labels.scale) == (1.0, 1.0, 1.0)


def test_reader_opens_a_ctc_folder_with_its_ground_truth(make_napari_viewer, ctc_folder):
    viewer = make_napari_viewer()
    viewer.open(str(ctc_folder / "01"), plugin="cellsynth")
    assert _kinds(viewer) == ["Image", "Labels"]
    image, labels = viewer.layers
    assert image.data.shape == labels.data.shape == (3, 64, 64)
    assert np.issubdtype(labels.data.dtype, np.integer)
    assert labels.data[1].max() == 0 and labels.data[0].max() == 2  # frame 1 has no GT
    viewer.layers.clear()
    viewer.open(str(ctc_folder / "02"), plugin="cellsynth")
    image, labels = viewer.layers
    assert labels.data.shape == (2, 6, 64, 64)
    assert tuple(image.scale) == pytest.approx((1.0, 2.0, 0.5, 0.5))


# ---------------------------------------------------------------------- sample data


@covers("cellsynth.sample_nuclei")
def test_sample_nuclei_opens_an_image_and_its_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("cellsynth", "nuclei")
    assert _kinds(viewer) == ["Image", "Labels"]
    image, labels = viewer.layers
    assert image.data.shape == labels.data.shape and image.data.ndim == 2
    assert np.issubdtype(labels.data.dtype, np.integer) and labels.data.max() > 1


@covers("cellsynth.sample_nuclei_set")
def test_sample_nuclei_set_opens_the_twelve_images_and_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("cellsynth", "nuclei_set")
    assert set(_kinds(viewer)) == {"Image", "Labels"}
    n_images = sum(
        la.data.shape[0] if la.metadata["cellsynth"]["stacked"] else 1
        for la in viewer.layers
        if type(la).__name__ == "Image"
    )
    assert n_images == 12


# ---------------------------------------------------------------------- writers


def _save_and_reopen(viewer, layer, path):
    """Save one layer with cellsynth's writer, then open the file with cellsynth's reader."""
    viewer.layers.selection.active = layer
    assert viewer.layers.save(str(path), selected=True, plugin="cellsynth") == [str(path)]
    viewer.layers.clear()
    viewer.open(str(path), plugin="cellsynth")
    (back,) = viewer.layers
    return back


@covers("cellsynth.write_labels")
def test_labels_writer_saves_instance_labels_that_read_back(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = viewer.add_labels(disks(shape=(4, 64, 64), centres=((2, 20, 20),)) * 300)
    labels.scale = (2.0, 0.5, 0.5)
    back = _save_and_reopen(viewer, labels, tmp_path / "labels.tif")
    assert type(back).__name__ == "Labels"
    assert np.array_equal(back.data, labels.data) and back.data.max() == 300
    assert tuple(back.scale) == pytest.approx((2.0, 0.5, 0.5))


@covers("cellsynth.write_image")
def test_image_writer_saves_an_image_with_its_voxel_size(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = image_for(disks(shape=(5, 64, 64), centres=((2, 30, 30),)))
    image = viewer.add_image(data, scale=(3.0, 0.25, 0.25))
    back = _save_and_reopen(viewer, image, tmp_path / "image.tif")
    assert type(back).__name__ == "Image"
    assert np.array_equal(back.data, data) and back.data.dtype == data.dtype
    assert tuple(back.scale) == pytest.approx((3.0, 0.25, 0.25))


# ---------------------------------------------------------------------- coverage


def test_every_manifest_contribution_has_an_entry_point_test():
    c = _manifest().contributions
    commands = (
        [r.command for r in c.readers]
        + [w.command for w in c.writers]
        + [s.command for s in c.sample_data]
        + [w.command for w in c.widgets]
    )
    missing = sorted(set(commands) - set(COVERED))
    assert not missing, f"no test through napari's entry point for {missing}"
    unknown = sorted(set(COVERED) - {cmd.id for cmd in c.commands})
    assert not unknown, f"tests claim commands the manifest lacks: {unknown}"
