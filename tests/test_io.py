"""Reading files, dataset folders and CTC folders; writing without overwriting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from cellsynth.errors import CellsynthInputError
from cellsynth.io import (
    DatasetWriter,
    ctc_slice,
    frame_key,
    pair_files,
    read_array,
    read_dataset,
    write_tiff,
)
from conftest import disks, image_for


def test_2d_tiff_is_read_with_yx_axes(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((20, 30), np.uint16))
    img = read_array(path)
    assert img.axes == "YX"
    assert img.data.shape == (20, 30)
    assert img.voxel_size is None


def test_imagej_voxel_size_is_read_as_zyx(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        np.zeros((4, 20, 30), np.uint8),
        imagej=True,
        metadata={"axes": "ZYX", "spacing": 2.5, "unit": "um"},
        resolution=(1 / 0.25, 1 / 0.25),
    )
    img = read_array(path)
    assert img.axes == "ZYX"
    assert img.voxel_size == pytest.approx((2.5, 0.25, 0.25))


def test_ome_voxel_size_is_read(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 10, 12), np.uint32),
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeZ": 1.5, "PhysicalSizeY": 0.3, "PhysicalSizeX": 0.3},
    )
    img = read_array(path)
    assert img.voxel_size == pytest.approx((1.5, 0.3, 0.3))


def test_time_series_keeps_its_time_axis(tmp_path):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(
        path, np.zeros((5, 3, 16, 16), np.uint16), imagej=True, metadata={"axes": "TZYX"}
    )
    img = read_array(path)
    assert img.axes == "TZYX"
    assert img.data.shape == (5, 3, 16, 16)


def test_plain_multipage_tiff_is_a_z_stack(tmp_path):
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, np.zeros((7, 16, 16), np.uint8))
    assert read_array(path).axes == "ZYX"


def test_write_tiff_round_trips_uint32_labels_and_voxel_size(tmp_path):
    labels = np.zeros((3, 8, 8), np.uint32)
    labels[1, 2:4, 2:4] = 70_000  # beyond uint16
    path = write_tiff(tmp_path / "big.tif", labels, voxel_size=(2.0, 0.5, 0.5))
    back = read_array(path)
    assert back.data.dtype == np.uint32
    assert back.data.max() == 70_000
    assert back.voxel_size == pytest.approx((2.0, 0.5, 0.5))


def test_write_tiff_uint16_voxel_size_round_trips(tmp_path):
    path = write_tiff(
        tmp_path / "img.tif", np.ones((4, 8, 8), np.uint16), voxel_size=(1.0, 0.2, 0.2)
    )
    assert read_array(path).voxel_size == pytest.approx((1.0, 0.2, 0.2))


def test_write_tiff_never_overwrites(tmp_path):
    path = write_tiff(tmp_path / "x.tif", np.ones((4, 4), np.uint8))
    with pytest.raises(CellsynthInputError, match="never overwrites"):
        write_tiff(path, np.zeros((4, 4), np.uint8))
    assert read_array(path).data.max() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]  # no temporary file left


def test_dataset_folder_pairs_images_and_labels(dataset_folder):
    ds = read_dataset(dataset_folder, require_labels=True)
    assert ds.kind == "dataset"
    assert [p.name for p in ds] == ["img0", "img1", "img2"]
    assert [len(np.unique(p.labels)) - 1 for p in ds] == [2, 3, 1]
    assert all(p.image.shape == p.labels.shape for p in ds)


def test_masks_folder_pairs_by_frame_number(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    lab = disks()
    for t in (1, 21):
        tifffile.imwrite(tmp_path / "images" / f"t{t:02d}.tif", image_for(lab))
        tifffile.imwrite(tmp_path / "masks" / f"man_seg{t:02d}.tif", lab)
    ds = read_dataset(tmp_path, require_labels=True)
    assert [(p.image_path.name, p.labels_path.name) for p in ds] == [
        ("t01.tif", "man_seg01.tif"),
        ("t21.tif", "man_seg21.tif"),
    ]


def test_pair_files_matches_stems_then_numbers(tmp_path):
    from pathlib import Path

    imgs = [Path("dna-0.png"), Path("dna-12.png"), Path("img2d.tif")]
    labs = [Path("0.png"), Path("12.png"), Path("mask2d.tif")]
    pairs = {a.name: b.name for a, b in pair_files(imgs, labs)}
    assert pairs == {"dna-0.png": "0.png", "dna-12.png": "12.png", "img2d.tif": "mask2d.tif"}


def test_ctc_folder_reads_dense_gt_and_frames_without_gt(ctc_folder):
    ds = read_dataset(ctc_folder / "01")
    assert ds.kind == "ctc"
    assert [p.has_labels for p in ds] == [True, False, True]
    assert ds.pairs[0].labels.shape == (64, 64)


def test_ctc_single_slice_annotations_become_a_sparse_volume(ctc_folder):
    ds = read_dataset(ctc_folder / "02")
    pair = ds.pairs[0]
    assert pair.annotated_slices == (3,)
    assert pair.labels.shape == (6, 64, 64)
    assert pair.labels[3].max() > 0
    assert pair.labels[[0, 1, 2, 4, 5]].max() == 0
    assert pair.voxel_size == pytest.approx((2.0, 0.5, 0.5))


def test_ctc_challenge_folder_reads_all_sequences(ctc_folder):
    ds = read_dataset(ctc_folder)
    assert len(ds) == 5
    assert {p.name.split("_")[0] for p in ds} == {"01", "02"}


def test_ctc_seg_folder_alone_is_labels_only(ctc_folder):
    ds = read_dataset(ctc_folder / "02_GT" / "SEG")
    assert len(ds) == 2
    assert ds.pairs[0].annotated_slices == (3,)
    assert not ds.pairs[0].has_image


@pytest.mark.parametrize(
    ("stem", "parsed"),
    [
        ("man_seg_000_012", (0, 12)),
        ("man_seg007_3", (7, 3)),
        ("man_seg000", None),
        ("man_seg_000", None),
        ("t000_012", None),
    ],
)
def test_ctc_slice_names_give_frame_and_slice(stem, parsed):
    assert ctc_slice(stem) == parsed


def test_a_slice_file_belongs_to_its_frame():
    assert frame_key("man_seg_007_012") == 7
    assert frame_key("man_seg007") == 7


def test_slice_files_pair_by_frame_and_slice():
    from pathlib import Path

    imgs = [Path("man_seg_000_004.tif"), Path("man_seg_000_003.tif")]
    labs = [Path("man_seg_0_3.tif"), Path("man_seg_0_4.tif")]
    pairs = {a.name: b.name for a, b in pair_files(imgs, labs)}
    assert pairs == {
        "man_seg_000_003.tif": "man_seg_0_3.tif",
        "man_seg_000_004.tif": "man_seg_0_4.tif",
    }


def test_one_slice_file_is_read_as_an_annotated_slice_of_its_frame(ctc_folder):
    ds = read_dataset(ctc_folder / "02_GT" / "SEG" / "man_seg_001_003.tif")
    pair = ds.pairs[0]
    assert (pair.key, pair.annotated_slices) == (1, (3,))
    assert not pair.has_image


def test_labels_only_folder_groups_slice_files_into_frames(tmp_path):
    lab = disks()
    for t, z in ((0, 1), (0, 4), (1, 2)):
        tifffile.imwrite(tmp_path / f"man_seg_{t:03d}_{z:03d}.tif", lab)
    tifffile.imwrite(tmp_path / "man_seg002.tif", lab)
    ds = read_dataset(tmp_path, labels_only=True)
    assert [(p.name, p.key, p.annotated_slices) for p in ds] == [
        ("man_seg002", 2, None),
        ("man_seg000", 0, (1, 4)),
        ("man_seg001", 1, (2,)),
    ]


def test_ctc_whole_frame_labels_win_over_slices_of_the_same_frame(tmp_path):
    for d in ("01", "01_GT/SEG"):
        (tmp_path / d).mkdir(parents=True)
    lab = disks()
    for t in (0, 1):
        tifffile.imwrite(tmp_path / "01" / f"t{t:03d}.tif", image_for(lab))
    seg = tmp_path / "01_GT" / "SEG"
    for name in ("man_seg000", "man_seg_000_002", "man_seg_001_002", "notes"):
        tifffile.imwrite(seg / f"{name}.tif", lab)
    first, second = read_dataset(tmp_path / "01").pairs
    assert (first.labels_path.name, first.slice_paths) == ("man_seg000.tif", {})
    assert (second.labels_path, second.annotated_slices) == (None, (2,))


def test_image_file_finds_its_labels_in_sibling_folder(dataset_folder):
    ds = read_dataset(dataset_folder / "images" / "img1.tif")
    assert ds.pairs[0].labels_path == dataset_folder / "labels" / "img1.tif"


def test_label_file_alone_is_read_as_labels(dataset_folder):
    ds = read_dataset(dataset_folder / "labels" / "img1.tif")
    assert not ds.pairs[0].has_image
    assert ds.pairs[0].labels.max() == 3


def test_dataset_writer_writes_pairs_and_records(tmp_path):
    w = DatasetWriter(tmp_path / "out", voxel_size=(0.5, 0.5), origin="synthetic")
    lab = disks()
    name = w.free_name("synth_")
    w.add(name, image_for(lab), lab, record={"seed": 3})
    assert name == "synth_0000"
    assert w.free_name("synth_") == "synth_0001"
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["origin"] == "synthetic"
    assert meta["samples"]["synth_0000"]["seed"] == 3
    ds = read_dataset(tmp_path / "out", require_labels=True)
    assert np.array_equal(ds.pairs[0].labels, lab)
    assert ds.pairs[0].voxel_size == pytest.approx((0.5, 0.5))


def test_dataset_writer_refuses_to_replace_a_sample(tmp_path):
    w = DatasetWriter(tmp_path / "out")
    lab = disks()
    w.add("a", image_for(lab), lab)
    before = (tmp_path / "out" / "labels" / "a.tif").read_bytes()
    with pytest.raises(CellsynthInputError, match="already exists"):
        w.add("a", image_for(lab), np.zeros_like(lab))
    assert (tmp_path / "out" / "labels" / "a.tif").read_bytes() == before


def test_dataset_writer_keeps_existing_records_when_reopened(tmp_path):
    lab = disks()
    DatasetWriter(tmp_path / "out").add("a", image_for(lab), lab, record={"status": "accepted"})
    w2 = DatasetWriter(tmp_path / "out")
    w2.add("b", image_for(lab), lab)
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert set(meta["samples"]) == {"a", "b"}
    assert meta["samples"]["a"]["status"] == "accepted"


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = write_tiff(tmp_path / "p.tif", np.ones((4, 4), np.uint8))
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- voxel size units (#19)


def _plain(path, resolution, unit):
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16), resolution=resolution, resolutionunit=unit)
    return read_array(path).voxel_size


def test_resolution_in_centimetres_is_converted_to_micrometres(tmp_path):
    assert _plain(tmp_path / "cm.tif", (1e4 / 0.5, 1e4 / 0.5), "CENTIMETER") == pytest.approx(
        (0.5, 0.5)
    )


def test_resolution_in_inches_is_converted_to_micrometres(tmp_path):
    assert _plain(tmp_path / "in.tif", (25400 / 0.65, 25400 / 0.65), "INCH") == pytest.approx(
        (0.65, 0.65)
    )


def test_resolution_in_millimetres_is_converted_to_micrometres(tmp_path):
    assert _plain(tmp_path / "mm.tif", (1e3 / 2.0, 1e3 / 2.0), "MILLIMETER") == pytest.approx(
        (2.0, 2.0)
    )


def test_a_72_dpi_tiff_has_no_voxel_size_and_warns(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        assert _plain(tmp_path / "screen.tif", (72, 72), "INCH") is None
    assert "72 dpi" in caplog.text and "screen.tif" in caplog.text


def test_resolution_without_unit_is_pixels_per_micrometre(tmp_path):
    assert _plain(tmp_path / "none.tif", (4, 4), "NONE") == pytest.approx((0.25, 0.25))


def test_imagej_unit_nm_applies_to_resolution_and_spacing(tmp_path):
    path = tmp_path / "nm.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 8), np.uint16),
        imagej=True,
        metadata={"axes": "ZYX", "unit": "nm", "spacing": 500.0},
        resolution=(1 / 250, 1 / 250),
    )
    assert read_array(path).voxel_size == pytest.approx((0.5, 0.25, 0.25))


def test_imagej_unit_pixel_means_no_voxel_size(tmp_path):
    path = tmp_path / "px.tif"
    tifffile.imwrite(
        path,
        np.zeros((8, 8), np.uint16),
        imagej=True,
        metadata={"unit": "pixel"},
        resolution=(0.5, 0.5),
    )
    assert read_array(path).voxel_size is None


def test_ome_physical_size_units_are_converted(tmp_path):
    path = tmp_path / "units.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 8), np.uint32),
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 250,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 250,
            "PhysicalSizeYUnit": "nm",
            "PhysicalSizeZ": 0.002,
            "PhysicalSizeZUnit": "mm",
        },
    )
    assert read_array(path).voxel_size == pytest.approx((2.0, 0.25, 0.25))


def test_a_5d_file_of_unnamed_axes_is_refused_naming_it(tmp_path):
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, np.zeros((2, 3, 5, 8, 8), np.uint16))
    with pytest.raises(CellsynthInputError, match=r"five\.tif.*cannot tell apart"):
        read_array(path)


# --------------------------------------------------------------------------- dataset.json


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"voxel_size": 5}', "'voxel_size' must be null or a list"),
        ('{"samples": []}', "'samples' must be an object"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"samples": {"img0": 3}}', "'samples.img0' must be an object"),
        ('{"voxel_size": [0.5, -1]}', "'voxel_size' must be null"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_malformed_dataset_json_is_one_error_naming_file_and_key(dataset_folder, content, message):
    (dataset_folder / "dataset.json").write_text(content)
    with pytest.raises(CellsynthInputError, match=r"dataset\.json") as err:
        read_dataset(dataset_folder)
    assert message in str(err.value)


# --------------------------------------------------------------------------- DatasetWriter


def test_two_writers_of_one_folder_keep_every_record(tmp_path):
    lab = disks(shape=(32, 32), centres=((10, 10),), radius=4)
    a = DatasetWriter(tmp_path / "out", origin="synthetic")
    b = DatasetWriter(tmp_path / "out", origin="synthetic")  # both read the folder before writing
    a.add("a0", image_for(lab), lab, record={"by": "a"})
    b.add("b0", image_for(lab), lab, record={"by": "b"})
    a.add("a1", image_for(lab), lab, record={"by": "a"})
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert sorted(meta["samples"]) == ["a0", "a1", "b0"]


def test_a_writer_that_never_writes_leaves_no_folders(tmp_path):
    DatasetWriter(tmp_path / "out", origin="synthetic")
    assert not (tmp_path / "out").exists()


def test_a_synthetic_writer_refuses_a_real_data_set(dataset_folder):
    with pytest.raises(CellsynthInputError, match="did not synthesize"):
        DatasetWriter(dataset_folder, origin="synthetic")


def test_edited_records_are_merged_not_replaced(tmp_path):
    lab = disks(shape=(32, 32), centres=((10, 10),), radius=4)
    w = DatasetWriter(tmp_path / "out", origin="synthetic")
    w.add("a", image_for(lab), lab, record={"status": "unreviewed"})
    other = DatasetWriter(tmp_path / "out")
    other.add("b", image_for(lab), lab)
    w.meta["samples"]["a"]["quality"] = {"SEG": 0.5}  # edited in place, then saved
    w.save()
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert sorted(meta["samples"]) == ["a", "b"]
    assert meta["samples"]["a"]["quality"] == {"SEG": 0.5}
