"""Drag and drop in napari: the reader gives the right Image and Labels layers.

Runs under a real X server (pytest-xvfb); napari's settings are isolated in conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_data

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def _layers(viewer):
    return {layer.name: layer for layer in viewer.layers}


def _open(viewer, path):
    return viewer.open(str(path), plugin="cellsynth")


def test_dataset_folder_opens_as_stacked_image_and_labels(make_napari_viewer, dataset_folder):
    viewer = make_napari_viewer()
    _open(viewer, dataset_folder)
    kinds = sorted(type(layer).__name__ for layer in viewer.layers)
    assert kinds == ["Image", "Labels"]
    labels = next(la for la in viewer.layers if type(la).__name__ == "Labels")
    assert labels.data.shape == (3, 64, 64)
    assert np.issubdtype(labels.data.dtype, np.integer)


def test_ctc_3d_frame_gets_voxel_size_as_scale(make_napari_viewer, ctc_folder):
    viewer = make_napari_viewer()
    _open(viewer, ctc_folder / "02" / "t000.tif")
    (image,) = viewer.layers
    assert image.data.shape == (6, 64, 64)
    assert tuple(image.scale) == pytest.approx((2.0, 0.5, 0.5))


def test_ctc_sequence_with_sparse_gt_opens_labels_on_the_annotated_slice(
    make_napari_viewer, ctc_folder
):
    viewer = make_napari_viewer()
    _open(viewer, ctc_folder / "02")
    labels = next(la for la in viewer.layers if type(la).__name__ == "Labels")
    assert labels.data.shape == (2, 6, 64, 64)
    assert labels.data[:, 3].max() > 0 and labels.data[:, 0].max() == 0
    assert tuple(labels.scale) == pytest.approx((1.0, 2.0, 0.5, 0.5))


def test_sample_data_menu_gives_image_and_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("cellsynth", "nuclei")
    assert [type(la).__name__ for la in viewer.layers] == ["Image", "Labels"]
    assert viewer.layers[1].data.max() == 31


def test_writer_saves_labels_that_read_back(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("cellsynth", "nuclei")
    labels = viewer.layers[1]
    out = tmp_path / "saved_labels.tif"
    labels.save(str(out), plugin="cellsynth")
    from cellsynth.io import read_dataset

    back = read_dataset(out).pairs[0].labels
    assert np.array_equal(back, labels.data)


SHARED_FILES = [
    ("ctc_Fluo-N2DH-GOWT1", "images/t01.tif", (1024, 1024), True),
    ("ctc_Fluo-N2DL-HeLa_01_GT", "images/t13.tif", (700, 1100), True),
    ("ctc_Fluo-N3DH-CHO_02_ERRSEG", "images/t000.tif", (5, 443, 512), True),
    (
        "dsb2018_stage1_train_fluo",
        "images/0d2bf916cc8de90d02f4cd4c23ea79b227dbc45d845b4124ffea380c92d34c8c.png",
        (360, 360),
        True,
    ),
    ("monuseg2018", "images/TCGA-21-5784-01Z-00-DX1.png", (1000, 1000, 3), True),
    ("nih3t3_coelho2009_binary", "images/dna-0.png", (1024, 1344), True),
    ("stardist_bundled_testdata", "img3d.tif", (31, 61, 57), False),
    ("stardist_bundled_testdata", "mask2d.tif", (512, 512), None),
]


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("folder", "rel", "shape", "with_labels"),
    SHARED_FILES,
    ids=[f"{f}/{r.split('/')[-1][:16]}" for f, r, _, _ in SHARED_FILES],
)
def test_a_file_of_each_shared_data_set_opens_with_the_right_layers(
    make_napari_viewer, folder, rel, shape, with_labels
):
    path = shared_data(folder) / rel
    viewer = make_napari_viewer()
    _open(viewer, path)
    kinds = [type(la).__name__ for la in viewer.layers]
    if with_labels is None:  # a label file on its own
        assert kinds == ["Labels"]
        assert viewer.layers[0].data.shape == shape
        return
    assert kinds == (["Image", "Labels"] if with_labels else ["Image"])
    image = viewer.layers[0]
    assert image.data.shape == shape
    assert image.rgb == (len(shape) == 3 and shape[-1] == 3)
    if with_labels:
        labels = viewer.layers[1]
        assert labels.data.shape == shape[:2] if image.rgb else shape
        assert np.issubdtype(labels.data.dtype, np.integer)
        assert labels.data.max() > 1  # instances, binary masks split into cells
