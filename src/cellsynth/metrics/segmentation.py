"""Segmentation scores: CTC SEG, Cellpose's AP at IoU thresholds, binary panoptic quality, and
the frame-by-frame evaluation of a predicted data set against a reference one.

* **SEG** (Cell Tracking Challenge): reference object R matches predicted S iff
  ``|R ∩ S| > 0.5 |R|``; its score is ``J = |R ∩ S| / |R ∪ S|``, 0 when unmatched; SEG is the
  sum of J over all reference objects of all frames divided by their number. For 3D frames
  annotated on single slices only those slices are compared (each slice's objects count).
* **AP at IoU t** (Cellpose): ``TP / (TP + FP + FN)`` per image with one-to-one matching at
  IoU >= t, averaged over images, computed by ``cellpose.metrics.average_precision``. Images with
  neither reference nor predicted objects are left out of the mean.
* **bPQ**: matches are pairs with IoU > 0.5 (unique by construction);
  ``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ`` = mean IoU of matches, ``PQ = DQ * SQ`` per image, mean
  over the images whose reference is not empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError
from cellsynth.io import Dataset, Pair, check_same_shape

AP_THRESHOLDS = (0.5, 0.75, 0.9)


@dataclass
class Overlap:
    """Sizes and pairwise intersections of the objects of a reference and a prediction."""

    ref_ids: np.ndarray  # (R,)
    ref_sizes: np.ndarray  # (R,)
    pred_ids: np.ndarray  # (P,)
    pred_sizes: np.ndarray  # (P,)
    ref_index: np.ndarray  # (K,) index into ref_ids of each overlapping pair
    pred_index: np.ndarray  # (K,)
    intersection: np.ndarray  # (K,)

    @property
    def iou(self) -> np.ndarray:
        union = (
            self.ref_sizes[self.ref_index] + self.pred_sizes[self.pred_index] - self.intersection
        )
        return self.intersection / np.maximum(union, 1)


def overlap(reference: np.ndarray, prediction: np.ndarray) -> Overlap:
    """Sparse contingency table of two label images (any dimension, up to uint32 labels)."""
    ref = np.asarray(reference).ravel()
    pred = np.asarray(prediction).ravel()
    if ref.shape != pred.shape:
        raise CellsynthInputError(
            f"prediction shape {np.shape(prediction)} differs from reference {np.shape(reference)}"
        )
    ref_ids, ref_sizes = np.unique(ref[ref > 0], return_counts=True)
    pred_ids, pred_sizes = np.unique(pred[pred > 0], return_counts=True)
    both = (ref > 0) & (pred > 0)
    r, p = ref[both], pred[both]
    if r.size:
        ri = np.searchsorted(ref_ids, r)
        pi = np.searchsorted(pred_ids, p)
        key = ri.astype(np.int64) * max(len(pred_ids), 1) + pi
        keys, inter = np.unique(key, return_counts=True)
        rix, pix = np.divmod(keys, max(len(pred_ids), 1))
    else:
        rix = pix = inter = np.zeros(0, np.int64)
    return Overlap(ref_ids, ref_sizes, pred_ids, pred_sizes, rix, pix, inter)


def seg_jaccards(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The CTC SEG score J of every reference object (0 for unmatched ones)."""
    return _jaccards(overlap(reference, prediction))


def _jaccards(ov: Overlap) -> np.ndarray:
    j = np.zeros(len(ov.ref_ids), np.float64)
    match = ov.intersection > 0.5 * ov.ref_sizes[ov.ref_index]
    j[ov.ref_index[match]] = ov.iou[match]
    return j


def seg(references: Sequence[np.ndarray], predictions: Sequence[np.ndarray]) -> float:
    """CTC SEG over several frames: sum of J over all reference objects / their number."""
    js = [seg_jaccards(r, p) for r, p in zip(references, predictions, strict=True)]
    n = sum(len(j) for j in js)
    return float(sum(j.sum() for j in js) / n) if n else float("nan")


def panoptic_quality(reference: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """Binary panoptic quality of one image: DQ, SQ, PQ with matches at IoU > 0.5."""
    return _panoptic(overlap(reference, prediction))


def _panoptic(ov: Overlap) -> dict[str, float]:
    iou = ov.iou
    matched = iou > 0.5
    tp = int(matched.sum())
    fp = len(ov.pred_ids) - tp
    fn = len(ov.ref_ids) - tp
    denom = tp + 0.5 * fp + 0.5 * fn
    dq = tp / denom if denom else float("nan")
    sq = float(iou[matched].mean()) if tp else 0.0
    return {
        "DQ": dq,
        "SQ": sq,
        "PQ": dq * sq if denom else float("nan"),
        "TP": tp,
        "FP": fp,
        "FN": fn,
    }


def average_precision(
    references: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    thresholds: Sequence[float] = AP_THRESHOLDS,
) -> np.ndarray:
    """Per-image AP at each IoU threshold, shape (n_images, n_thresholds), via Cellpose."""
    from cellpose import metrics as cp_metrics
    from skimage.segmentation import relabel_sequential

    # Cellpose counts objects as max(label): labels must be 1..N without gaps
    refs = [relabel_sequential(np.asarray(r).astype(np.int64))[0] for r in references]
    preds = [relabel_sequential(np.asarray(p).astype(np.int64))[0] for p in predictions]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap, _tp, _fp, _fn = cp_metrics.average_precision(refs, preds, threshold=list(thresholds))
    return np.asarray(ap, dtype=np.float64)


# ------------------------------------------------------------------ evaluation of data sets


@dataclass
class FrameComparison:
    """One compared frame (or annotated slice) and its scores."""

    name: str
    n_reference: int
    n_predicted: int
    seg_sum: float
    ap: dict[str, float]
    pq: dict[str, float]
    jaccards: tuple[float, ...] = ()  # per reference cell (ascending label), for paired tests

    @property
    def seg(self) -> float:
        return self.seg_sum / self.n_reference if self.n_reference else float("nan")

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_reference": self.n_reference,
            "n_predicted": self.n_predicted,
            "SEG": self.seg,
            **self.ap,
            "bPQ": self.pq["PQ"],
        }


@dataclass
class Evaluation:
    frames: list[FrameComparison] = field(default_factory=list)
    unmatched_predictions: list[str] = field(default_factory=list)
    unmatched_references: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        n_ref = sum(f.n_reference for f in self.frames)
        out: dict[str, Any] = {
            "SEG": sum(f.seg_sum for f in self.frames) / n_ref if n_ref else float("nan"),
        }
        for t in AP_THRESHOLDS:
            key = _ap_key(t)
            vals = [f.ap[key] for f in self.frames if not math.isnan(f.ap[key])]
            out[key] = float(np.mean(vals)) if vals else float("nan")
        pqs = [f.pq["PQ"] for f in self.frames if f.n_reference > 0]
        out["bPQ"] = float(np.mean(pqs)) if pqs else float("nan")
        out["n_images"] = len(self.frames)
        out["n_reference"] = n_ref
        out["n_predicted"] = sum(f.n_predicted for f in self.frames)
        return out

    def rows(self) -> list[dict[str, Any]]:
        return [f.row() for f in self.frames]


def _ap_key(t: float) -> str:
    return f"AP{round(t * 100)}"


def compare_frames(
    name: str,
    reference: np.ndarray,
    prediction: np.ndarray,
    annotated_slices: Sequence[int] | None = None,
) -> list[FrameComparison]:
    """Score one frame; for slice-wise annotations, one comparison per annotated slice."""
    check_same_shape(reference, prediction, f"{name} (reference)", f"{name} (prediction)")
    if annotated_slices:
        items = [(f"{name}_z{z:03d}", reference[z], prediction[z]) for z in annotated_slices]
    else:
        items = [(name, reference, prediction)]
    refs = [r for _, r, _ in items]
    preds = [p for _, _, p in items]
    ap = average_precision(refs, preds)
    out = []
    for i, (n, r, p) in enumerate(items):
        ov = overlap(r, p)  # one contingency table serves SEG, bPQ and the counts
        j = _jaccards(ov)
        out.append(
            FrameComparison(
                name=n,
                n_reference=len(ov.ref_ids),
                n_predicted=len(ov.pred_ids),
                seg_sum=float(j.sum()),
                ap={_ap_key(t): float(ap[i, k]) for k, t in enumerate(AP_THRESHOLDS)},
                pq=_panoptic(ov),
                jaccards=tuple(round(float(v), 4) for v in j),
            )
        )
    return out


def match_pairs(
    pred: Dataset, ref: Dataset
) -> tuple[list[tuple[Pair, Pair]], list[str], list[str]]:
    """Pair predicted and reference frames by name, then by frame number."""
    ref_pairs = [p for p in ref.pairs if p.has_labels]
    pred_pairs = [p for p in pred.pairs if p.has_labels]
    if len(ref_pairs) == 1 and len(pred_pairs) == 1:
        return [(pred_pairs[0], ref_pairs[0])], [], []
    by_name = {p.name: p for p in ref_pairs}
    by_key: dict[Any, list[Pair]] = {}
    for p in ref_pairs:
        by_key.setdefault(p.key, []).append(p)
    out, unmatched = [], []
    used: set[int] = set()
    for p in pred_pairs:
        r = by_name.get(p.name)
        if r is None:
            cands = [c for c in by_key.get(p.key, []) if id(c) not in used]
            r = cands[0] if len(cands) == 1 else None
        if r is None or id(r) in used:
            unmatched.append(p.name)
            continue
        used.add(id(r))
        out.append((p, r))
    missing = [r.name for r in ref_pairs if id(r) not in used]
    return out, unmatched, missing


def evaluate_datasets(pred: Dataset, ref: Dataset) -> Evaluation:
    """Compare predicted label images with reference label images, frame by frame."""
    pairs, unmatched, missing = match_pairs(pred, ref)
    if not pairs:
        raise CellsynthInputError(
            f"no predicted frame could be paired with a reference frame by name or frame number "
            f"(predictions: {[p.name for p in pred.pairs][:5]}, references: "
            f"{[p.name for p in ref.pairs][:5]})",
            pred.root,
        )
    ev = Evaluation(unmatched_predictions=unmatched, unmatched_references=missing)
    for p, r in pairs:
        pl = p.labels
        if r.annotated_slices and not r.has_image and pl.ndim == 3:
            r.depth = pl.shape[0]
        rl = r.labels
        if pl.shape != rl.shape:
            raise CellsynthInputError(
                f"prediction shape {pl.shape} differs from reference shape {rl.shape} of "
                f"{r.labels_path or r.name}",
                p.labels_path or p.name,
            )
        ev.frames.extend(compare_frames(r.name, rl, pl, r.annotated_slices))
    return ev
