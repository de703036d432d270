"""The output policy: synthetic pairs never go into, or come from, a real data set."""

import json

import numpy as np
import pytest
import tifffile

from cellsynth.errors import CellsynthInputError
from cellsynth.outputs import check_synthetic_source, check_synthetic_target


def _dataset(root, origin=None, label_dir="labels"):
    for d in ("images", label_dir):
        (root / d).mkdir(parents=True)
        tifffile.imwrite(root / d / "a.tif", np.zeros((8, 8), np.uint16))
    if origin:
        (root / "dataset.json").write_text(json.dumps({"origin": origin, "samples": {}}))
    return root


def test_new_empty_and_synthetic_folders_are_allowed(tmp_path):
    assert check_synthetic_target(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_synthetic_target(tmp_path / "empty")
    check_synthetic_target(_dataset(tmp_path / "syn", "synthetic"))
    check_synthetic_source(tmp_path / "syn")


@pytest.mark.parametrize(
    ("origin", "label_dir", "words"),
    [("real", "labels", "origin 'real'"), (None, "masks", "masks/"), (None, "labels", "did not")],
)
def test_real_data_sets_are_refused_as_targets(tmp_path, origin, label_dir, words):
    root = _dataset(tmp_path / "real", origin, label_dir)
    with pytest.raises(CellsynthInputError, match=words) as err:
        check_synthetic_target(root)
    assert str(root) in str(err.value)


def test_a_file_is_refused_as_target(tmp_path):
    (tmp_path / "f.tif").write_bytes(b"x")
    with pytest.raises(CellsynthInputError, match="not a folder"):
        check_synthetic_target(tmp_path / "f.tif")


@pytest.mark.parametrize("origin", ["real", None])
def test_real_data_sets_are_refused_as_synthetic_sources(tmp_path, origin):
    root = _dataset(tmp_path / "real", origin)
    with pytest.raises(CellsynthInputError, match="not a synthetic data set"):
        check_synthetic_source(root)
