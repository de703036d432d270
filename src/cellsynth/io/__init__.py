"""Read and write microscopy images, instance label images, dataset folders and CTC folders.

Three layouts are understood, all read lazily (arrays load on first access):

* **Dataset folder**: ``images/NAME.tif`` + ``labels/NAME.tif`` (``masks/`` is accepted too),
  with an optional ``dataset.json`` (voxel size, origin, per-sample records). Images and labels
  are paired by name, then by the frame number in the name (``t01.tif`` <-> ``man_seg01.tif``).
* **Cell Tracking Challenge folder**: ``01/t000.tif``, ``01_GT/SEG/man_seg000.tif``,
  ``01_GT/SEG/man_seg_000_012.tif`` (slice 12 of 3D frame 0 annotated on its own),
  ``01_ST/SEG/``, ``01_RES/mask000.tif``. The folder given may be the challenge folder (holding
  ``01``, ``02`` ...), one sequence folder, or a ``SEG``/``RES`` folder of labels alone.
* **Single files**: a TIFF (2D, 3D ZYX, time series) or PNG. An image file inside ``images/``
  picks up its labels from the sibling ``labels/`` or ``masks/`` folder.

Label images are integer instance maps (0 = background) of up to uint32. Every check of a label
image lives in :func:`validate_labels`; every problem raises :class:`CellsynthInputError` naming
the file. Writers never overwrite an existing file and appear atomically (temporary file, then a
hard link that fails if the name was taken meanwhile).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
TIFF_SUFFIXES = (".tif", ".tiff")
LABEL_DIR_NAMES = ("labels", "masks", "SEG", "seg", "gt", "GT", "TRA")
_LABEL_STEM = re.compile(
    r"^(man_seg|man_track|mask|masks|label|labels|seg)[_-]?\d*|"
    r"[_-](mask|masks|label|labels|seg|gt)$",
    re.IGNORECASE,
)
_CTC_SPARSE = re.compile(r"^man_seg_?(\d+)_(\d+)$")
_CTC_DENSE = re.compile(r"^(?:man_seg|man_track|mask)_?(\d+)$")
_TRAILING_INT = re.compile(r"(\d+)(?!.*\d)")
_CTC_SEQ = re.compile(r"^\d{2,}$")
MAX_LABEL_DTYPE = np.uint32


# --------------------------------------------------------------------------- reading arrays


@dataclass
class ImageData:
    """One array read from a file, with its axes and physical voxel size.

    ``axes`` uses the letters T (time), Z, Y, X and C (channels, last); ``voxel_size`` gives one
    value per spatial axis present (``(z, y, x)`` or ``(y, x)``) in micrometres, or ``None``
    when the file carries none.
    """

    data: np.ndarray
    axes: str
    voxel_size: tuple[float, ...] | None = None
    path: Path | None = None

    @property
    def spatial_axes(self) -> str:
        return "".join(a for a in self.axes if a in "ZYX")


def read_array(path: str | Path) -> ImageData:
    """Read a TIFF or PNG file into an :class:`ImageData`, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise CellsynthInputError("file not found", path)
    if path.is_dir():
        raise CellsynthInputError("is a folder, expected an image file", path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path)
    if suffix in (".png", ".jpg", ".jpeg"):
        return _read_png(path)
    raise CellsynthInputError(
        f"unsupported file type {suffix!r} (cellsynth reads .tif, .tiff and .png)", path
    )


def _read_png(path: Path) -> ImageData:
    import imageio.v3 as iio

    try:
        data = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types for broken files
        raise CellsynthInputError(f"cannot be read as an image ({exc})", path) from exc
    axes = "YXC" if data.ndim == 3 else "YX"
    return ImageData(data=data, axes=axes, voxel_size=None, path=path)


def _read_tiff(path: Path) -> ImageData:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise CellsynthInputError(
                    "TIFF file holds no image, it may be corrupt or truncated", path
                )
            series = tif.series[0]
            data = series.asarray()
            axes = _normalise_axes(series.axes, data.shape)
            voxel = _tiff_voxel_size(tif, axes)
    except CellsynthInputError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise CellsynthInputError(
            f"cannot be read as a TIFF file, it may be corrupt or truncated ({exc})", path
        ) from exc
    if data.ndim != len(axes):
        raise CellsynthInputError(f"unexpected TIFF layout {series.axes} {data.shape}", path)
    if "?" in axes or any(axes.count(a) > 1 for a in "TZYXC"):
        raise CellsynthInputError(
            f"has {data.ndim} dimensions {data.shape} (TIFF axes {series.axes!r}) that cellsynth "
            "cannot tell apart; it reads 2D images, 3D stacks (ZYX), time series (T[Z]YX) and "
            "channels (C) — save one stack or time series per file",
            path,
        )
    return ImageData(data=data, axes=axes, voxel_size=voxel, path=path)


def _normalise_axes(axes: str, shape: tuple[int, ...]) -> str:
    """Map tifffile's axes (TZCYXS, Q, I, ...) onto T, Z, Y, X, C."""
    axes = axes.upper()
    unnamed = [i for i, a in enumerate(axes) if a not in "YXSCTZ" and shape[i] > 1]
    if len(unnamed) > 1:  # several unnamed stack axes: which is Z, which is T? ask, never guess
        return "".join("?" if i in unnamed else a for i, a in enumerate(axes))
    out = []
    for i, a in enumerate(axes):
        if a in "YX":
            out.append(a)
        elif a in "SC":
            out.append("C")
        elif a == "T":
            out.append("T")
        elif a == "Z":
            out.append("Z")
        elif shape[i] == 1:
            out.append("_")  # singleton of unknown meaning, dropped below
        else:  # Q, I, P, ... : an unnamed stack axis; DESIGN.md says 3D stacks are ZYX
            out.append("Z" if "Z" not in axes and "Z" not in out else "T")
    return "".join(out)


def _squeeze_unknown(img: ImageData) -> ImageData:
    if "_" not in img.axes:
        return img
    keep = [i for i, a in enumerate(img.axes) if a != "_"]
    drop = tuple(i for i, a in enumerate(img.axes) if a == "_")
    return ImageData(
        np.squeeze(img.data, axis=drop),
        "".join(img.axes[i] for i in keep),
        img.voxel_size,
        img.path,
    )


#: micrometres per unit, for the length units of OME-XML, ImageJ descriptions and TIFF tags
_UM_PER_UNIT = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6, "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "in": 25400.0, "inch": 25400.0,
}  # fmt: skip
#: what a TIFF ResolutionUnit tag (1 none, 2 inch, 3 cm, 4 mm, 5 µm) means in micrometres
_RESUNIT_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}
#: inch-based resolutions up to this many dots per inch are screen or print settings (72, 96,
#: 300 dpi ...), not a microscope's calibration (1200 dpi is a 21 µm pixel)
_MAX_PRINT_DPI = 1200.0


def _um_per(unit: Any, path: Any) -> float | None:
    """Micrometres per ``unit`` (None: no physical unit, e.g. ImageJ's 'pixel')."""
    name = str(unit).strip().lower()
    if name in ("", "pixel", "pixels", "px"):
        return None
    if name not in _UM_PER_UNIT:
        log.warning("%s: unknown length unit %r; voxel size ignored", path, unit)
        return None
    return _UM_PER_UNIT[name]


def _tiff_voxel_size(tif: Any, axes: str) -> tuple[float, ...] | None:
    """Voxel size in µm from OME-XML (with its units), else the X/YResolution tags read with
    their ResolutionUnit (or the ImageJ description's unit) and ImageJ's z spacing.

    A resolution without a unit (ResolutionUnit none, no ImageJ unit) is read as pixels per µm,
    the ImageJ convention; an inch-based one of a screen or print dpi (72, 300 ...) is no voxel
    size at all (with a warning).
    """
    spatial = "".join(a for a in axes if a in "ZYX")
    path = getattr(tif, "filename", "TIFF")
    sizes: dict[str, float] = {}
    if tif.is_ome and tif.ome_metadata:
        try:
            import tifffile

            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
            for a in "ZYX":
                v = pixels.get(f"PhysicalSize{a}")
                if v:
                    scale = _um_per(pixels.get(f"PhysicalSize{a}Unit", "µm"), path)
                    if scale is not None:
                        sizes[a] = float(v) * scale
        except (KeyError, TypeError, ValueError, IndexError):
            pass
    page = tif.pages[0]
    ij = tif.imagej_metadata or {}
    ij_scale = _um_per(ij["unit"], path) if "unit" in ij else 1.0
    if "X" not in sizes:
        tag = page.tags.get("ResolutionUnit")
        unit = int(tag.value) if tag is not None else 2  # TIFF's default unit is the inch
        scale = ij_scale if unit == 1 or "unit" in ij else _RESUNIT_UM.get(unit)
        for a, name in (("X", "XResolution"), ("Y", "YResolution")):
            res = page.tags.get(name)
            if res is None or scale is None:
                continue
            num, den = res.value
            if not (num and den) or num == den:  # 1/1 is "no resolution" in practice
                continue
            per_unit = float(num) / float(den)  # pixels per unit
            if unit == 2 and "unit" not in ij and per_unit <= _MAX_PRINT_DPI:
                log.warning(
                    "%s: resolution %g dpi is a screen or print setting, not a voxel size; "
                    "reading it as 'no voxel size'",
                    path,
                    per_unit,
                )
                sizes.pop("Y", None)
                break
            sizes[a] = scale / per_unit
    if "Z" not in sizes and ij.get("spacing") and ij_scale is not None:
        sizes["Z"] = float(ij["spacing"]) * ij_scale
    if not sizes:
        return None
    return tuple(sizes.get(a, 1.0) for a in spatial)


def read_display_image(path: str | Path) -> ImageData:
    """Read an image for viewing: one channel when the colour channels agree, else RGB(A)."""
    img = _squeeze_unknown(read_array(path))
    try:
        return as_grayscale(img)
    except CellsynthInputError:
        return img


# --------------------------------------------------------------------------- validation


def as_grayscale(img: ImageData, *, what: str = "image") -> ImageData:
    """Return the image with a single channel, or raise if it is true colour.

    RGB(A) files whose colour channels are equal (common for exported fluorescence) are reduced to
    their first channel; images whose channels differ raise: cellsynth works on one channel.
    """
    if "C" not in img.axes:
        return img
    c = img.axes.index("C")
    data = img.data
    n = data.shape[c]
    colour = np.take(data, range(min(n, 3)), axis=c)
    first = np.take(colour, [0], axis=c)
    if n == 1 or np.array_equal(np.broadcast_to(first, colour.shape), colour):
        return ImageData(
            np.take(data, 0, axis=c), img.axes.replace("C", ""), img.voxel_size, img.path
        )
    raise CellsynthInputError(
        f"{what} is RGB with {n} different colour channels where one grayscale channel is "
        "expected; export a single channel first",
        img.path,
    )


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


# --------------------------------------------------------------------------- pairs and datasets


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
            img = _squeeze_unknown(as_grayscale(read_array(self.image_path)))
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
                img = _squeeze_unknown(read_array(self.labels_path))
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
            sl = validate_labels(_squeeze_unknown(read_array(p)).data, p)
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


def frame_key(name: str) -> int | str:
    """The frame a file name refers to: its last integer (``t013`` -> 13), else the name."""
    m = _CTC_SPARSE.match(name)
    if m:
        return int(m.group(1))
    m = _TRAILING_INT.search(name)
    return int(m.group(1)) if m else name


def is_label_name(path: str | Path) -> bool:
    """True when a file's name or folder says it holds labels (masks/, SEG/, man_seg*, *_mask)."""
    path = Path(path)
    if path.parent.name in LABEL_DIR_NAMES:
        return True
    stem = path.name.split(".")[0]
    return bool(_LABEL_STEM.search(stem))


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _stem(p: Path) -> str:
    return p.name.split(".")[0]


def pair_files(
    images: Sequence[Path], labels: Sequence[Path]
) -> list[tuple[Path | None, Path | None]]:
    """Pair image and label files: same stem first, then the same frame number.

    Files left without a partner are returned alone (``(image, None)`` or ``(None, labels)``).
    """
    by_stem = {_stem(p): p for p in labels}
    out: list[tuple[Path | None, Path | None]] = []
    left_img: list[Path] = []
    used: set[Path] = set()
    for img in images:
        lab = by_stem.get(_stem(img))
        if lab is not None:
            out.append((img, lab))
            used.add(lab)
        else:
            left_img.append(img)
    left_lab = [p for p in labels if p not in used]
    if left_img and left_lab:
        key_lab: dict[Any, list[Path]] = {}
        for p in left_lab:
            key_lab.setdefault(_token_key(_stem(p)), []).append(p)
        still: list[Path] = []
        for img in left_img:
            cands = key_lab.get(_token_key(_stem(img)), [])
            if len(cands) == 1:
                out.append((img, cands[0]))
                used.add(cands[0])
            else:
                still.append(img)
        left_img = still
        left_lab = [p for p in labels if p not in used]
    out.extend((img, None) for img in left_img)
    out.extend((None, lab) for lab in left_lab)
    return out


def _token_key(stem: str) -> Any:
    m = _CTC_SPARSE.match(stem)
    if m:
        return (int(m.group(1)), int(m.group(2)))
    s = re.sub(r"(man_seg|man_track|masks?|labels?|images?|img|raw|seg|gt)", "", stem.lower())
    s = s.strip("_-. ")
    m = re.fullmatch(r"t?(\d+)", s)
    if m:
        return int(m.group(1))
    m = _TRAILING_INT.search(s)
    return int(m.group(1)) if m and re.fullmatch(r"[a-z_-]*\d+", s) else s


def _read_dataset_json(root: Path) -> dict[str, Any]:
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


def read_dataset(
    path: str | Path,
    *,
    require_labels: bool = False,
    require_images: bool = False,
    labels_only: bool = False,
) -> Dataset:
    """Recognise and read ``path`` (file, dataset folder, CTC folder, folder of files).

    Arrays are loaded lazily; ``require_labels``/``require_images`` raise at once when some
    pair lacks its labels/image, naming the files. With ``labels_only`` (predictions to score)
    a single file or a plain folder of files is taken as label images whatever their names.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CellsynthInputError("no such file or folder", path)
    if labels_only and (
        path.is_file()
        or not ((path / "images").is_dir() or _ctc_sequences(path) or _ctc_sequence_self(path))
    ):
        ds = _read_labels_only(path)
    elif path.is_file():
        ds = _read_single_file(path)
    elif (path / "images").is_dir():  # a dataset folder, with or without its labels/
        ds = _read_dataset_folder(path)
    elif _ctc_sequences(path) or _ctc_sequence_self(path):
        ds = _read_ctc(path)
    else:
        ds = _read_flat_folder(path)
    if not ds.pairs:
        raise CellsynthInputError(
            "holds no images or label images cellsynth can read (.tif, .tiff, .png)", path
        )
    if require_labels:
        missing = [p for p in ds.pairs if not p.has_labels]
        if missing:
            raise CellsynthInputError(
                f"{len(missing)} image(s) have no labels, e.g. {missing[0].image_path}; expected "
                "labels/ (or masks/) beside images/ with the same names",
                path,
            )
    if require_images:
        missing = [p for p in ds.pairs if not p.has_image]
        if missing:
            raise CellsynthInputError(
                f"{len(missing)} label image(s) have no image, e.g. {missing[0].labels_path}",
                path,
            )
    return ds


def _find_label_dir(root: Path) -> Path | None:
    for name in ("labels", "masks"):
        if (root / name).is_dir():
            return root / name
    return None


def _read_dataset_folder(root: Path) -> Dataset:
    meta = _read_dataset_json(root)
    label_dir = _find_label_dir(root)
    voxel = tuple(meta["voxel_size"]) if meta.get("voxel_size") else None
    pairs = []
    labels = _list_images(label_dir) if label_dir is not None else []
    for img, lab in pair_files(_list_images(root / "images"), labels):
        name = _stem(img if img is not None else lab)  # type: ignore[arg-type]
        rec = meta.get("samples", {}).get(name, {})
        vs = tuple(rec["voxel_size"]) if rec.get("voxel_size") else voxel
        pairs.append(
            Pair(name=name, image_path=img, labels_path=lab, voxel_size=vs, key=frame_key(name))
        )
    return Dataset(root=root, kind="dataset", pairs=pairs, meta=meta)


def _ctc_sequences(root: Path) -> list[str]:
    return sorted(
        d.name for d in root.iterdir() if d.is_dir() and _CTC_SEQ.match(d.name) and _list_images(d)
    )


def _ctc_sequence_self(root: Path) -> bool:
    return bool(_CTC_SEQ.match(root.name)) and (
        (root.parent / f"{root.name}_GT").is_dir() or (root.parent / f"{root.name}_ST").is_dir()
    )


def _ctc_label_files(
    seq_root: Path, seq: str
) -> tuple[dict[int, Path], dict[int, dict[int, Path]], str]:
    """Dense and slice-wise label files of one sequence, GT preferred over ST."""
    for source in ("GT", "ST"):
        seg = seq_root / f"{seq}_{source}" / "SEG"
        if seg.is_dir():
            dense: dict[int, Path] = {}
            sparse: dict[int, dict[int, Path]] = {}
            for p in _list_images(seg):
                m = _CTC_SPARSE.match(_stem(p))
                if m:
                    sparse.setdefault(int(m.group(1)), {})[int(m.group(2))] = p
                    continue
                m = _CTC_DENSE.match(_stem(p))
                if m:
                    dense[int(m.group(1))] = p
            return dense, sparse, source
    return {}, {}, ""


def _read_ctc(path: Path) -> Dataset:
    if _ctc_sequence_self(path):
        parent, seqs = path.parent, [path.name]
    else:
        parent, seqs = path, _ctc_sequences(path)
    pairs: list[Pair] = []
    sources = {}
    for seq in seqs:
        dense, sparse, source = _ctc_label_files(parent, seq)
        sources[seq] = source
        for img in _list_images(parent / seq):
            t = frame_key(_stem(img))
            name = f"{seq}_{_stem(img)}" if len(seqs) > 1 else _stem(img)
            pairs.append(
                Pair(
                    name=name,
                    image_path=img,
                    labels_path=dense.get(t) if isinstance(t, int) else None,
                    slice_paths=dict(sparse.get(t, {}))
                    if isinstance(t, int) and t not in dense
                    else {},
                    key=t if len(seqs) == 1 else f"{seq}_{t}",
                )
            )
    return Dataset(root=path, kind="ctc", pairs=pairs, meta={"label_source": sources})


def _read_flat_folder(root: Path) -> Dataset:
    files = _list_images(root)
    labels = [p for p in files if is_label_name(p)]
    images = [p for p in files if p not in labels]
    # CTC label folders (SEG/, RES/): several slice files may make one 3D frame
    sparse: dict[int, dict[int, Path]] = {}
    dense_labels = []
    for p in labels:
        m = _CTC_SPARSE.match(_stem(p))
        if m:
            sparse.setdefault(int(m.group(1)), {})[int(m.group(2))] = p
        else:
            dense_labels.append(p)
    pairs = []
    for img, lab in pair_files(images, dense_labels):
        name = _stem(img if img is not None else lab)  # type: ignore[arg-type]
        pairs.append(Pair(name=name, image_path=img, labels_path=lab, key=frame_key(name)))
    for t, slices in sorted(sparse.items()):
        pairs.append(Pair(name=f"man_seg{t:03d}", slice_paths=slices, key=t))
    return Dataset(root=root, kind="folder", pairs=pairs, meta=_read_dataset_json(root))


def _read_labels_only(path: Path) -> Dataset:
    files = [path] if path.is_file() else _list_images(path)
    files = [p for p in files if is_label_name(p)] or files  # a folder of images + masks
    pairs = []
    sparse: dict[int, dict[int, Path]] = {}
    for p in files:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise CellsynthInputError(
                f"unsupported file type {p.suffix!r} (cellsynth reads .tif, .tiff and .png)", p
            )
        m = _CTC_SPARSE.match(_stem(p))
        if m:
            sparse.setdefault(int(m.group(1)), {})[int(m.group(2))] = p
        else:
            pairs.append(Pair(name=_stem(p), labels_path=p, key=frame_key(_stem(p))))
    for t, slices in sorted(sparse.items()):
        pairs.append(Pair(name=f"man_seg{t:03d}", slice_paths=slices, key=t))
    return Dataset(root=path, kind="file" if path.is_file() else "folder", pairs=pairs)


def _read_single_file(path: Path) -> Dataset:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise CellsynthInputError(
            f"unsupported file type {path.suffix!r} (cellsynth reads .tif, .tiff and .png)", path
        )
    if is_label_name(path):
        m = _CTC_SPARSE.match(_stem(path))
        if m:
            pair = Pair(name=_stem(path), slice_paths={int(m.group(2)): path}, key=int(m.group(1)))
        else:
            pair = Pair(name=_stem(path), labels_path=path, key=frame_key(_stem(path)))
        return Dataset(root=path, kind="file", pairs=[pair])
    labels = None
    if path.parent.name == "images":
        label_dir = _find_label_dir(path.parent.parent)
        if label_dir is not None:
            for img, lab in pair_files(_list_images(path.parent), _list_images(label_dir)):
                if img == path:
                    labels = lab
                    break
    pair = Pair(name=_stem(path), image_path=path, labels_path=labels, key=frame_key(_stem(path)))
    return Dataset(root=path, kind="file", pairs=[pair])


def labelled_slices(pair: Pair) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """2D (name, image, labels) pieces of a pair: the image itself, or the annotated slices of a
    3D stack (every slice with labels when the annotation is dense)."""
    img, lab = pair.image, pair.labels
    if lab.ndim == 2:
        return [(pair.name, img, lab)]
    zs = pair.annotated_slices or [z for z in range(lab.shape[0]) if lab[z].any()]
    return [(f"{pair.name}_z{z:03d}", img[z], lab[z]) for z in zs]


# --------------------------------------------------------------------------- writing


def write_tiff(
    path: str | Path,
    data: np.ndarray,
    *,
    voxel_size: Sequence[float] | None = None,
    axes: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one array as a TIFF that Fiji, Cellpose and cellsynth read back with its voxel size.

    uint8/uint16/float32 go to ImageJ hyperstacks, other dtypes (uint32 labels) to OME-TIFF.
    The file appears atomically; with ``overwrite=False`` an existing file is never replaced.
    """
    import tifffile

    path = Path(path)
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype == np.int64 or data.dtype == np.uint64:
        if data.min() < 0 or data.max() > np.iinfo(np.uint32).max:
            raise CellsynthInputError("values do not fit in uint32", path)
        data = data.astype(np.uint32)
    axes = axes or ("ZYX"[-data.ndim :] if data.ndim <= 3 else "TZYX"[-data.ndim :])
    spatial = "".join(a for a in axes if a in "ZYX")
    vs = tuple(float(v) for v in voxel_size) if voxel_size is not None else None
    if vs is not None and len(vs) != len(spatial):
        vs = (
            vs[-len(spatial) :]
            if len(vs) > len(spatial)
            else (1.0,) * (len(spatial) - len(vs)) + vs
        )
    kwargs: dict[str, Any] = {"compression": "zlib"}
    if vs is not None:
        kwargs["resolution"] = (1.0 / vs[-1], 1.0 / vs[-2])
    if data.dtype in (np.uint8, np.uint16, np.float32) and set(axes) <= set("TZYX"):
        meta: dict[str, Any] = {"axes": axes}
        if vs is not None:
            meta["unit"] = "um"
            if "Z" in spatial:
                meta["spacing"] = vs[0]
        kwargs.update(imagej=True, metadata=meta)
    else:
        meta = {"axes": axes}
        if vs is not None:
            for a, v in zip(spatial, vs, strict=True):
                meta[f"PhysicalSize{a}"] = v
                meta[f"PhysicalSize{a}Unit"] = "µm"
        kwargs.update(ome=True, metadata=meta)
        if "resolution" in kwargs:
            kwargs["resolutionunit"] = "CENTIMETER"
            kwargs["resolution"] = (1e4 / vs[-1], 1e4 / vs[-2])  # type: ignore[index]
    with atomic_path(path, overwrite=overwrite) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it becomes ``path`` atomically.

    Without ``overwrite`` the final step is a hard link, which fails if the name exists, so an
    existing file is never replaced even by a concurrent writer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise CellsynthInputError("already exists; cellsynth never overwrites files", path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise CellsynthInputError(
                    "already exists; cellsynth never overwrites files", path
                ) from exc
            except OSError:  # file systems without hard links
                if path.exists():
                    raise CellsynthInputError(
                        "already exists; cellsynth never overwrites files", path
                    ) from None
                os.rename(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any, *, overwrite: bool = True) -> Path:
    """Write a JSON file atomically; ``overwrite`` (default) replaces a JSON file of cellsynth's
    own, ``overwrite=False`` refuses any existing file (a user-named report)."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


class DatasetWriter:
    """Add image/label pairs to a dataset folder without ever overwriting a file.

    ``dataset.json`` records the voxel size, the origin (``real``/``synthetic``) and one record
    per sample (generator bundle, seed, parameters, curation status ...).

    Several writers (threads or processes) may add to one folder: every write holds the folder's
    lock (:func:`cellsynth.locks.folder_lock`) and merges its records into the ``dataset.json``
    on disk (read, merge, write), so no record is lost. A writer of synthetic pairs
    (``origin="synthetic..."``) refuses a folder of real data (:func:`check_synthetic_target`).
    Nothing is created before the first pair: a run that fails early leaves no empty folders.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        voxel_size: Sequence[float] | None = None,
        origin: str = "real",
        meta: dict[str, Any] | None = None,
    ) -> None:
        from cellsynth.outputs import check_synthetic_target, is_synthetic_origin

        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise CellsynthInputError("exists and is not a folder", self.root)
        if is_synthetic_origin(origin):
            check_synthetic_target(self.root)
        self._defaults: dict[str, Any] = {
            "format": "cellsynth-dataset/1",
            "origin": origin,
            "voxel_size": list(voxel_size) if voxel_size is not None else None,
        }
        self._extra = dict(meta or {})
        self._base: dict[str, Any] = {}  # dataset.json as last read: what differs is ours
        self._depth = 0
        self.meta: dict[str, Any] = {}
        self.meta = self._merged()

    def _merged(self) -> dict[str, Any]:
        """dataset.json as on disk, with this writer's changes since it last read it on top
        (new or edited sample records; new or edited top-level keys, objects merged by key)."""
        disk = _read_dataset_json(self.root) if self.root.is_dir() else {}
        meta = dict(disk) if disk else dict(self._defaults)
        meta.update(self._extra)
        meta["samples"] = dict(meta.get("samples") or {})
        base_samples = self._base.get("samples", {})
        for key, value in self.meta.items():
            if key == "samples" or value == self._base.get(key):
                continue
            if isinstance(value, dict) and isinstance(meta.get(key), dict):
                meta[key] = {**meta[key], **value}
            else:
                meta[key] = value
        for name, rec in self.meta.get("samples", {}).items():
            if rec != base_samples.get(name):
                meta["samples"][name] = rec
        self._base = copy.deepcopy(meta)
        return meta

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Hold the folder's lock, with :attr:`meta` fresh from disk; write it back at the end.

        Waits up to a minute for another writer of the same folder (a write takes seconds).
        """
        from cellsynth.locks import folder_lock

        if self._depth:
            self._depth += 1
            try:
                yield self.meta
            finally:
                self._depth -= 1
            return
        with folder_lock(self.root, "dataset folder", wait=60.0):
            self._depth = 1
            try:
                self.meta = self._merged()
                yield self.meta
                write_json(self.root / "dataset.json", self.meta)
                self._base = copy.deepcopy(self.meta)
            finally:
                self._depth = 0

    def reload(self) -> dict[str, Any]:
        """Re-read dataset.json (other writers' records appear), keeping this writer's changes."""
        self.meta = self._merged()
        return self.meta

    def exists(self, name: str) -> bool:
        return any((self.root / d / f"{name}.tif").exists() for d in ("images", "labels"))

    def free_name(self, prefix: str, start: int = 0) -> str:
        """The first ``{prefix}{i:04d}`` (i >= start) not used in this dataset (files or
        records)."""
        i = start
        samples = self.meta.get("samples", {})
        while self.exists(f"{prefix}{i:04d}") or f"{prefix}{i:04d}" in samples:
            i += 1
        return f"{prefix}{i:04d}"

    def add(
        self,
        name: str,
        image: np.ndarray | None,
        labels: np.ndarray | None,
        *,
        voxel_size: Sequence[float] | None = None,
        record: dict[str, Any] | None = None,
    ) -> tuple[Path | None, Path | None]:
        """Write one pair as ``images/NAME.tif`` and ``labels/NAME.tif`` and record it."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise CellsynthInputError(f"invalid sample name {name!r}", self.root)
        if image is not None and labels is not None:
            check_same_shape(np.asarray(image), np.asarray(labels), name)
        if labels is not None:
            labels = validate_labels(labels, name, allow_binary=False)
        with self.transaction() as meta:
            if self.exists(name) or name in meta["samples"]:
                raise CellsynthInputError(
                    f"sample {name!r} already exists; cellsynth never overwrites files", self.root
                )
            vs = voxel_size if voxel_size is not None else meta.get("voxel_size")
            img_path = lab_path = None
            try:
                if labels is not None:
                    lab_path = write_tiff(
                        self.root / "labels" / f"{name}.tif", labels, voxel_size=vs
                    )
                if image is not None:
                    img_path = write_tiff(
                        self.root / "images" / f"{name}.tif", image, voxel_size=vs
                    )
            except BaseException:
                for written in (lab_path, img_path):  # this run's own half-written pair
                    if written is not None:
                        written.unlink(missing_ok=True)
                raise
            rec = dict(record or {})
            if voxel_size is not None:
                rec["voxel_size"] = list(voxel_size)
            meta["samples"][name] = rec
        return img_path, lab_path

    def update_record(self, name: str, **fields: Any) -> None:
        with self.transaction() as meta:
            meta["samples"].setdefault(name, {}).update(fields)

    def save(self) -> None:
        """Write this writer's changes to :attr:`meta` into dataset.json (read-merge-write under
        the folder's lock: other writers' records are kept)."""
        with self.transaction():
            pass


def read_pairs(paths: Iterable[str | Path], **kwargs: Any) -> list[Pair]:
    """Read several paths and concatenate their pairs."""
    out: list[Pair] = []
    for p in paths:
        out.extend(read_dataset(p, **kwargs).pairs)
    return out
