"""napari writers: Labels layers as instance-label TIFFs, Image layers as TIFFs with voxel size.

napari asks before replacing a file the user picked; the write itself is atomic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellsynth.io import validate_labels, write_tiff


def _voxel_size(meta: dict[str, Any], ndim: int) -> list[float] | None:
    scale = meta.get("scale")
    if scale is None:
        return None
    spatial = min(ndim, 3)
    return [float(s) for s in list(scale)[-spatial:]]


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    labels = validate_labels(np.asarray(data), path, allow_binary=False)
    write_tiff(path, labels, voxel_size=_voxel_size(meta, labels.ndim), overwrite=True)
    return [path]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    arr = np.asarray(data)
    if meta.get("rgb"):
        import tifffile

        from cellsynth.io import atomic_path

        with atomic_path(path, overwrite=True) as tmp:
            tifffile.imwrite(tmp, arr, photometric="rgb", compression="zlib")
        return [path]
    write_tiff(path, arr, voxel_size=_voxel_size(meta, arr.ndim), overwrite=True)
    return [path]
