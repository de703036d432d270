"""Stage 8: segmentation and realism metrics, one definition each (see docs/metrics.md).

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
* **Realism**: per-feature distances between the per-cell feature distributions of two sets
  (Wasserstein-1 divided by the reference set's standard deviation, and the Kolmogorov-Smirnov
  statistic), reported for synthetic-to-real next to real-to-real.
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


# --------------------------------------------------------------------------- realism


def realism_distances(
    reference: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
    features: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Distances between the per-cell feature distributions of two cell tables.

    For each feature: ``w1`` (Wasserstein-1 distance divided by the reference standard deviation,
    so features of different units compare) and ``ks`` (two-sample Kolmogorov-Smirnov statistic).
    A ``mean`` entry averages them over the features.
    """
    from scipy.stats import ks_2samp, wasserstein_distance

    from cellsynth.atlas import MORPHOLOGY_FEATURES

    features = list(features or (*MORPHOLOGY_FEATURES, "mean_intensity", "z_extent"))
    out: dict[str, dict[str, float]] = {}
    for f in features:
        a = np.asarray(reference.get(f, []), dtype=np.float64)
        b = np.asarray(other.get(f, []), dtype=np.float64)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size < 2 or b.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0]):
            continue  # missing, or the same constant (z extent of 2D data): nothing to compare
        sd = a.std() or 1.0
        out[f] = {
            "w1": float(wasserstein_distance(a, b) / sd),
            "ks": float(ks_2samp(a, b).statistic),
        }
    if out:
        out["mean"] = {k: float(np.mean([v[k] for v in out.values()])) for k in ("w1", "ks")}
    return out


def slice_correlation(image: np.ndarray, labels: np.ndarray) -> float:
    """Adjacent-slice correlation of the texture inside cells of a 3D stack.

    For every pair of neighbouring slices, the voxels of one cell in both slices are taken with
    the cell's mean in each slice removed (so it is the texture, not the cells' brightness, that
    counts); the Pearson correlation of these residuals is pooled over all pairs and cells.
    This is what rho (paper 001, eq. 2) controls. NaN when no cell spans two slices.
    """
    img = np.asarray(image, dtype=np.float64)
    lab = np.asarray(labels)
    if img.ndim != 3 or img.shape != lab.shape:
        raise CellsynthInputError(
            f"slice correlation needs a 3D image and labels of one shape, got {img.shape} "
            f"and {lab.shape}"
        )
    a_all, b_all = [], []
    for z in range(img.shape[0] - 1):
        same = (lab[z] > 0) & (lab[z] == lab[z + 1])
        if not same.any():
            continue
        ids = lab[z][same]
        a, b = img[z][same], img[z + 1][same]
        _, inv = np.unique(ids, return_inverse=True)
        cnt = np.bincount(inv)
        a_all.append(a - (np.bincount(inv, a) / cnt)[inv])
        b_all.append(b - (np.bincount(inv, b) / cnt)[inv])
    if not a_all:
        return float("nan")
    a, b = np.concatenate(a_all), np.concatenate(b_all)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


# --------------------------------------------------------------------------- layout

#: two cells "touch" when some pixel of one lies within this distance of a pixel of the other
#: (1 = adjacent pixels, 2 = at most one background pixel between them)
TOUCH_DISTANCE = 2.0


def touching_pairs(labels: np.ndarray, distance: float = TOUCH_DISTANCE) -> np.ndarray:
    """(K, 2) sorted pairs of distinct labels with pixels within ``distance`` (any dimension).

    Every offset of length <= ``distance`` (half of them, by symmetry) is compared at once, so a
    frame of a few hundred cells takes milliseconds.
    """
    lab = np.asarray(labels)
    r = int(np.floor(distance))
    grids = np.meshgrid(*[np.arange(-r, r + 1)] * lab.ndim, indexing="ij")
    offs = np.stack([g.ravel() for g in grids], 1)
    norm2 = (offs**2).sum(1)
    offs = offs[(norm2 > 0) & (norm2 <= distance**2)]
    offs = offs[[tuple(o) > (0,) * lab.ndim for o in offs]]  # one of each +-pair
    found = []
    for o in offs:
        a = lab[tuple(slice(max(0, -k), lab.shape[i] - max(0, k)) for i, k in enumerate(o))]
        b = lab[tuple(slice(max(0, k), lab.shape[i] + min(0, k)) for i, k in enumerate(o))]
        sel = (a > 0) & (b > 0) & (a != b)
        if sel.any():
            p = np.stack([a[sel], b[sel]], 1).astype(np.int64)
            found.append(np.unique(np.sort(p, 1), axis=0))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


def layout_table(labels: np.ndarray, distance: float = TOUCH_DISTANCE) -> dict[str, np.ndarray]:
    """Per-cell layout of one label image: ``touching`` (another cell within ``distance`` px),
    ``nn_distance`` (centroid distance to the nearest other cell, px; NaN for a lone cell) and
    ``nn_ratio`` (that distance over the cell's equivalent diameter — scale-free)."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    lab = np.asarray(labels)
    ids, areas = np.unique(lab[lab > 0], return_counts=True)
    if ids.size == 0:
        return {k: np.zeros(0) for k in ("label", "touching", "nn_distance", "nn_ratio", "area")}
    pairs = touching_pairs(lab, distance)
    touching = np.isin(ids, pairs.ravel())
    centres = np.asarray(ndimage.center_of_mass(np.ones(lab.shape), lab, ids), np.float64)
    centres = centres.reshape(len(ids), lab.ndim)
    nn = np.full(len(ids), np.nan)
    if len(ids) > 1:
        d, _ = cKDTree(centres).query(centres, k=2)
        nn = d[:, 1]
    diam = 2.0 * np.sqrt(areas / np.pi) if lab.ndim == 2 else (6.0 * areas / np.pi) ** (1 / 3)
    return {
        "label": ids,
        "touching": touching,
        "nn_distance": nn,
        "nn_ratio": nn / diam,
        "area": areas.astype(np.float64),
    }


def layout_summary(
    label_images: Sequence[np.ndarray], distance: float = TOUCH_DISTANCE
) -> dict[str, Any]:
    """Layout of a set of label images: the fraction of cells touching another (within
    ``distance`` px), nearest-neighbour distances (px and over the cell's diameter: median and
    quartiles), density (cells per pixel, and cells per median cell area — scale-free) and the
    foreground fraction."""
    tabs = [layout_table(lab, distance) for lab in label_images]
    n = sum(len(t["label"]) for t in tabs)
    pixels = float(sum(np.asarray(lab).size for lab in label_images))
    fg = float(sum(np.count_nonzero(lab) for lab in label_images))
    if n == 0:
        return {"n_cells": 0, "touching_fraction": float("nan"), "density": 0.0}
    cat = {k: np.concatenate([t[k] for t in tabs]) for k in tabs[0]}
    nn, ratio = cat["nn_distance"], cat["nn_ratio"]
    ok = np.isfinite(nn)
    q = (lambda v: [float(x) for x in np.percentile(v, (25, 50, 75))]) if ok.any() else None
    return {
        "n_cells": n,
        "touching_fraction": float(cat["touching"].mean()),
        "nn_distance_quartiles": q(nn[ok]) if q else None,
        "nn_ratio_quartiles": q(ratio[ok]) if q else None,
        "nn_ratios": [round(float(v), 4) for v in ratio[ok]],
        "density": n / max(pixels, 1.0),
        "cells_per_median_area": n / max(pixels, 1.0) * float(np.median(cat["area"])),
        "foreground_fraction": fg / max(pixels, 1.0),
    }


# --------------------------------------------------------------------------- texture

#: per-cell texture features of :func:`texture_table`, all scale-free (see docs/metrics.md)
TEXTURE_FEATURES = (
    "texture_spread",
    "edge_contrast",
    "edge_gradient",
    "radial_profile",
    "brightness",
)
#: per-image background features of :func:`background_stats`
BACKGROUND_FEATURES = ("background_noise", "illumination", "brightness_spread")


def _background_level(image: np.ndarray, labels: np.ndarray, margin: int = 3) -> np.ndarray:
    """Background pixels at least ``margin`` px from any cell (all background if none is)."""
    from scipy import ndimage

    fg = ndimage.binary_dilation(labels > 0, iterations=margin) if labels.any() else labels > 0
    bg = image[~fg]
    return bg if bg.size else image[labels == 0]


def texture_table(image: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-cell texture of one 2D image, each feature relative to the cell's contrast
    ``c = mean inside - background median`` (so any intensity scale or offset gives the same):

    * ``texture_spread``: standard deviation inside the cell / c;
    * ``edge_contrast``: (mean of the cell's outermost pixels - mean of the 2 px ring outside it,
      other cells excluded) / c — how sharply the cell stands out at its boundary;
    * ``edge_gradient``: mean gradient magnitude on the boundary (inner and outer 1-px ring) / c,
      per pixel;
    * ``radial_profile``: (mean of the inner half - background) / (mean of the outer half -
      background), halves by distance to the boundary normalised per cell (> 1: bright centre);
    * ``brightness``: c / the median c of the image's cells (its spread is the cell-to-cell
      brightness spread).
    """
    from scipy import ndimage

    img = np.asarray(image, np.float64)
    lab = np.asarray(labels)
    if img.ndim != 2 or img.shape != lab.shape:
        raise CellsynthInputError(
            f"texture features need a 2D image and labels of one shape, got {img.shape} and "
            f"{lab.shape}"
        )
    ids = np.unique(lab[lab > 0])
    empty = {k: np.zeros(0) for k in ("label", *TEXTURE_FEATURES)}
    if ids.size == 0:
        return empty
    bg = float(np.median(_background_level(img, lab)))
    index = np.arange(1, int(lab.max()) + 1)

    def mean_of(values, where, ids_img):
        s = np.bincount(ids_img[where], values[where], minlength=index.size + 1)
        n = np.bincount(ids_img[where], minlength=index.size + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (s / n)[ids]

    lab64 = lab.astype(np.int64)
    inside = lab64 > 0
    mean_in = mean_of(img, inside, lab64)
    sq_in = mean_of(img * img, inside, lab64)
    std_in = np.sqrt(np.maximum(sq_in - mean_in**2, 0))
    c = mean_in - bg
    # rings: the cell's outermost pixels, and up to 2 px outside it (background only)
    eroded = ndimage.grey_erosion(lab64, size=3)
    dilated = ndimage.grey_dilation(lab64, size=3)
    inner = inside & ((eroded != lab64) | (dilated != lab64))
    owner, dist = _nearest_cell(lab64)
    outer = (~inside) & (dist <= 2.0)
    edge_in = mean_of(img, inner, lab64)
    edge_out = mean_of(img, outer, owner)
    gy, gx = np.gradient(ndimage.gaussian_filter(img, 0.7))
    grad = np.hypot(gy, gx)
    band = inner | (~inside & (dist <= 1.0))
    edge_grad = mean_of(grad, band, np.where(inside, lab64, owner))
    # radial halves by distance to the boundary, normalised per cell
    din = ndimage.distance_transform_edt(inside)
    peak = np.zeros(index.size + 1)
    np.maximum.at(peak, lab64[inside], din[inside])
    rel = np.where(inside, din / np.maximum(peak[lab64], 1.0), 0.0)
    core = mean_of(img, inside & (rel > 0.5), lab64)
    rim = mean_of(img, inside & (rel <= 0.5), lab64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cpos = np.where(c > 0, c, np.nan)
        out = {
            "label": ids.astype(np.int64),
            "texture_spread": std_in / cpos,
            "edge_contrast": (edge_in - edge_out) / cpos,
            "edge_gradient": edge_grad / cpos,
            "radial_profile": (core - bg) / np.where(rim - bg > 0, rim - bg, np.nan),
            "brightness": c / np.nanmedian(cpos) if np.isfinite(cpos).any() else c * np.nan,
        }
    return out


def shared_boundaries(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Brightness where two cells meet, one value per pair of adjacent cells: (mean of the
    pixels of either cell next to the other - background) / (mean of both cells - background).
    About 1: the texture runs across the shared boundary; well below 1: a dark seam between
    them (as when two nuclei only touch)."""
    from scipy import ndimage

    img = np.asarray(image, np.float64)
    lab = np.asarray(labels).astype(np.int64)
    pairs = touching_pairs(lab, 1.0)
    if not pairs.size:
        return np.zeros(0)
    bg = float(np.median(_background_level(img, lab)))
    ids = np.unique(lab[lab > 0])
    means = dict(zip(ids.tolist(), np.asarray(ndimage.mean(img, lab, ids)).tolist(), strict=True))
    sizes = dict(zip(ids.tolist(), np.bincount(lab.ravel())[ids].tolist(), strict=True))
    # for each pixel, the labels of its 4-neighbours that differ from its own
    seam_sum: dict[tuple[int, int], float] = {}
    seam_n: dict[tuple[int, int], int] = {}
    for axis in range(lab.ndim):
        for step in (1, -1):
            other = np.roll(lab, step, axis)
            edge = [slice(None)] * lab.ndim
            edge[axis] = 0 if step == 1 else -1
            other[tuple(edge)] = 0
            sel = (lab > 0) & (other > 0) & (other != lab)
            a, b = lab[sel], other[sel]
            for i, j, v in zip(np.minimum(a, b), np.maximum(a, b), img[sel], strict=True):
                key = (int(i), int(j))
                seam_sum[key] = seam_sum.get(key, 0.0) + float(v)
                seam_n[key] = seam_n.get(key, 0) + 1
    out = []
    for i, j in pairs.tolist():
        n = seam_n.get((i, j), 0)
        if not n:
            continue
        inside = (means[i] * sizes[i] + means[j] * sizes[j]) / (sizes[i] + sizes[j]) - bg
        if inside > 0:
            out.append((seam_sum[(i, j)] / n - bg) / inside)
    return np.asarray(out, np.float64)


def _nearest_cell(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel, the label of the nearest cell pixel and the distance to it."""
    from scipy import ndimage

    if not labels.any():
        return np.zeros_like(labels), np.full(labels.shape, np.inf)
    dist, idx = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    return labels[tuple(idx)], dist


def background_stats(image: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per-image background and brightness statistics, relative to the median cell contrast
    ``c`` (mean inside a cell - background median) of the image:

    * ``background_noise``: robust standard deviation (1.4826 x MAD) of the background (pixels
      3 px or more from any cell) after removing its smooth part (Gaussian, sigma 2 px) / c —
      camera noise and fine debris;
    * ``illumination``: robust spread of the background smoothed at the median cell diameter
      (using background pixels only) / c — uneven illumination and out-of-focus haze;
    * ``brightness_spread``: coefficient of variation of the cells' contrasts (cell to cell).
    """
    from scipy import ndimage

    img = np.asarray(image, np.float64)
    lab = np.asarray(labels)
    check_same_shape(img, lab, "image", "labels")
    fg = ndimage.binary_dilation(lab > 0, iterations=3) if lab.any() else lab > 0
    bg = img[~fg] if (~fg).any() else img[lab == 0]
    ids, areas = np.unique(lab[lab > 0], return_counts=True)
    nan = float("nan")
    if ids.size == 0 or bg.size == 0:
        return dict.fromkeys(BACKGROUND_FEATURES, nan)
    contrast = np.asarray(ndimage.mean(img, lab, ids), np.float64) - float(np.median(bg))
    c = float(np.median(contrast))
    if not c > 0:
        return dict.fromkeys(BACKGROUND_FEATURES, nan)

    def mad(v: np.ndarray) -> float:
        v = v[np.isfinite(v)]
        return float(1.4826 * np.median(np.abs(v - np.median(v)))) if v.size else nan

    fine = img - ndimage.gaussian_filter(img, 2.0)
    coarse = _masked_smooth(img, ~fg, max(2.0, 2 * np.sqrt(np.median(areas) / np.pi)))
    return {
        "background_noise": mad(fine[~fg]) / c,
        "illumination": mad(coarse[~fg]) / c,
        "brightness_spread": float(np.std(contrast) / np.mean(contrast))
        if ids.size > 1 and np.mean(contrast) > 0
        else nan,
    }


def _masked_smooth(img: np.ndarray, where: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of ``img`` using only the pixels ``where`` (normalised convolution)."""
    from scipy import ndimage

    w = where.astype(np.float64)
    num = ndimage.gaussian_filter(img * w, sigma)
    den = ndimage.gaussian_filter(w, sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-3, num / den, np.nan)


# ------------------------------------------------------------- learned features, two-sample test


def relative_image(image: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """An image in units of its cells' contrast: (image - background median) / (median cell
    mean - background median). Without labels, the 50th and 99th percentiles stand in.
    Scale-free inputs for the learned-feature distance and the two-sample test."""
    img = np.asarray(image, np.float64)
    if labels is not None and np.any(labels):
        lab = np.asarray(labels)
        bg = float(np.median(_background_level(img, lab)))
        fgm = float(np.median(img[lab > 0]))
    else:
        bg, fgm = (float(v) for v in np.percentile(img, (50, 99)))
    return ((img - bg) / max(fgm - bg, 1e-6)).astype(np.float32)


def image_tiles(images: Sequence[np.ndarray], tile: int, stride: int | None = None) -> np.ndarray:
    """(N, tile, tile) float32 tiles on a regular grid of each 2D image (images smaller than
    ``tile`` are padded with their edge values)."""
    stride = stride or tile
    out = []
    for img in images:
        img = np.asarray(img, np.float32)
        ph, pw = max(0, tile - img.shape[0]), max(0, tile - img.shape[1])
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw)), mode="edge")
        for y in range(0, img.shape[0] - tile + 1, stride):
            for x in range(0, img.shape[1] - tile + 1, stride):
                out.append(img[y : y + tile, x : x + tile])
    return np.stack(out) if out else np.zeros((0, tile, tile), np.float32)


def style_vectors(
    model: Any,
    images: Sequence[np.ndarray],
    *,
    tile: int = 96,
    stride: int | None = None,
    batch: int = 16,
) -> np.ndarray:
    """Cellpose style vectors (the network's 256-d global summary, as in Cellpose's own
    style-based size model) of tiles of 2D images (``tile`` px every ``stride``, default half a
    tile, after rescaling), shape (N, 256).

    ``model`` is a ``cellpose.models.CellposeModel`` (e.g. ``cellsynth.segment.load_model`` of a
    model trained on the user's real data). Each image is normalised as Cellpose does (1st-99th
    percentile) and rescaled so its cells have the network's training diameter.
    """
    import torch
    from cellpose.transforms import normalize99
    from skimage.transform import rescale

    net = model.net
    dev = next(net.parameters()).device
    diam_labels = float(getattr(model, "diam_labels", 0) or 0)
    scale = float(model.diam_mean) / diam_labels if diam_labels > 0 else 1.0
    prepared = []
    for img in images:
        x = normalize99(np.asarray(img, np.float32))
        if abs(scale - 1.0) > 1e-3:
            x = rescale(x, scale, order=1, preserve_range=True, anti_aliasing=scale < 1)
        prepared.append(x.astype(np.float32))
    tiles = image_tiles(prepared, tile, stride or tile // 2)
    nchan = int(getattr(model, "nchan", 2) or 2)
    styles = []
    net.eval()
    with torch.no_grad():
        for i in range(0, len(tiles), batch):
            t = torch.from_numpy(tiles[i : i + batch])[:, None]
            x = torch.cat([t, torch.zeros_like(t).repeat(1, nchan - 1, 1, 1)], 1)
            styles.append(net(x.to(dev))[1].float().cpu().numpy())
    return np.concatenate(styles) if styles else np.zeros((0, 256), np.float32)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples), as in
    FID: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise CellsynthInputError(
            f"Fréchet distance needs two feature sets of >= 2 rows and equal width, got "
            f"{a.shape} and {b.shape}"
        )
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sa @ sb)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(len(sa))
        covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
    return float(max(mu @ mu + np.trace(sa + sb - 2 * np.real(covmean)), 0.0))


@dataclass
class TwoSampleTest:
    """A classifier two-sample test: held-out accuracy of a CNN told to separate two sets
    (0.5 = indistinguishable)."""

    accuracy: float
    n_train: int
    n_test: int
    chance_interval: tuple[float, float]  # 95 % of accuracies of a classifier that guesses

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "chance_interval": list(self.chance_interval),
        }


def classifier_two_sample_test(
    set_a: Sequence[np.ndarray],
    set_b: Sequence[np.ndarray],
    *,
    crop: int = 48,
    crops_per_image: int = 64,
    epochs: int = 8,
    seed: int = 0,
    device: str | Any = "cpu",
) -> TwoSampleTest:
    """Train a small CNN on random crops of half the images of each set (label: which set),
    report its accuracy on crops of the other half. Images (e.g. :func:`relative_image` outputs)
    are split by image, not by crop, so the test crops come from images the network never saw;
    the classes are balanced by drawing the same number of crops from each set."""
    import torch
    from torch import nn

    from cellsynth.device import select_device

    if len(set_a) < 2 or len(set_b) < 2:
        raise CellsynthInputError("a two-sample test needs at least two images in each set")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    def crops(images, n_total):
        per = max(1, n_total // len(images))
        out = []
        for img in images:
            img = np.asarray(img, np.float32)
            if min(img.shape) < crop:
                img = np.pad(img, [(0, max(0, crop - s)) for s in img.shape], mode="edge")
            ys = rng.integers(0, img.shape[0] - crop + 1, per)
            xs = rng.integers(0, img.shape[1] - crop + 1, per)
            out += [img[y : y + crop, x : x + crop] for y, x in zip(ys, xs, strict=True)]
        return np.stack(out)

    def split(images):
        idx = rng.permutation(len(images))
        h = len(images) // 2
        return [images[i] for i in idx[:h]], [images[i] for i in idx[h:]]

    (a_tr, a_te), (b_tr, b_te) = split(list(set_a)), split(list(set_b))
    n_tr = crops_per_image * min(len(a_tr), len(b_tr))
    n_te = crops_per_image * min(len(a_te), len(b_te))
    xtr = np.concatenate([crops(a_tr, n_tr), crops(b_tr, n_tr)])
    ytr = np.concatenate([np.zeros(len(xtr) // 2), np.ones(len(xtr) - len(xtr) // 2)])
    xa, xb = crops(a_te, n_te), crops(b_te, n_te)
    xte = np.concatenate([xa, xb])
    yte = np.concatenate([np.zeros(len(xa)), np.ones(len(xb))])
    dev = select_device(device)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1),
    ).to(dev)  # fmt: skip
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    xt = torch.from_numpy(xtr)[:, None].to(dev)
    yt = torch.from_numpy(ytr).float().to(dev)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), device=dev)
        for i in range(0, len(xt), 32):
            j = perm[i : i + 32]
            x = xt[j]
            if rng.random() < 0.5:  # flips: the test is about texture, not orientation
                x = torch.flip(x, (3,))
            loss = nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], yt[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        logits = torch.cat(
            [
                net(torch.from_numpy(xte[i : i + 256])[:, None].to(dev))[:, 0]
                for i in range(0, len(xte), 256)
            ]
        )
    acc = float(((logits.cpu().numpy() > 0) == (yte > 0.5)).mean())
    half = 1.96 * 0.5 / np.sqrt(len(yte))
    return TwoSampleTest(acc, len(ytr), len(yte), (0.5 - half, 0.5 + half))


def background_summary(
    images: Sequence[np.ndarray], label_images: Sequence[np.ndarray]
) -> dict[str, float]:
    """Median over images of :func:`background_stats` (what a bundle records of its data)."""
    stats = [background_stats(i, lab) for i, lab in zip(images, label_images, strict=True)]
    out = {}
    for k in BACKGROUND_FEATURES:
        v = np.asarray([s[k] for s in stats], np.float64)
        v = v[np.isfinite(v)]
        out[k] = float(np.median(v)) if v.size else float("nan")
    return out
