"""The command line: info, evaluate, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from cellsynth.cli import main
from conftest import disks, shared_data


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_info_reports_cells_and_voxel_size(ctc_folder, capsys):
    assert main(["info", str(ctc_folder / "02")]) == 0
    out = capsys.readouterr().out
    summary = _last_json(out)
    assert summary["kind"] == "ctc"
    assert summary["n_cells"] == 4
    assert "2.0" in out and "0.5" in out  # voxel size in the table


def test_info_on_builtin_sample_data(capsys):
    from cellsynth.samples import sample_dataset_path

    assert main(["info", str(sample_dataset_path())]) == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["n_items"] == 12
    assert summary["n_cells"] == 280


def test_evaluate_prints_table_and_json_last(dataset_folder, tmp_path, capsys):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for p in sorted((dataset_folder / "labels").iterdir()):
        lab = tifffile.imread(p)
        if p.stem == "img1":
            lab[lab == 3] = 0  # miss one cell
        tifffile.imwrite(pred_dir / p.name, lab)
    report = tmp_path / "report.json"
    assert main(["evaluate", str(pred_dir), str(dataset_folder), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    summary = _last_json(out)
    assert set(summary) >= {"SEG", "AP50", "AP75", "AP90", "bPQ", "n_images", "n_reference"}
    assert summary["n_images"] == 3
    assert summary["n_reference"] == 6
    assert summary["SEG"] == pytest.approx(5 / 6)
    assert "img1" in out
    saved = json.loads(report.read_text())
    assert len(saved["frames"]) == 3


def test_evaluate_ctc_gt_against_a_3d_prediction_uses_annotated_slices(
    ctc_folder, tmp_path, capsys
):
    res = tmp_path / "02_RES"
    res.mkdir()
    for t in range(2):
        vol = disks(shape=(6, 64, 64), centres=((3, 20, 20), (3, 44, 40)), radius=5)
        tifffile.imwrite(res / f"mask{t:03d}.tif", vol)
    assert main(["evaluate", str(res), str(ctc_folder / "02_GT" / "SEG")]) == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["n_images"] == 2  # one annotated slice per frame
    assert summary["SEG"] == 1.0


def test_bad_input_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "labels.tif"
    tifffile.imwrite(bad, np.random.default_rng(0).random((16, 16)).astype(np.float32))
    proc = subprocess.run(
        [sys.executable, "-m", "cellsynth.cli", "evaluate", str(bad), str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1
    assert "labels.tif" in err[0] and "floating point" in err[0]
    assert "Traceback" not in proc.stderr


def test_missing_path_exits_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


@pytest.mark.shared_data
def test_evaluate_gowt1_gt_against_itself_is_perfect(capsys):
    gowt1 = shared_data("ctc_Fluo-N2DH-GOWT1")
    assert main(["evaluate", str(gowt1 / "masks"), str(gowt1)]) == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary == {
        **summary,
        "SEG": 1.0,
        "AP50": 1.0,
        "bPQ": 1.0,
        "n_images": 4,
        "n_reference": 94,
    }
