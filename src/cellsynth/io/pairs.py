"""Image/label pairs loaded on first access (:class:`Pair`), the :class:`Dataset` that holds them,
and what is counted or cut from them (cells, annotated 2D slices).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError
from cellsynth.io.names import frame_key
from cellsynth.io.tiff import (
    ImageData,
    as_grayscale,
    read_array,
    read_display_image,
    squeeze_unknown,
)
from cellsynth.io.validate import check_same_shape, require_3d, validate_labels


@dataclass
class Pair:
    """One image and its instance labels (either may be absent), loaded on first access.

    For 3D frames annotated on single slices (CTC ``man_seg_TTT_ZZZ.tif``), ``slice_paths`` maps
    z to the 2D label file; ``labels`` is then a volume with only those slices filled and
    ``annotated_slices`` lists them, so metrics and the atlas use only annotated slices.
    """

    name: str
    image_path: Path | None = None
    labels_path: Path | None = None
    slice_paths: dict[int, Path] = field(default_factory=dict)
    voxel_size: tuple[float, ...] | None = None
    key: int | str | None = None
    depth: int | None = None  # number of slices, for slice-wise labels without an image
    _image: np.ndarray | None = field(default=None, repr=False)
    _labels: np.ndarray | None = field(default=None, repr=False)
    _axes: str | None = field(default=None, repr=False)

    @classmethod
    def from_arrays(
        cls,
        name: str,
        image: np.ndarray | None,
        labels: np.ndarray | None,
        voxel_size: tuple[float, ...] | None = None,
    ) -> Pair:
        pair = cls(name=name, voxel_size=voxel_size, key=frame_key(name))
        if image is not None:
            pair._image = np.asarray(image)
        if labels is not None:
            pair._labels = validate_labels(labels, name)
        if image is not None and labels is not None:
            check_same_shape(pair._image, pair._labels, name)
        return pair

    @property
    def has_image(self) -> bool:
        return self._image is not None or self.image_path is not None

    @property
    def has_labels(self) -> bool:
        return self._labels is not None or self.labels_path is not None or bool(self.slice_paths)

    @property
    def annotated_slices(self) -> tuple[int, ...] | None:
        return tuple(sorted(self.slice_paths)) if self.slice_paths else None

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            if self.image_path is None:
                raise CellsynthInputError(f"{self.name} has no image")
            img = squeeze_unknown(as_grayscale(read_array(self.image_path)))
            self._image, self._axes = img.data, img.axes
            if self.voxel_size is None and img.voxel_size is not None:
                self.voxel_size = img.voxel_size
        return self._image

    @property
    def axes(self) -> str:
        if self._axes is None:
            if self.has_image:
                _ = self.image
            else:
                self._axes = "ZYX"[-self.labels.ndim :] if self.labels.ndim <= 3 else "TZYX"
        return self._axes or "ZYX"[-self.image.ndim :]

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            if self.slice_paths:
                self._labels = self._assemble_slices()
            elif self.labels_path is not None:
                img = squeeze_unknown(read_array(self.labels_path))
                if "C" in img.axes:
                    raise CellsynthInputError(
                        "labels look like an RGB image, expected one channel", self.labels_path
                    )
                self._labels = validate_labels(img.data, self.labels_path)
                if self.voxel_size is None and img.voxel_size is not None:
                    self.voxel_size = img.voxel_size
            else:
                raise CellsynthInputError(f"{self.name} has no labels")
            if self.has_image:
                check_same_shape(
                    self._spatial_image(),
                    self._labels,
                    self.image_path,
                    self.labels_path or next(iter(self.slice_paths.values()), None),
                )
        return self._labels

    def _spatial_image(self) -> np.ndarray:
        """The image without its colour axis (for shape checks; RGB is allowed here)."""
        if self._image is not None:
            return self._image
        img = read_display_image(self.image_path)  # type: ignore[arg-type]
        if "C" in img.axes:
            return np.take(img.data, 0, axis=img.axes.index("C"))
        self._image, self._axes = img.data, img.axes
        if self.voxel_size is None and img.voxel_size is not None:
            self.voxel_size = img.voxel_size
        return self._image

    def _assemble_slices(self) -> np.ndarray:
        if self.has_image:
            shape = self._spatial_image().shape
            require_3d(shape, self.image_path, what="slice-wise annotations (man_seg_TTT_ZZZ)")
        else:
            shape = None
        volume = None
        for z, p in sorted(self.slice_paths.items()):
            sl = validate_labels(squeeze_unknown(read_array(p)).data, p)
            if sl.ndim != 2:
                raise CellsynthInputError(f"slice annotation must be 2D, got {sl.shape}", p)
            if volume is None:
                depth = shape[0] if shape is not None else (self.depth or max(self.slice_paths) + 1)
                volume = np.zeros((depth, *sl.shape), dtype=np.uint32)
            if z >= volume.shape[0]:
                raise CellsynthInputError(
                    f"slice {z} is outside the stack of {volume.shape[0]} slices", p
                )
            if sl.shape != volume.shape[1:]:
                raise CellsynthInputError(
                    f"slice shape {sl.shape} does not match the stack {volume.shape[1:]}", p
                )
            volume[z] = sl
        assert volume is not None
        return volume.astype(np.uint16) if volume.max() <= 65535 else volume

    def describe(self) -> dict[str, Any]:
        """A summary for ``cellsynth info``: shapes, dtypes, cell counts, voxel size."""
        out: dict[str, Any] = {"name": self.name}
        if self._image is not None:
            img = ImageData(self._image, self.axes, self.voxel_size, self.image_path)
        elif self.image_path is not None:
            img = read_display_image(self.image_path)
            if self.voxel_size is None and img.voxel_size is not None:
                self.voxel_size = img.voxel_size
        else:
            img = None
        if img is not None:
            out.update(
                image=str(self.image_path) if self.image_path else None,
                shape=list(img.data.shape),
                axes=img.axes,
                dtype=str(img.data.dtype),
                intensity=[_num(img.data.min()), _num(img.data.max())],
            )
        if self.has_labels:
            lab = self.labels
            out.update(
                labels=str(self.labels_path or "") or None,
                labels_shape=list(lab.shape),
                labels_dtype=str(lab.dtype),
                cells=count_cells(lab, self.annotated_slices),
            )
            if self.annotated_slices:
                out["annotated_slices"] = list(self.annotated_slices)
        out["voxel_size"] = list(self.voxel_size) if self.voxel_size else None
        return out


def _num(v: Any) -> float | int:
    return v.item() if hasattr(v, "item") else v


def count_cells(labels: np.ndarray, annotated_slices: Sequence[int] | None = None) -> int:
    """Number of distinct cells (on annotated slices, objects are counted per slice)."""
    if annotated_slices:
        return int(
            sum(len(np.unique(labels[z])) - (labels[z] == 0).any() for z in annotated_slices)
        )
    ids = np.unique(labels)
    return int(len(ids) - (ids[0] == 0 if len(ids) else 0))


@dataclass
class Dataset:
    """A list of :class:`Pair` read from one path, with how it was recognised."""

    root: Path
    kind: str  # "dataset", "ctc", "file", "folder", "arrays"
    pairs: list[Pair]
    meta: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def labelled(self) -> list[Pair]:
        return [p for p in self.pairs if p.has_labels]


def labelled_slices(pair: Pair) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """2D (name, image, labels) pieces of a pair: the image itself, or the annotated slices of a
    3D stack (every slice with labels when the annotation is dense)."""
    img, lab = pair.image, pair.labels
    if lab.ndim == 2:
        return [(pair.name, img, lab)]
    zs = pair.annotated_slices or [z for z in range(lab.shape[0]) if lab[z].any()]
    return [(f"{pair.name}_z{z:03d}", img[z], lab[z]) for z in zs]
