"""Turn core datasets into napari layer-data tuples (no napari import needed for that)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

import numpy as np

from cellsynth.io import Dataset, Pair, read_display_image

LayerData = tuple[Any, dict[str, Any], str]


def _scale(voxel_size: tuple[float, ...] | None, ndim: int) -> list[float]:
    vs = list(voxel_size) if voxel_size else []
    spatial = min(ndim, 3)
    vs = vs[-spatial:] if len(vs) >= spatial else [1.0] * (spatial - len(vs)) + vs
    return [1.0] * (ndim - len(vs)) + [float(v) for v in vs]


def dataset_layers(ds: Dataset) -> list[LayerData]:
    """Image + Labels layers for a dataset: pairs of the same shape are stacked along a new axis."""
    groups: dict[tuple, list[tuple[Pair, Any]]] = defaultdict(list)
    for pair in ds.pairs:
        img = read_display_image(pair.image_path) if pair.image_path is not None else None
        shape = (
            img.data.shape[: img.data.ndim - (1 if "C" in img.axes else 0)]
            if img
            else pair.labels.shape
        )
        groups[
            (shape, img.data.dtype.str if img else None, "C" in img.axes if img else False)
        ].append((pair, img))
    layers: list[LayerData] = []
    root = ds.root.name if ds.kind != "file" else ds.root.stem
    for (shape, _dtype, rgb), items in groups.items():
        pairs = [p for p, _ in items]
        many = len(items) > 1
        base = (
            (f"{root} {'×'.join(map(str, shape))}" if len(groups) > 1 else root)
            if many
            else pairs[0].name
        )
        first = pairs[0]
        voxel = first.voxel_size
        if items[0][1] is not None and voxel is None:
            voxel = items[0][1].voxel_size
        axes = items[0][1].axes.replace("C", "") if items[0][1] is not None else first.axes
        n_extra = 1 if many else 0
        scale = _scale(voxel, len(shape) + n_extra)
        axis_labels = (
            (("frame",) if many else ())
            + tuple({"T": "t", "Z": "z", "Y": "y", "X": "x"}.get(a, a) for a in axes)
            if len(axes) == len(shape)
            else None
        )
        meta = {
            "cellsynth": {
                "source": str(ds.root),
                "kind": ds.kind,
                "names": [p.name for p in pairs],
                "image_paths": [str(p.image_path) if p.image_path else None for p in pairs],
                "labels_paths": [str(p.labels_path) if p.labels_path else None for p in pairs],
                "voxel_size": list(voxel) if voxel else None,
                "annotated_slices": [list(p.annotated_slices or []) for p in pairs],
                "stacked": many,
            }
        }
        if items[0][1] is not None:
            data = [img.data for _, img in items]
            arr = np.stack(data) if many else data[0]
            pair_id = uuid.uuid4().hex  # the Image and Labels layer name each other by it
            image_meta = {"cellsynth": {**meta["cellsynth"], "pair_id": pair_id, "role": "image"}}
            kw = {"name": base, "scale": scale, "metadata": image_meta, "rgb": rgb}
            if axis_labels:
                kw["axis_labels"] = axis_labels
            if not rgb:
                lo, hi = np.percentile(
                    arr[:: max(1, arr.shape[0] // 8)] if many else arr, (0.5, 99.8)
                )
                kw["contrast_limits"] = [float(lo), float(max(hi, lo + 1))]
            layers.append((arr, kw, "image"))
        if any(p.has_labels for p in pairs):
            labs = [p.labels if p.has_labels else np.zeros(shape, np.uint16) for p in pairs]
            dt = np.result_type(*[lab.dtype for lab in labs])
            lab = np.stack([lab.astype(dt, copy=False) for lab in labs]) if many else labs[0]
            if items[0][1] is not None:
                meta = {"cellsynth": {**meta["cellsynth"], "pair_id": pair_id, "role": "labels"}}
            kw = {
                "name": f"{base} labels" if items[0][1] is not None else base,
                "scale": scale,
                "metadata": meta,
                "opacity": 0.5,
            }
            if axis_labels:
                kw["axis_labels"] = axis_labels
            layers.append((lab, kw, "labels"))
    return layers
