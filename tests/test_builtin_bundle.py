"""The built-in bundle and `cellsynth demo`: real trained weights shipped with the package."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from cellsynth.bundle import GeneratorBundle, builtin_bundle_path
from cellsynth.cli import main
from cellsynth.io import read_dataset
from cellsynth.synthesize import SynthesisParams, Synthesizer


@pytest.fixture(scope="module")
def synth():
    return Synthesizer(None, device="cpu")


def test_builtin_bundle_is_small_and_safetensors_only():
    root = builtin_bundle_path()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    assert {p.suffix for p in files} <= {".json", ".safetensors"}
    meta = GeneratorBundle.load(root).meta
    assert meta["intensity"]["dtype"] == "uint8"


@pytest.fixture(scope="module")
def pair(synth):
    return synth.sample(SynthesisParams(size=(192, 192), cells=8, seed=0))


def test_builtin_pair_has_single_component_cells_that_touch_only_when_placed_so(pair):
    lab = pair.labels
    assert np.issubdtype(lab.dtype, np.unsignedinteger)
    n = int(lab.max())
    assert n >= 4
    touching = {int(v) for v in pair.table["label"][pair.table["touching"]]}
    for i in range(1, n + 1):
        cell = lab == i
        assert ndimage.label(cell)[1] == 1
        ring = ndimage.binary_dilation(cell) & ~cell
        for j in set(np.unique(lab[ring]).tolist()) - {0}:
            assert i in touching or j in touching  # cells meet only where placed in contact


def test_builtin_pair_image_agrees_with_its_labels(pair):
    img, lab = pair.image.astype(np.float64), pair.labels
    assert img.std() > 1  # not constant
    inside, outside = img[lab > 0], img[lab == 0]
    # fluorescence nuclei: cells clearly brighter than the background, as in the training data
    assert np.median(inside) > np.percentile(outside, 90)
    assert inside.mean() > outside.mean() + 3 * outside.std() / 2


def test_demo_writes_pairs_and_a_realism_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "-n", "1", "--size", "128", "128", "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    assert str(out) in stdout
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["cells"] >= 1
    assert (out / "realism.png").stat().st_size > 10_000
    report = json.loads((out / "realism.json").read_text())
    assert "synthetic_to_real" in report and "real_to_real" in report
    assert len(read_dataset(out, require_labels=True)) == 1


def test_demo_never_reuses_an_existing_folder(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("keep me")
    assert (
        main(
            [
                "demo",
                "-o",
                str(tmp_path / "demo"),
                "-n",
                "1",
                "--size",
                "64",
                "64",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (tmp_path / "demo" / "mine.txt").read_text() == "keep me"
    assert (tmp_path / "demo-2" / "realism.png").exists()
