"""``cellsynth evaluate`` prints its per-image table once, then the JSON summary last, whether it
compares label folders or segments the images with a model first."""

from __future__ import annotations

import json

import pytest
import tifffile

from cellsynth.cli import main
from test_cli_jobs import threshold_segment

HEADER = ["name", "n_reference", "n_predicted", "SEG", "AP50", "AP75", "AP90", "bPQ"]


def _tables(out: str) -> list[str]:
    """The table header lines of ``out``."""
    return [line for line in out.splitlines() if line.split() == HEADER]


def test_evaluate_prints_the_per_image_table_once(dataset_folder, tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in sorted((dataset_folder / "labels").iterdir()):
        tifffile.imwrite(pred / f.name, tifffile.imread(f))
    assert main(["evaluate", str(pred), str(dataset_folder)]) == 0
    out = capsys.readouterr().out
    assert len(_tables(out)) == 1
    assert sum(line.startswith("img") for line in out.splitlines()) == 3  # one row per image
    assert json.loads(out.splitlines()[-1])["SEG"] == 1.0


def test_evaluate_with_a_model_prints_the_table_once(dataset_folder, monkeypatch, capsys):
    monkeypatch.setattr("cellsynth.segment.load_model", lambda *args, **kwargs: "threshold")
    monkeypatch.setattr("cellsynth.segment.segment", threshold_segment)
    model = dataset_folder / "labels" / "img0.tif"  # any file: load_model is replaced
    assert main(["evaluate", "--model", str(model), str(dataset_folder)]) == 0
    out = capsys.readouterr().out
    assert len(_tables(out)) == 1
    summary = json.loads(out.splitlines()[-1])
    assert summary["n_images"] == 3
    assert summary["SEG"] == pytest.approx(1.0)
