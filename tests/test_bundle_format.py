"""The bundle owns bundle.json: versions, typed statistics, optional parts, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cellsynth.bundle import (
    BUNDLE_FORMAT,
    Calibration3D,
    CellStats,
    GeneratorBundle,
    builtin_bundle_path,
)
from cellsynth.errors import CellsynthInputError


@pytest.fixture
def copy(tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(builtin_bundle_path(), dst)
    return dst


def _edit(folder, fn):
    meta = json.loads((folder / "bundle.json").read_text())
    fn(meta)
    (folder / "bundle.json").write_text(json.dumps(meta))


FORMAT_1 = Path(__file__).parent / "fixtures" / "bundle_dsb2018_v05"  # the former built-in


def test_a_bundle_of_format_1_loads_and_its_statistics_are_typed():
    meta = json.loads((FORMAT_1 / "bundle.json").read_text())
    assert meta["format"] == "cellsynth-bundle/1"  # written before this version
    b = GeneratorBundle.load(FORMAT_1)
    cells = b.cells
    assert isinstance(cells, CellStats)
    assert cells.crop_size == 64 and cells.density > 0 and len(cells.scales) == len(b.scales)
    assert b.meta["parts"] == ["mask_model", "texture_model"]
    assert b.calibration_3d is None and b.multiview_path is None


def test_the_shipped_bundle_is_brightness_conditioned():
    b = GeneratorBundle.load(None)
    assert b.meta["format"] == BUNDLE_FORMAT
    assert b.texture_cfg.cond_channels == 4
    assert len(b.brightness_frames) == 12  # one per built-in image
    assert b.path == builtin_bundle_path()


def test_a_saved_bundle_is_the_current_format_and_round_trips(copy):
    b = GeneratorBundle.load(copy)
    cal = Calibration3D(shape_prior={"z_ratio": 0.5}, texture3d={"rho": 2.0}, seconds=1.0)
    b.set_calibration_3d(cal, [2.0, 0.5, 0.5], 1e-5)
    b.save()
    again = GeneratorBundle.load(copy)
    assert again.meta["format"] == BUNDLE_FORMAT
    assert again.calibration_3d.rho == 2.0
    assert again.cells.density_3d == 1e-5
    assert again.voxel_size == [2.0, 0.5, 0.5]


@pytest.mark.parametrize(
    ("edit", "key", "expected"),
    [
        (lambda m: m["cells"].update(crop_size=-64), "cells.crop_size", "integer from 8"),
        (lambda m: m["cells"].update(crop_size="64"), "cells.crop_size", "integer"),
        (lambda m: m["cells"].update(density=0), "cells.density", "number > 0"),
        (lambda m: m["cells"].update(scales=[]), "cells.scales", "non-empty list"),
        (lambda m: m["cells"].update(scales=[1, -2]), "cells.scales", "positive numbers"),
        (lambda m: m["cells"].pop("crop_size"), "cells.crop_size", "integer"),
        (lambda m: m["intensity"].update(dtype="complex"), "intensity.dtype", "numpy dtype"),
        (lambda m: m["intensity"].update(foreground_std=-1), "intensity.foreground_std", ">= 0"),
        (lambda m: m.update(voxel_size=5), "voxel_size", "2 or 3 positive"),
        (lambda m: m["mask_config"].update(widths=[]), "mask_config.widths", "non-empty list"),
        (lambda m: m["texture_config"].update(sample_size=0), "texture_config.sample_size", "4"),
        (lambda m: m.update(texture3d={"rho": -1}), "texture3d.rho", ">= 0"),
        (
            lambda m: m.update(shape_prior={"z_equators": [0.5, "low"]}),
            "shape_prior.z_equators",
            "heights",
        ),
        (lambda m: m["mask_config"].update(sampler="euler"), "mask_config.sampler", "unipc"),
        (lambda m: m["cells"].update(min_cut_area=-3), "cells.min_cut_area", ">= 0"),
        (lambda m: m["cells"].update(edge_cut=1.5), "cells.edge_cut", "from 0.0 to 1.0"),
    ],
)
def test_absurd_values_give_one_line_naming_the_file_key_and_expectation(copy, edit, key, expected):
    _edit(copy, edit)
    with pytest.raises(CellsynthInputError) as err:
        GeneratorBundle.load(copy)
    msg = str(err.value)
    assert "\n" not in msg and "bundle.json" in msg and key in msg and expected in msg


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "JSON object"),
        ("{", "not valid JSON"),
        ('{"format": "cellsynth-bundle/99"}', "unsupported bundle format"),
    ],
)
def test_broken_bundle_json(copy, content, message):
    (copy / "bundle.json").write_text(content)
    with pytest.raises(CellsynthInputError, match=message):
        GeneratorBundle.load(copy)


def test_a_save_killed_in_the_model_swap_is_recovered(copy):
    (copy / "mask_model").rename(copy / ".mask_model.old")  # the window between two renames
    b = GeneratorBundle.load(copy)
    assert b.mask_unet is not None
    (copy / ".mask_model.abc123").mkdir()  # a temp folder of a killed save
    b.save()
    assert (copy / "mask_model").is_dir()
    assert not (copy / ".mask_model.old").exists() and not (copy / ".mask_model.abc123").exists()


def test_damaged_weights_are_one_line(copy):
    (copy / "texture_model" / "diffusion_pytorch_model.safetensors").write_bytes(b"xx")
    with pytest.raises(CellsynthInputError) as err:
        GeneratorBundle.load(copy)
    assert "\n" not in str(err.value) and "texture_model" in str(err.value)
