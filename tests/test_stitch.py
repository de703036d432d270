"""Stacks of few, coarse slices scored stitched: each XY slice segmented in 2D, nuclei of
consecutive slices joined by overlap (``--stitch-threshold``, an experiment's
``evaluation.stitch_threshold``), through the CLI and any backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellsynth.cli import main
from cellsynth.errors import CellsynthInputError
from cellsynth.io import write_tiff
from cellsynth.segment import segment
from cellsynth.segmenters import Segmenter, register_backend
from conftest import disks, image_for

NAME = "slice-threshold-test"


@register_backend
class SliceSegmenter(Segmenter):
    """Connected components above half the image's range: segments 2D slices only."""

    name = NAME
    label = "2D threshold (test)"

    @classmethod
    def load(cls, path, device="auto") -> SliceSegmenter:
        return cls()

    @classmethod
    def is_model_file(cls, path: Path) -> bool:
        return Path(path).read_bytes() == NAME.encode()

    def segment(self, image, *, anisotropy=None, diameter=None, do_3D=False) -> np.ndarray:
        from skimage.measure import label

        if do_3D:
            raise AssertionError("the 3D mode was used where the slices should be stitched")
        image = np.asarray(image, np.float32)
        return label(image > (image.min() + image.max()) / 2)

    @classmethod
    def finetune(cls, real, synthetic, out, settings):
        raise NotImplementedError

    def save(self, path) -> Path:
        Path(path).write_bytes(NAME.encode())
        return Path(path)


def _stack() -> np.ndarray:
    """Three slices: nucleus 1 through all of them, nucleus 2 in the first two, nucleus 3 in
    the last slice only (away from 2)."""
    a = disks((64, 64), [(16, 16), (44, 44)], radius=7)
    b = disks((64, 64), [(17, 16), (45, 44)], radius=7)
    c = disks((64, 64), [(16, 17)], radius=7)
    c[disks((64, 64), [(50, 12)], radius=6) > 0] = 2
    return np.stack([a, b, c])


def test_slices_are_stitched_into_nuclei_by_overlap():
    stack = _stack()
    labels = segment(SliceSegmenter(), image_for(stack), stitch_threshold=0.25)
    assert labels.shape == stack.shape
    ids = [set(np.unique(z)) - {0} for z in labels]
    assert len(set().union(*ids)) == 3  # three nuclei, not five slice objects
    first = labels[0][16, 16]
    assert labels[1][16, 16] == labels[2][16, 16] == first  # one nucleus through the stack
    assert labels[2][50, 12] not in (0, labels[1][45, 44])  # a new nucleus, not nucleus 2


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_a_stitch_threshold_outside_0_1_is_refused(bad):
    with pytest.raises(CellsynthInputError, match=r"IoU in \(0, 1\]"):
        segment(SliceSegmenter(), image_for(_stack()), stitch_threshold=bad)


def test_cellpose3_stitches_with_its_own_stitch_threshold():
    from cellsynth.segmenters.cellpose3 import Cellpose3Segmenter

    calls = []

    class FakeModel:
        def eval(self, x, **kwargs):
            calls.append(kwargs)
            return np.zeros(x.shape, np.int32), None, None

    out = segment(Cellpose3Segmenter(FakeModel()), np.zeros((3, 32, 32)), stitch_threshold=0.3)
    assert out.shape == (3, 32, 32)
    assert calls[0]["stitch_threshold"] == 0.3 and calls[0]["z_axis"] == 0
    assert not calls[0].get("do_3D")


def test_cli_segment_and_evaluate_stitch_stacks(tmp_path, capsys):
    stack = _stack()
    data = tmp_path / "stacks"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    write_tiff(data / "images" / "s0.tif", image_for(stack), voxel_size=(1.0, 0.2, 0.2))
    ref = np.zeros_like(stack)  # the reference: three nuclei through the slices
    ref[stack == 1] = 1
    ref[:2][stack[:2] == 2] = 2
    ref[2][stack[2] == 2] = 3
    write_tiff(data / "labels" / "s0.tif", ref, voxel_size=(1.0, 0.2, 0.2))
    model = SliceSegmenter().save(tmp_path / "model")
    out = tmp_path / "seg"
    argv = ["segment", str(data / "images"), "--model", str(model), "-o", str(out)]
    assert main([*argv, "--stitch-threshold", "0.25"]) == 0
    written = tifffile.imread(out / "s0.tif")
    assert written.shape == stack.shape and len(np.unique(written)) - 1 == 3
    capsys.readouterr()
    argv = ["evaluate", "--model", str(model), str(data), "--stitch-threshold", "0.25"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["SEG"] == 1.0
    assert main([*argv[:-1], "2"]) == 2
    assert "IoU in (0, 1]" in capsys.readouterr().err
    # score (curation's quality score) stitches too, and says so in dataset.json
    assert main(["score", str(data), "--model", str(model), "--stitch-threshold", "0.25"]) == 0
    quality = json.loads((data / "dataset.json").read_text())["samples"]["s0"]["quality"]
    assert quality["SEG"] == 1.0 and quality["stitch_threshold"] == 0.25
