"""The cell atlas: crops, per-cell table and intensity statistics."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth.atlas import build_atlas, cell_table, intensity_stats
from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair, read_dataset
from conftest import disks, image_for


def test_atlas_has_one_normalised_crop_per_cell(dataset_folder):
    atlas = build_atlas(read_dataset(dataset_folder), crop_size=32)
    assert len(atlas) == 6
    assert atlas.masks.shape == (6, 32, 32)
    assert set(np.unique(atlas.masks)) == {0, 1}
    # scale normalisation: every cell fills a similar fraction of its crop
    fill = atlas.masks.mean(axis=(1, 2))
    assert np.all(fill > 0.3) and np.all(fill < 0.8)
    assert atlas.images.shape == (6, 32, 32)


def test_crop_images_are_brighter_inside_the_cell(dataset_folder):
    atlas = build_atlas(read_dataset(dataset_folder), crop_size=32)
    inside = atlas.images[atlas.masks == 1].mean()
    outside = atlas.images[atlas.masks == 0].mean()
    assert inside > outside + 0.3


def test_table_measures_area_and_diameter():
    lab = disks(centres=((20, 20),), radius=8)
    t = cell_table(lab, image_for(lab))
    area = float((lab > 0).sum())
    assert t["area"][0] == area
    assert t["equivalent_diameter"][0] == pytest.approx(np.sqrt(4 * area / np.pi))
    assert t["solidity"][0] > 0.9
    assert t["z_extent"][0] == 1


def test_3d_table_reports_volume_and_z_extent_in_micrometres():
    vol = disks(shape=(9, 40, 40), centres=((4, 20, 20),), radius=4)
    t = cell_table(vol, voxel_size=(2.0, 0.5, 0.5))
    assert t["z_extent"][0] == 9
    assert t["z_extent_um"][0] == 18.0
    assert t["volume"][0] == float((vol > 0).sum())
    assert t["z"][0] == 4  # crop slice = where the cell is largest


def test_sparse_3d_atlas_uses_only_annotated_slices(ctc_folder):
    atlas = build_atlas(read_dataset(ctc_folder / "02"), crop_size=16)
    assert len(atlas) == 4  # 2 frames x 2 cells, all on slice 3
    assert set(atlas.table["z"].tolist()) == {3}
    assert atlas.ndim == 3


def test_intensity_statistics_come_from_the_data_not_constants():
    lab = disks()
    img8 = image_for(lab, dtype=np.uint8)
    img16 = (image_for(lab).astype(np.uint32) * 40).astype(np.uint16)
    s8 = intensity_stats([Pair.from_arrays("a", img8, lab)])
    s16 = intensity_stats([Pair.from_arrays("b", img16, lab)])
    assert s8.dtype == "uint8" and s16.dtype == "uint16"
    assert s16.high > 10 * s8.high
    assert s8.foreground_mean > s8.background_mean
    x = s16.normalise(img16)
    assert np.percentile(x, 99.9) == pytest.approx(1.0, abs=0.02)
    assert np.abs(s16.denormalise(x).astype(float) - img16).max() <= 1


def test_atlas_without_labels_is_an_error():
    with pytest.raises(CellsynthInputError, match="at least one image with labels"):
        build_atlas([Pair.from_arrays("a", np.zeros((8, 8)), None)])


def test_atlas_refuses_mixed_2d_and_3d():
    lab2, lab3 = disks(), disks(shape=(4, 64, 64), centres=((2, 20, 20),))
    with pytest.raises(CellsynthInputError, match="mixes 2D"):
        build_atlas(
            [
                Pair.from_arrays("a", image_for(lab2), lab2),
                Pair.from_arrays("b", image_for(lab3), lab3),
            ]
        )
