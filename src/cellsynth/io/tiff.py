"""One image file: reading TIFF and PNG into :class:`ImageData` (axes, voxel size in µm from
OME-XML, ImageJ metadata or the resolution tags read with their ResolutionUnit), reducing grey
RGB to one channel, and writing a TIFF that Fiji, Cellpose and cellsynth read back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError
from cellsynth.io.atomic import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
TIFF_SUFFIXES = (".tif", ".tiff")

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


def squeeze_unknown(img: ImageData) -> ImageData:
    """Drop the singleton axes of unknown meaning (``_`` in :attr:`ImageData.axes`)."""
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
    img = squeeze_unknown(read_array(path))
    try:
        return as_grayscale(img)
    except CellsynthInputError:
        return img


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
