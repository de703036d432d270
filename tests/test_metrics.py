"""SEG, AP and bPQ on hand-made cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth.io import Dataset, Pair
from cellsynth.metrics import (
    average_precision,
    compare_frames,
    evaluate_datasets,
    overlap,
    panoptic_quality,
    realism_distances,
    seg,
    seg_jaccards,
)
from conftest import disks


def _square(shape, y0, y1, x0, x1, value=1, into=None):
    a = np.zeros(shape, np.uint16) if into is None else into
    a[y0:y1, x0:x1] = value
    return a


def test_identical_labels_score_one_on_everything():
    ref = disks(centres=((10, 10), (30, 30), (50, 12)))
    assert seg([ref], [ref]) == 1.0
    assert panoptic_quality(ref, ref)["PQ"] == 1.0
    assert np.allclose(average_precision([ref], [ref]), 1.0)


def test_relabelled_prediction_scores_the_same():
    ref = disks(centres=((10, 10), (30, 30)))
    pred = np.where(ref == 1, 7, np.where(ref == 2, 70_000, 0)).astype(np.uint32)
    assert seg([ref], [pred]) == 1.0
    assert np.allclose(average_precision([ref], [pred]), 1.0)


def test_seg_match_needs_more_than_half_of_the_reference():
    ref = _square((20, 20), 0, 10, 0, 10)  # 100 px
    half = _square((20, 20), 0, 5, 0, 10)  # exactly 50 px: not a match (> 0.5 |R| needed)
    more = _square((20, 20), 0, 6, 0, 10)  # 60 px: match, J = 60/100
    assert seg_jaccards(ref, half).tolist() == [0.0]
    assert seg_jaccards(ref, more) == pytest.approx([0.6])


def test_seg_penalises_an_oversized_prediction_through_the_union():
    ref = _square((20, 20), 0, 10, 0, 10)  # 100 px
    big = _square((20, 20), 0, 20, 0, 10)  # 200 px, covers all of R
    assert seg_jaccards(ref, big) == pytest.approx([0.5])


def test_seg_counts_unmatched_references_as_zero_over_all_frames():
    ref_a = _square((20, 20), 0, 10, 0, 10, 1)
    _square((20, 20), 10, 20, 10, 20, 2, into=ref_a)
    ref_b = _square((20, 20), 0, 10, 0, 10, 1)
    pred_a = ref_a.copy()
    pred_a[ref_a == 2] = 0  # second cell missed
    pred_b = ref_b.copy()
    # frame a: J = 1, 0 ; frame b: J = 1 -> SEG = 2/3 (object-weighted, not frame-weighted)
    assert seg([ref_a, ref_b], [pred_a, pred_b]) == pytest.approx(2 / 3)


def test_seg_ignores_false_positives():
    ref = _square((20, 20), 0, 10, 0, 10)
    pred = _square((20, 20), 0, 10, 0, 10, 1)
    _square((20, 20), 12, 20, 12, 20, 2, into=pred)
    assert seg([ref], [pred]) == 1.0
    assert panoptic_quality(ref, pred)["FP"] == 1


def test_bpq_of_one_half_matched_image():
    ref = _square((20, 20), 0, 10, 0, 10, 1)
    _square((20, 20), 10, 20, 10, 20, 2, into=ref)
    pred = _square((20, 20), 0, 10, 0, 8, 1)  # IoU 0.8 with cell 1, cell 2 missed
    pq = panoptic_quality(ref, pred)
    assert pq["TP"] == 1 and pq["FN"] == 1 and pq["FP"] == 0
    assert pq["DQ"] == pytest.approx(1 / 1.5)
    assert pq["SQ"] == pytest.approx(0.8)
    assert pq["PQ"] == pytest.approx(0.8 / 1.5)


def test_ap_thresholds_follow_iou():
    ref = _square((20, 20), 0, 10, 0, 10)
    pred = _square((20, 20), 0, 10, 0, 8)  # IoU 0.8
    ap = average_precision([ref], [pred])[0]
    assert ap.tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_overlap_is_sparse_and_exact():
    ref = _square((10, 10), 0, 5, 0, 5, 3)
    pred = _square((10, 10), 0, 5, 0, 2, 9)
    _square((10, 10), 0, 5, 2, 5, 4, into=pred)
    ov = overlap(ref, pred)
    assert ov.ref_ids.tolist() == [3]
    assert sorted(
        zip(ov.pred_ids[ov.pred_index].tolist(), ov.intersection.tolist(), strict=True)
    ) == [(4, 15), (9, 10)]


def test_single_slice_annotations_compare_only_their_slices():
    vol = np.zeros((5, 20, 20), np.uint16)
    vol[:, 2:8, 2:8] = 1
    ref = np.zeros_like(vol)
    ref[2] = vol[2]
    pred = vol.copy()
    pred[0] = 0  # unannotated slices don't matter
    frames = compare_frames("t000", ref, pred, annotated_slices=[2])
    assert len(frames) == 1
    assert frames[0].name == "t000_z002"
    assert frames[0].seg == 1.0


def test_evaluate_pairs_frames_by_number():
    ref = Dataset(
        root=None,
        kind="arrays",
        pairs=[
            Pair.from_arrays("man_seg001", None, disks(centres=((10, 10),))),
            Pair.from_arrays("man_seg002", None, disks(centres=((30, 30),))),
        ],
    )
    pred = Dataset(
        root=None,
        kind="arrays",
        pairs=[
            Pair.from_arrays("t002", None, disks(centres=((30, 30),))),
            Pair.from_arrays("t001", None, np.zeros((64, 64), np.uint16)),
        ],
    )
    ev = evaluate_datasets(pred, ref)
    s = ev.summary()
    assert s["n_images"] == 2
    assert s["n_reference"] == 2
    assert s["SEG"] == pytest.approx(0.5)
    assert {f.name: f.seg for f in ev.frames} == {"man_seg002": 1.0, "man_seg001": 0.0}


def test_realism_distance_is_zero_for_the_same_table_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = {"area": rng.normal(100, 10, 500), "solidity": rng.uniform(0.8, 1, 500)}
    same = realism_distances(a, a, ["area", "solidity"])
    shifted = realism_distances(
        a, {"area": a["area"] + 20, "solidity": a["solidity"]}, ["area", "solidity"]
    )
    assert same["mean"]["w1"] == 0.0
    assert shifted["area"]["w1"] == pytest.approx(2.0, rel=0.05)
    assert shifted["area"]["ks"] > 0.5


def test_touching_pairs_are_cells_within_two_pixels():
    from cellsynth.metrics import layout_table, touching_pairs

    lab = np.zeros((40, 60), np.uint16)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2  # adjacent to 1
    lab[5:15, 26:35] = 3  # one background column from 2 (distance 2)
    lab[5:15, 37:45] = 4  # two background columns from 3 (distance 3): apart
    lab[25:35, 50:58] = 5  # alone
    assert touching_pairs(lab).tolist() == [[1, 2], [2, 3]]
    t = layout_table(lab)
    assert t["touching"].tolist() == [True, True, True, False, False]
    assert np.all(np.isfinite(t["nn_ratio"])) and np.all(t["nn_ratio"] > 0)


def test_layout_summary_density_and_touching_fraction():
    from cellsynth.metrics import layout_summary

    lab = np.zeros((50, 50), np.uint16)
    lab[0:10, 0:10] = 1
    lab[0:10, 10:20] = 2
    lab[30:40, 30:40] = 3
    lab[40:50, 0:10] = 4
    s = layout_summary([lab, np.zeros((50, 50), np.uint16)])
    assert s["n_cells"] == 4
    assert s["touching_fraction"] == pytest.approx(0.5)
    assert s["density"] == pytest.approx(4 / 5000)
    assert s["cells_per_median_area"] == pytest.approx(4 / 5000 * 100)
    assert s["cut_fraction"] == pytest.approx(0.75)  # 1, 2 and 4 reach the border
    assert s["cut_area_p5"] is None  # too few cut cells to tell the smallest slivers


def test_cut_cells_and_the_smallest_slivers_a_real_image_shows():
    from cellsynth.metrics import layout_summary, layout_table

    lab = np.zeros((100, 100), np.uint16)
    for k in range(12):  # twelve cells cut by the left border, 2 x 4 to 13 x 4 px visible
        lab[k * 8 : k * 8 + 4, 0 : 2 + k] = k + 1
    lab[40:50, 40:50] = 13  # a whole cell
    t = layout_table(lab)
    assert t["cut"].tolist() == [True] * 12 + [False]
    s = layout_summary([lab])
    assert s["cut_area_p5"] == pytest.approx(np.percentile(4 * np.arange(2, 14), 5))
