"""Headless curation (cellsynth.curation): the queue, accept / correct / reject, the curated folder.

No napari or Qt here: the Curate widget only drives this module.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from cellsynth.curation import (
    Candidate,
    Curation,
    candidates_from_folder,
    queue_order,
    rejected_in,
)
from cellsynth.errors import CellsynthInputError
from conftest import disks, image_for


def _synthetic(root, scores=(0.2, 0.9, 0.5), origin="synthetic"):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    samples = {}
    for i, score in enumerate(scores):
        lab = disks(centres=((16 + i, 16), (40, 44)))
        tifffile.imwrite(root / "images" / f"p{i}.tif", image_for(lab, i))
        tifffile.imwrite(root / "labels" / f"p{i}.tif", lab)
        samples[f"p{i}"] = {"seed": i, "status": "unreviewed"}
        if score is not None:
            samples[f"p{i}"]["quality"] = {"SEG": score}
    (root / "dataset.json").write_text(json.dumps({"origin": origin, "samples": samples}))
    return root


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_queue_puts_the_best_scored_pairs_first_and_unscored_ones_last_in_order():
    lab = disks()
    cands = [
        Candidate(n, lab, lab, s) for n, s in (("a", None), ("b", 0.1), ("c", 0.8), ("d", None))
    ]
    assert [c.name for c in queue_order(cands)] == ["c", "b", "a", "d"]


def test_candidates_from_a_folder_carry_their_quality_and_record(tmp_path):
    cands = candidates_from_folder(_synthetic(tmp_path / "s"))
    by_name = {c.name: c for c in cands}
    assert by_name["p1"].score == 0.9 and by_name["p1"].record["seed"] == 1
    assert by_name["p0"].load_labels().shape == (64, 64)
    assert np.issubdtype(by_name["p0"].load_labels().dtype, np.integer)


def test_a_real_data_set_is_refused_as_the_synthetic_source(tmp_path):
    real = _synthetic(tmp_path / "real", origin="real")
    with pytest.raises(CellsynthInputError, match="not a synthetic data set"):
        Curation.from_folder(real)


def test_nothing_to_curate_is_one_clear_error():
    with pytest.raises(CellsynthInputError, match="no synthetic pairs"):
        Curation([])


def test_accept_correct_reject_and_skip_walk_the_queue_and_write_the_curated_folder(tmp_path):
    src = _synthetic(tmp_path / "s")
    before = _files(src)
    out = tmp_path / "curated"
    cur = Curation.from_folder(src)
    assert cur.current.name == "p1" and cur.left == 2

    corrected = cur.current.load_labels().copy()
    corrected[:5, :5] = 99
    assert cur.accept(out, labels=corrected) == "p1"
    assert cur.current.name == "p2"
    assert cur.reject(out) == "p2"
    assert cur.current.name == "p0" and cur.left == 0
    assert cur.accept(out) == "p0"  # as synthesized
    assert cur.done and cur.current is None
    assert cur.summary() == "accepted 2 · rejected 1 · 0 left"

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["origin"] == "synthetic-curated"
    p1, p0 = meta["samples"]["p1"], meta["samples"]["p0"]
    assert (p1["status"], p1["corrected"], p1["seed"]) == ("accepted", True, 1)
    assert (p0["status"], p0["corrected"]) == ("accepted", False)
    assert p1["source"] == str(src) and p1["source_name"] == "p1"
    assert tifffile.imread(out / "labels" / "p1.tif")[:5, :5].max() == 99
    assert rejected_in(out) == {"p2": {"source": str(src), "score": 0.5}}
    assert _files(src) == before  # the originals are untouched

    with pytest.raises(CellsynthInputError, match="all pairs are reviewed"):
        cur.accept(out)


def test_next_skips_without_recording_a_decision(tmp_path):
    cur = Curation.from_folder(_synthetic(tmp_path / "s"))
    assert cur.next().name == "p2"
    assert cur.accepted == cur.rejected == []
    assert not (tmp_path / "curated").exists()


def test_a_name_taken_in_the_curated_folder_gets_the_next_free_one(tmp_path):
    lab = disks()
    out = tmp_path / "curated"
    for _ in range(2):
        Curation([Candidate("x", image_for(lab), lab, source="layers")]).accept(out)
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["x.tif", "x_0000.tif"]


def test_the_curated_folder_is_never_the_source_nor_real_data(tmp_path):
    src = _synthetic(tmp_path / "s")
    real = _synthetic(tmp_path / "real", origin="real")
    before = _files(real)
    cur = Curation.from_folder(src)
    with pytest.raises(CellsynthInputError, match="must differ from the synthetic one"):
        cur.accept(src)
    with pytest.raises(CellsynthInputError, match="origin 'real'"):
        cur.reject(real)
    assert cur.current.name == "p1"  # a refused decision does not move on
    assert _files(real) == before


def test_the_core_module_loads_no_gui_toolkit():
    code = (
        "import sys, cellsynth.curation\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'magicgui')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
