"""Checks at the boundary: label images, image/label shapes, 3D stacks and ``dataset.json``.

Every check of a label image lives in :func:`validate_labels`; every problem raises
:class:`CellsynthInputError` naming the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError

log = logging.getLogger(__name__)

MAX_LABEL_DTYPE = np.uint32


def validate_labels(
    labels: np.ndarray,
    path: str | Path | None = None,
    *,
    require_cells: bool = False,
    allow_binary: bool = True,
) -> np.ndarray:
    """Check an instance label image and return it as unsigned integers (uint16 or uint32).

    Raises :class:`CellsynthInputError` for floating-point, boolean-only-when-disallowed,
    negative, colour or (when ``require_cells``) empty label images. A *binary* mask (one
    foreground value, e.g. 0/255) is split into instances by connected components, with a
    warning, when ``allow_binary``.
    """
    where = path if path is not None else "labels"
    labels = np.asarray(labels)
    if labels.dtype == bool:
        if not allow_binary:
            raise CellsynthInputError("labels are a boolean mask, expected instance labels", where)
        labels = labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        raise CellsynthInputError(
            f"labels are floating point ({labels.dtype}); label images must be integer instance "
            "maps (0 = background, 1..N = cells)",
            where,
        )
    if labels.dtype.kind not in "iu":
        raise CellsynthInputError(f"labels have unsupported dtype {labels.dtype}", where)
    if labels.ndim == 3 and labels.shape[-1] in (3, 4) and labels.shape[0] > 4 * labels.shape[-1]:
        raise CellsynthInputError("labels look like an RGB image, expected one channel", where)
    if labels.size == 0:
        raise CellsynthInputError("labels are empty (zero-size array)", where)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise CellsynthInputError(f"labels contain negative values (min {lo})", where)
    if hi > np.iinfo(MAX_LABEL_DTYPE).max:
        raise CellsynthInputError(f"labels exceed the uint32 range (max {hi})", where)
    if require_cells and hi == 0:
        raise CellsynthInputError("label image is empty: it contains no cells (all zeros)", where)
    if allow_binary and hi > 0 and _is_binary(labels, hi):
        from skimage.measure import label as cc_label

        split = cc_label(labels > 0, connectivity=1)
        if split.max() > 1:
            log.warning(
                "%s: binary mask (one foreground value) split into %s cells by connected "
                "components; touching cells stay merged",
                where,
                split.max(),
            )
            labels = split
    return labels.astype(
        np.uint16 if labels.max() <= np.iinfo(np.uint16).max else np.uint32, copy=False
    )


def _is_binary(labels: np.ndarray, hi: int) -> bool:
    """One foreground value only (0/1, 0/255 ...): a semantic mask rather than instances."""
    return int(labels[labels > 0].min()) == hi


def check_same_shape(
    image: np.ndarray, labels: np.ndarray, image_path: Any = None, labels_path: Any = None
) -> None:
    if image.shape != labels.shape:
        where = image_path if image_path is not None else "image"
        raise CellsynthInputError(
            f"image shape {image.shape} does not match labels shape {labels.shape}"
            + (f" of {labels_path}" if labels_path is not None else ""),
            where,
        )


def require_3d(shape: Sequence[int], path: Any, *, what: str = "this step") -> None:
    """Raise unless the array is a 3D (ZYX) stack with at least two slices."""
    if len(shape) != 3 or shape[0] < 2:
        raise CellsynthInputError(
            f"{what} needs a 3D stack (Z, Y, X) but the data has shape {tuple(shape)}", path
        )


def read_dataset_json(root: Path) -> dict[str, Any]:
    """``root/dataset.json`` checked at the boundary ({} when there is none)."""
    meta_path = root / "dataset.json"
    if not meta_path.exists():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CellsynthInputError(f"is not valid JSON ({exc})", meta_path) from exc
    return check_dataset_meta(meta, meta_path)


def _check_voxel_size(v: Any, where: str, path: Path) -> None:
    if v is None:
        return
    if (
        not isinstance(v, list)
        or not 2 <= len(v) <= 3
        or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 and np.isfinite(x)
            for x in v
        )
    ):
        raise CellsynthInputError(
            f"{where} must be null or a list of 2 or 3 positive numbers ([z,] y, x), got {v!r}",
            path,
        )


def check_dataset_meta(meta: Any, path: Path) -> dict[str, Any]:
    """Check the keys of a dataset.json that cellsynth reads: one error naming file and key."""
    if not isinstance(meta, dict):
        raise CellsynthInputError(
            f"must hold a JSON object (with voxel_size, origin, samples), got a "
            f"{type(meta).__name__}",
            path,
        )
    _check_voxel_size(meta.get("voxel_size"), "'voxel_size'", path)
    origin = meta.get("origin")
    if origin is not None and not isinstance(origin, str):
        raise CellsynthInputError(f"'origin' must be a string, got {origin!r}", path)
    samples = meta.get("samples", {})
    if not isinstance(samples, dict):
        raise CellsynthInputError(
            f"'samples' must be an object mapping sample names to records, got "
            f"{type(samples).__name__}",
            path,
        )
    for name, rec in samples.items():
        if not isinstance(rec, dict):
            raise CellsynthInputError(f"'samples.{name}' must be an object, got {rec!r}", path)
        _check_voxel_size(rec.get("voxel_size"), f"'samples.{name}.voxel_size'", path)
    return meta
