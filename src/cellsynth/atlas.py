"""Stage 1, the cell atlas: what the cells of a data set look like.

From images + instance labels (2D, dense 3D, or 3D annotated on single slices) the atlas collects

* one **scale-normalised mask crop** per cell (``crop_size`` x ``crop_size``, the cell's bounding
  square, padded by ``margin``, resized so the cell fills it; the scale is kept in the table),
  the training data of the mask model;
* the matching **image crops**, intensities normalised with the data set's own statistics;
* a **per-cell table**: area (pixels of the crop slice), volume (voxels, 3D), equivalent diameter
  (pixels and micrometres), z extent, eccentricity, solidity, perimeter, mean intensity;
* the **intensity statistics** of the images (percentiles, foreground and background), from which
  synthetic images are mapped back to the data's own range. No intensity range is hard-coded.

For 3D cells the crops are taken from the slice where the cell is largest (the view the 2D mask
model learns); with single-slice annotations only annotated slices are used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair, check_same_shape

log = logging.getLogger(__name__)

TABLE_COLUMNS = (
    "image",
    "label",
    "z",
    "area",
    "volume",
    "equivalent_diameter",
    "equivalent_diameter_um",
    "z_extent",
    "z_extent_um",
    "eccentricity",
    "solidity",
    "perimeter",
    "mean_intensity",
    "centroid_y",
    "centroid_x",
    "scale",
    "touches_border",
)
MORPHOLOGY_FEATURES = ("area", "perimeter", "eccentricity", "solidity", "equivalent_diameter")
PERCENTILES = (0.1, 1.0, 5.0, 50.0, 95.0, 99.0, 99.9)


@dataclass
class IntensityStats:
    """Intensity statistics of a set of images (raw units), for normalising and mapping back."""

    dtype: str
    percentiles: dict[str, float]
    minimum: float
    maximum: float
    foreground_mean: float
    foreground_std: float
    background_mean: float
    background_std: float

    @property
    def low(self) -> float:
        return self.percentiles["1.0"]

    @property
    def high(self) -> float:
        return self.percentiles["99.9"]

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """Map raw intensities to float32 with the 1st percentile at 0 and the 99.9th at 1."""
        scale = max(self.high - self.low, 1e-6)
        return ((np.asarray(image, dtype=np.float32) - self.low) / scale).astype(np.float32)

    def denormalise(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalise`, clipped to the dtype's range and cast to it."""
        raw = np.asarray(x, dtype=np.float64) * (self.high - self.low) + self.low
        return to_dtype(raw, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IntensityStats:
        return cls(**d)


def to_dtype(raw: np.ndarray, dtype: Any) -> np.ndarray:
    """Raw float intensities as ``dtype``: integers rounded and clipped to the dtype's range."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.rint(raw), info.min, info.max).astype(dt)
    return np.asarray(raw).astype(dt)


@dataclass
class CellAtlas:
    """The cells of a data set: normalised crops, per-cell table and intensity statistics."""

    masks: np.ndarray  # (N, S, S) uint8 in {0, 1}
    images: np.ndarray  # (N, S, S) float32, normalised by ``intensity``
    table: dict[str, np.ndarray]
    intensity: IntensityStats
    crop_size: int
    voxel_size: tuple[float, ...] | None = None
    ndim: int = 2
    n_images: int = 0
    summary: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.masks)

    def mean_intensities(self) -> list[float]:
        """Each cell's mean raw intensity (as recorded in bundles for ``--brightness data``)."""
        return [round(float(v), 3) for v in self.table["mean_intensity"] if np.isfinite(v)]

    def rows(self) -> list[dict[str, Any]]:
        n = len(self)
        return [{k: _py(v[i]) for k, v in self.table.items()} for i in range(n)]


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def intensity_stats(pairs: Sequence[Pair], *, max_pixels: int = 4_000_000) -> IntensityStats:
    """Percentiles and foreground/background statistics over all images (subsampled if huge)."""
    rng = np.random.default_rng(0)
    samples, fg, bg = [], [], []
    per_image = max(max_pixels // max(len(pairs), 1), 10_000)
    dtype = None
    for pair in pairs:
        img = pair.image
        dtype = dtype or img.dtype
        lab = pair.labels if pair.has_labels else None
        flat = img.ravel()
        idx = rng.choice(flat.size, size=min(per_image, flat.size), replace=False)
        samples.append(flat[idx].astype(np.float64))
        if lab is not None:
            sl = list(pair.annotated_slices or [])
            img_l, lab_l = (img[sl], lab[sl]) if sl else (img, lab)
            m = lab_l.ravel()[idx % lab_l.size] > 0 if not sl else lab_l.ravel() > 0
            vals = img_l.ravel()[idx % img_l.size] if not sl else img_l.ravel()
            fg.append(vals[m].astype(np.float64))
            bg.append(vals[~m].astype(np.float64))
    if dtype is None:
        raise CellsynthInputError("no images to compute intensity statistics from")
    allv = np.concatenate(samples)
    fgv = np.concatenate(fg) if fg else np.array([np.nan])
    bgv = np.concatenate(bg) if bg else np.array([np.nan])
    pct = np.percentile(allv, PERCENTILES)
    return IntensityStats(
        dtype=str(dtype),
        percentiles={str(p): float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
        minimum=float(allv.min()),
        maximum=float(allv.max()),
        foreground_mean=float(np.mean(fgv)) if fgv.size else float("nan"),
        foreground_std=float(np.std(fgv)) if fgv.size else float("nan"),
        background_mean=float(np.mean(bgv)) if bgv.size else float("nan"),
        background_std=float(np.std(bgv)) if bgv.size else float("nan"),
    )


def cell_table(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    *,
    voxel_size: Sequence[float] | None = None,
    annotated_slices: Sequence[int] | None = None,
    name: str = "",
) -> dict[str, np.ndarray]:
    """Per-cell morphology and intensity of one label image (2D or 3D). No crops."""
    table, _, _ = _measure(
        labels,
        image,
        voxel_size=voxel_size,
        annotated_slices=annotated_slices,
        name=name,
        crop_size=None,
        intensity=None,
    )
    return table


def build_atlas(
    pairs: Iterable[Pair],
    *,
    crop_size: int = 64,
    margin: float = 0.15,
    min_area: int = 9,
    exclude_border: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> CellAtlas:
    """Build the :class:`CellAtlas` of labelled pairs.

    ``min_area`` drops specks (pixels, on the crop slice); ``exclude_border`` keeps cells cut by
    the image border out of the crops and the table (their shapes are incomplete), unless every
    cell of an image touches it.
    """
    pairs = [p for p in pairs if p.has_labels]
    if not pairs:
        raise CellsynthInputError("the cell atlas needs at least one image with labels")
    ndims = set()
    for p in pairs:
        if not p.has_image:
            raise CellsynthInputError("labels without an image", p.labels_path)
        check_same_shape(p.image, p.labels, p.image_path, p.labels_path)
        ndims.add(p.labels.ndim)
    if len(ndims) > 1:
        raise CellsynthInputError(
            "mixes 2D images and 3D stacks; build one atlas per kind", pairs[0].image_path
        )
    stats = intensity_stats(pairs)
    masks, crops = [], []
    tables: list[dict[str, np.ndarray]] = []
    for i, p in enumerate(pairs):
        t, m, c = _measure(
            p.labels,
            p.image,
            voxel_size=p.voxel_size,
            annotated_slices=p.annotated_slices,
            name=p.name,
            crop_size=crop_size,
            intensity=stats,
            margin=margin,
        )
        keep = t["area"] >= min_area
        if exclude_border:
            keep_crop = keep & ~t["touches_border"]
            if not keep_crop.any():  # every cell touches the border: keep them rather than none
                keep_crop = keep
        else:
            keep_crop = keep
        tables.append({k: v[keep_crop] for k, v in t.items()})
        masks.append(m[keep_crop])
        crops.append(c[keep_crop])
        if progress is not None:
            progress(i + 1, len(pairs))
    table = {k: np.concatenate([t[k] for t in tables]) for k in TABLE_COLUMNS}
    n = len(table["label"])
    if n == 0:
        raise CellsynthInputError(
            f"no usable cells (all smaller than {min_area} pixels?)", pairs[0].labels_path
        )
    atlas = CellAtlas(
        masks=np.concatenate(masks).astype(np.uint8),
        images=np.concatenate(crops).astype(np.float32),
        table=table,
        intensity=stats,
        crop_size=crop_size,
        voxel_size=pairs[0].voxel_size,
        ndim=ndims.pop(),
        n_images=len(pairs),
    )
    atlas.summary = summarise(atlas)
    return atlas


def summarise(atlas: CellAtlas) -> dict[str, Any]:
    t = atlas.table
    out: dict[str, Any] = {"cells": len(atlas), "images": atlas.n_images, "ndim": atlas.ndim}
    for k in ("area", "equivalent_diameter", "z_extent", "eccentricity", "solidity"):
        v = t[k][np.isfinite(t[k])]
        if v.size:
            out[k] = {
                "mean": float(v.mean()),
                "std": float(v.std()),
                "p5": float(np.percentile(v, 5)),
                "p95": float(np.percentile(v, 95)),
            }
    return out


def _measure(
    labels: np.ndarray,
    image: np.ndarray | None,
    *,
    voxel_size: Sequence[float] | None,
    annotated_slices: Sequence[int] | None,
    name: str,
    crop_size: int | None,
    intensity: IntensityStats | None,
    margin: float = 0.15,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    from skimage.measure import regionprops

    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise CellsynthInputError(f"labels must be 2D or 3D, got shape {labels.shape}", name)
    vs = tuple(voxel_size) if voxel_size else (1.0,) * labels.ndim
    vs = vs[-labels.ndim :] if len(vs) >= labels.ndim else (1.0,) * (labels.ndim - len(vs)) + vs
    rows: dict[str, list[Any]] = {k: [] for k in TABLE_COLUMNS}
    mask_crops: list[np.ndarray] = []
    img_crops: list[np.ndarray] = []
    if labels.ndim == 2:
        slices_2d = [(None, labels, image)]
    else:
        zs = list(annotated_slices) if annotated_slices else None
        slices_2d = None
    if labels.ndim == 3:
        # one entry per cell: the slice where it is largest; volume/z extent from the stack
        z_ok = np.zeros(labels.shape[0], bool)
        z_ok[zs if zs is not None else slice(None)] = True
        lab_used = np.where(z_ok[:, None, None], labels, 0)
        props3 = regionprops(lab_used)
        best: dict[int, tuple[int, int]] = {}
        for z in np.flatnonzero(z_ok):
            ids, counts = np.unique(lab_used[z], return_counts=True)
            for i, c in zip(ids, counts, strict=True):
                if i and (i not in best or c > best[i][1]):
                    best[int(i)] = (int(z), int(c))
        info3 = {int(p.label): p for p in props3}
        entries = sorted(best.items())
        per_slice: dict[int, list[int]] = {}
        for lab_id, (z, _) in entries:
            per_slice.setdefault(z, []).append(lab_id)
        slices_2d = [
            (z, labels[z], image[z] if image is not None else None) for z in sorted(per_slice)
        ]
    assert slices_2d is not None
    for z, lab2, img2 in slices_2d:
        props = regionprops(lab2, intensity_image=img2)
        wanted = set(per_slice[z]) if labels.ndim == 3 else None  # type: ignore[index]
        for p in props:
            if wanted is not None and p.label not in wanted:
                continue
            r0, c0, r1, c1 = p.bbox
            rows["image"].append(name)
            rows["label"].append(int(p.label))
            rows["z"].append(-1 if z is None else int(z))
            rows["area"].append(float(p.area))
            rows["perimeter"].append(float(p.perimeter))
            rows["eccentricity"].append(float(p.eccentricity))
            rows["solidity"].append(float(p.solidity))
            rows["centroid_y"].append(float(p.centroid[0]))
            rows["centroid_x"].append(float(p.centroid[1]))
            rows["mean_intensity"].append(
                float(p.intensity_mean) if img2 is not None else float("nan")
            )
            border = r0 == 0 or c0 == 0 or r1 == lab2.shape[0] or c1 == lab2.shape[1]
            if labels.ndim == 3:
                p3 = info3[p.label]
                zr = p3.bbox[3] - p3.bbox[0]
                rows["volume"].append(float(p3.area))
                rows["z_extent"].append(float(zr))
                rows["z_extent_um"].append(float(zr * vs[0]))
                d_vox = (6.0 * p3.area * vs[0] * vs[1] * vs[2] / np.pi) ** (1 / 3)
                rows["equivalent_diameter_um"].append(float(d_vox))
                rows["equivalent_diameter"].append(float(np.sqrt(4 * p.area / np.pi)))
            else:
                rows["volume"].append(float("nan"))
                rows["z_extent"].append(1.0)
                rows["z_extent_um"].append(float("nan"))
                rows["equivalent_diameter"].append(float(np.sqrt(4 * p.area / np.pi)))
                rows["equivalent_diameter_um"].append(
                    float(np.sqrt(4 * p.area * vs[-1] * vs[-2] / np.pi))
                )
            rows["touches_border"].append(bool(border))
            side = max(r1 - r0, c1 - c0) * (1.0 + 2.0 * margin)
            rows["scale"].append(float(side / crop_size) if crop_size else float("nan"))
            if crop_size:
                m, c = _crop(lab2, img2, p, side, crop_size, intensity)
                mask_crops.append(m)
                img_crops.append(c)
    table = {
        k: np.asarray(
            v, dtype=object if k == "image" else (bool if k == "touches_border" else None)
        )
        for k, v in rows.items()
    }
    for k in TABLE_COLUMNS:
        if k not in ("image", "touches_border", "label", "z") and table[k].size == 0:
            table[k] = np.zeros(0, np.float64)
    table["label"] = table["label"].astype(np.int64)
    table["z"] = table["z"].astype(np.int64)
    table["touches_border"] = table["touches_border"].astype(bool)
    s = crop_size or 1
    return (
        table,
        np.stack(mask_crops) if mask_crops else np.zeros((0, s, s), np.uint8),
        np.stack(img_crops) if img_crops else np.zeros((0, s, s), np.float32),
    )


def _crop(
    lab2: np.ndarray,
    img2: np.ndarray | None,
    prop: Any,
    side: float,
    size: int,
    intensity: IntensityStats | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around the cell, resized to ``size`` x ``size`` (mask bilinear > 0.5)."""
    from scipy.ndimage import map_coordinates

    cy, cx = (prop.bbox[0] + prop.bbox[2]) / 2.0, (prop.bbox[1] + prop.bbox[3]) / 2.0
    half = side / 2.0 + 2.0
    y0, x0 = max(int(cy - half), 0), max(int(cx - half), 0)
    y1, x1 = (
        min(int(np.ceil(cy + half)), lab2.shape[0]),
        min(int(np.ceil(cx + half)), lab2.shape[1]),
    )
    step = side / size
    grid = (np.arange(size) + 0.5) * step - side / 2.0
    yy, xx = np.meshgrid(cy + grid - 0.5 - y0, cx + grid - 0.5 - x0, indexing="ij")
    coords = np.stack([yy, xx])
    cell = (lab2[y0:y1, x0:x1] == prop.label).astype(np.float32)
    m = map_coordinates(cell, coords, order=1, mode="constant", cval=0.0) > 0.5
    if img2 is not None:
        win = img2[y0:y1, x0:x1]
        img = intensity.normalise(win) if intensity is not None else win.astype(np.float32)
        c = map_coordinates(img, coords, order=1, mode="nearest")
    else:
        c = np.zeros((size, size), np.float32)
    return m.astype(np.uint8), c.astype(np.float32)
