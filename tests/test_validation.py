"""Every kind of bad input gets a one-sentence error naming the file and the problem."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cellsynth.errors import CellsynthInputError
from cellsynth.io import read_array, read_dataset, require_3d, validate_labels
from conftest import disks, image_for


def _labels_dataset(tmp_path, labels, image=None):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    image = image if image is not None else image_for(np.asarray(labels) > 0)
    tifffile.imwrite(tmp_path / "images" / "a.tif", image)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", labels)
    return read_dataset(tmp_path).pairs[0]


def test_float_labels_are_refused_naming_the_file(tmp_path):
    pair = _labels_dataset(tmp_path, disks().astype(np.float32) * 0.5)
    with pytest.raises(CellsynthInputError, match="floating point") as err:
        _ = pair.labels
    assert "labels/a.tif" in str(err.value)


def test_negative_labels_are_refused(tmp_path):
    lab = disks().astype(np.int32)
    lab[0, 0] = -1
    pair = _labels_dataset(tmp_path, lab)
    with pytest.raises(CellsynthInputError, match="negative"):
        _ = pair.labels


def test_shape_mismatch_names_both_files(tmp_path):
    pair = _labels_dataset(tmp_path, disks(), image=np.zeros((32, 32), np.uint16))
    with pytest.raises(CellsynthInputError, match=r"does not match labels shape") as err:
        _ = pair.labels
    assert "images/a.tif" in str(err.value)
    assert "labels/a.tif" in str(err.value)


def test_rgb_image_is_refused_where_grayscale_is_expected(tmp_path):
    lab = disks()
    rgb = np.stack([image_for(lab, 0), image_for(lab, 1), image_for(lab, 2)], -1).astype(np.uint8)
    pair = _labels_dataset(tmp_path, lab, image=rgb)
    with pytest.raises(CellsynthInputError, match="RGB"):
        _ = pair.image


def test_grey_rgb_image_is_reduced_to_one_channel(tmp_path):
    lab = disks()
    g = image_for(lab).astype(np.uint8)
    pair = _labels_dataset(tmp_path, lab, image=np.stack([g, g, g], -1))
    assert pair.image.shape == lab.shape
    assert np.array_equal(pair.image, g)


def test_rgb_labels_are_refused():
    with pytest.raises(CellsynthInputError, match="RGB"):
        validate_labels(np.zeros((64, 64, 3), np.uint8))


def test_empty_labels_are_refused_where_cells_are_needed():
    with pytest.raises(CellsynthInputError, match="no cells"):
        validate_labels(np.zeros((8, 8), np.uint16), "x.tif", require_cells=True)


def test_binary_mask_is_split_into_cells():
    binary = (disks() > 0).astype(np.uint8) * 255
    out = validate_labels(binary)
    assert out.max() == 2
    assert out.dtype == np.uint16


def test_labels_beyond_uint16_stay_uint32():
    lab = np.zeros((4, 4), np.int64)
    lab[0, 0], lab[1, 1] = 70_000, 3
    assert validate_labels(lab).dtype == np.uint32


def test_2d_data_where_3d_is_needed():
    with pytest.raises(CellsynthInputError, match="needs a 3D stack"):
        require_3d((64, 64), "a.tif", what="--3d training")


def test_corrupt_tiff_is_reported_not_raised_from_deep_inside(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + b"\x00" * 10)
    with pytest.raises(CellsynthInputError, match="corrupt or truncated") as err:
        read_array(path)
    assert "broken.tif" in str(err.value)


def test_truncated_tiff_is_reported(tmp_path):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.random.default_rng(0).integers(0, 255, (256, 256), np.uint8))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(CellsynthInputError, match=r"cut\.tif"):
        read_array(cut)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CellsynthInputError, match="not found"):
        read_array(tmp_path / "nope.tif")
    with pytest.raises(CellsynthInputError, match="no such file or folder"):
        read_dataset(tmp_path / "nowhere")


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CellsynthInputError, match="holds no images"):
        read_dataset(tmp_path)


def test_images_without_labels_when_labels_are_required(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(CellsynthInputError, match="have no labels"):
        read_dataset(tmp_path, require_labels=True)


def test_unsupported_suffix(tmp_path):
    p = tmp_path / "a.czi"
    p.write_bytes(b"x")
    with pytest.raises(CellsynthInputError, match="unsupported file type"):
        read_dataset(p)
