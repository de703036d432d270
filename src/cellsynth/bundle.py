"""The generator bundle: every trained model of a data set in one folder.

::

    BUNDLE/
      bundle.json            versions, training data summary, intensity statistics, voxel size,
                             cell sizes and density, training settings and progress
      mask_model/            diffusers save_pretrained (config.json + safetensors)
      texture_model/         idem
      multiview_model/       optional: the multiview model refined by learn --3d
      training_state/        checkpoint-<step>/ folders for --resume (safetensors + JSON)

bundle.json is versioned (``format``); every format written so far is read (and upgraded in
memory), and its values are checked on load with one-line errors naming the key.

Weights are only ever read from safetensors; a bundle can be rebuilt from its folder alone.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth import __version__
from cellsynth.atlas import IntensityStats
from cellsynth.diffusion.core import (
    SAMPLERS,
    DiffusionConfig,
    make_sampler,
    make_train_scheduler,
)
from cellsynth.errors import CellsynthInputError
from cellsynth.io import write_json
from cellsynth.texture import FrameBrightness, brightness_conditioned

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "cellsynth-bundle/2"
#: every format this version reads; older ones are upgraded in memory by :func:`_upgrade`
READABLE_FORMATS = ("cellsynth-bundle/1", BUNDLE_FORMAT)
MODELS = ("mask_model", "texture_model")
MULTIVIEW = "multiview_model"  # optional part: a refined multiview model (learn --3d)


#: the largest optical blur (Gaussian sigma, px) a bundle or ``--blur`` may ask for
MAX_BLUR = 10.0


def builtin_bundle_path() -> Path:
    """The small bundle shipped with cellsynth (trained on the built-in CC0 nuclei)."""
    return Path(str(files("cellsynth") / "data" / "bundle_dsb2018"))


# --------------------------------------------------------------------------- typed statistics


@dataclass
class CellStats:
    """The training cells: crop size, per-cell scale, area and brightness, and density."""

    crop_size: int
    scales: list[float]
    density: float  # cells per pixel (2D) or per annotated-slice pixel
    median_area: float | None = None
    areas: list[float] | None = None  # bundles from before 0.2 lack them
    mean_intensities: list[float] | None = None
    density_3d: float | None = None  # cells per voxel (learn --3d)
    # the 5th percentile of the areas of training cells cut by the image border (px): the
    # smallest part of a cut cell a synthetic frame shows
    min_cut_area: float | None = None
    # how often a synthetic cell may overhang the canvas edge (place_cells' edge_cut; 2D bundles
    # from December 2026): the training frames' share of cut cells over a field of view's
    edge_cut: float | None = None
    # per training frame (or slice): background level and its cells' mean brightness, raw
    # units; what a brightness-conditioned texture model is told to paint (newer bundles)
    brightness_frames: list[dict[str, Any]] | None = None
    # the smoothing (model pixels) of the sampled masks' outlines fitted to the training cells'
    # solidity (masks.fit_smoothing; 2D bundles learnt since December 2026), else 1.25
    mask_smooth: float | None = None
    # how placement clusters the cells (place_cells' cluster_prob and band, in cell radii),
    # fitted to the training frames' nearest-neighbour distances (population.fit_clustering;
    # 2D bundles learnt since December 2026), else 0.3 and 0.5
    cluster_prob: float | None = None
    cluster_band: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: Path) -> CellStats:
        return cls(
            crop_size=_int(d, "cells.crop_size", where, lo=8, hi=4096),
            scales=_numbers(d, "cells.scales", where, positive=True),
            density=_float(d, "cells.density", where, lo=0.0, strict=True),
            median_area=_float(d, "cells.median_area", where, lo=0.0, optional=True),
            areas=_numbers(d, "cells.areas", where, positive=True, optional=True),
            mean_intensities=_numbers(d, "cells.mean_intensities", where, optional=True),
            density_3d=_float(d, "cells.density_3d", where, lo=0.0, optional=True, strict=True),
            min_cut_area=_float(d, "cells.min_cut_area", where, lo=0.0, optional=True),
            edge_cut=_float(d, "cells.edge_cut", where, lo=0.0, hi=1.0, optional=True),
            brightness_frames=_brightness_frames(d, where),
            mask_smooth=_float(d, "cells.mask_smooth", where, lo=0.0, hi=10.0, optional=True),
            cluster_prob=_float(d, "cells.cluster_prob", where, lo=0.0, hi=1.0, optional=True),
            cluster_band=_float(d, "cells.cluster_band", where, lo=0.0, hi=50.0, optional=True),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _brightness_frames(d: dict[str, Any], where: Path) -> list[dict[str, Any]] | None:
    frames = d.get("cells", {}).get("brightness_frames")
    if frames is None:
        return None
    ok = isinstance(frames, list) and all(
        isinstance(f, dict)
        and isinstance(f.get("background"), int | float)
        and isinstance(f.get("cells"), list)
        and all(isinstance(v, int | float) and np.isfinite(v) for v in f["cells"])
        for f in frames
    )
    if not ok:
        raise CellsynthInputError(
            "cells.brightness_frames must be a list of {background: number, cells: [numbers]}",
            where,
        )
    return frames


@dataclass
class Calibration3D:
    """What ``learn --3d`` fits on 3D data (optional part of a bundle)."""

    shape_prior: dict[str, Any]  # ShapePriorConfig fields + the measured z ratios
    texture3d: dict[str, Any] | None = None  # slice correlation rho and its calibration table
    settings_3d: dict[str, Any] | None = None
    seconds: float | None = None

    @property
    def rho(self) -> float | None:
        if not self.texture3d or self.texture3d.get("rho") is None:
            return None
        return float(self.texture3d["rho"])


@dataclass
class GeneratorBundle:
    """Models + statistics needed to synthesise data like the training set.

    ``meta`` is the content of bundle.json (upgraded to the current format); the typed views
    below (``cells``, ``intensity``, ``calibration_3d``) are parsed and checked from it.
    """

    path: Path | None
    meta: dict[str, Any]
    mask_cfg: DiffusionConfig
    texture_cfg: DiffusionConfig
    mask_unet: Any = None
    texture_unet: Any = None
    multiview: Any = None  # a MultiviewModel to save with the bundle (learn --3d), or None
    _exemplars: list[Any] | None = field(default=None, repr=False)

    @property
    def cells(self) -> CellStats:
        return CellStats.from_dict(self.meta, self.path or Path("bundle.json"))

    @property
    def intensity(self) -> IntensityStats:
        return IntensityStats.from_dict(self.meta["intensity"])

    @property
    def scales(self) -> np.ndarray:
        return np.asarray(self.meta["cells"]["scales"], dtype=np.float64)

    @property
    def areas(self) -> np.ndarray | None:
        """Areas (px, on the crop slice) of the training cells not cut by the image border."""
        a = self.meta["cells"].get("areas")
        return np.asarray(a, dtype=np.float64) if a else None

    @property
    def z_equators(self) -> np.ndarray | None:
        """Heights (physical units, from the first slice) at which the training cells of a 3D
        bundle are widest (``learn --3d`` since December 2026), else None."""
        v = (self.meta.get("shape_prior") or {}).get("z_equators")
        return np.asarray(v, dtype=np.float64) if v else None

    @property
    def cell_intensities(self) -> np.ndarray | None:
        """Mean raw intensity of each training cell (bundles from before 0.2 lack it)."""
        v = self.meta["cells"].get("mean_intensities")
        return np.asarray(v, dtype=np.float64) if v else None

    @property
    def brightness_frames(self) -> list[FrameBrightness]:
        """The training frames' background and cell brightness (empty for older bundles)."""
        frames = self.cells.brightness_frames or []
        return [FrameBrightness.from_dict(f) for f in frames]

    @property
    def crop_size(self) -> int:
        return int(self.meta["cells"]["crop_size"])

    def exemplars(self) -> list[Any]:
        """The training cells saved for exemplar-guided texture (:mod:`cellsynth.exemplars`);
        empty when the bundle has none (bundles learnt before December 2026, 3D bundles)."""
        from cellsynth import exemplars

        if self._exemplars is None:
            f = self.path / exemplars.FILE if self.path is not None else None
            self._exemplars = exemplars.load(f) if f is not None and f.is_file() else []
        return self._exemplars

    def set_exemplars(self, cells: list[Any], strength: float) -> None:
        """Keep ``cells`` (:func:`cellsynth.exemplars.collect`) as the bundle's exemplars, to be
        written by :meth:`save`, and ``strength`` as its default exemplar strength."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"exemplar strength must be in [0, 1], got {strength}")
        self._exemplars = list(cells)
        self.meta["exemplar_strength"] = float(strength)

    @property
    def density(self) -> float:
        return float(self.meta["cells"]["density"])

    @property
    def voxel_size(self) -> list[float] | None:
        return self.meta.get("voxel_size")

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "bundle"

    @property
    def calibration_3d(self) -> Calibration3D | None:
        if "shape_prior" not in self.meta:
            return None
        return Calibration3D(
            shape_prior=self.meta["shape_prior"],
            texture3d=self.meta.get("texture3d"),
            settings_3d=self.meta.get("settings_3d"),
            seconds=self.meta.get("training", {}).get("seconds_3d"),
        )

    def set_calibration_3d(
        self, cal: Calibration3D, voxel_size: list[float], density_3d: float
    ) -> None:
        """Record the 3D fits (optional part) in bundle.json's fields."""
        self.meta["voxel_size"] = list(voxel_size)
        self.meta["cells"]["density_3d"] = density_3d
        self.meta["shape_prior"] = cal.shape_prior
        if cal.texture3d is not None:
            self.meta["texture3d"] = cal.texture3d
        if cal.settings_3d is not None:
            self.meta["settings_3d"] = cal.settings_3d
        if cal.seconds is not None:
            self.meta.setdefault("training", {})["seconds_3d"] = cal.seconds

    @property
    def multiview_path(self) -> Path | None:
        """The bundle's own multiview model folder (learn --3d), or None (use the built-in)."""
        if self.path is None:
            return None
        own = self.path / MULTIVIEW
        return own if (own / "multiview.json").exists() else None

    def mask_sampler(self) -> Any:
        return make_sampler(make_train_scheduler(self.mask_cfg), self.mask_cfg.sampler)

    def texture_sampler(self) -> Any:
        return make_sampler(make_train_scheduler(self.texture_cfg), self.texture_cfg.sampler)

    def to(self, device: Any) -> GeneratorBundle:
        for m in (self.mask_unet, self.texture_unet):
            if m is not None:
                m.to(device)
        return self

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path | None = None) -> Path:
        """Write each model with ``save_pretrained`` (safetensors), then bundle.json."""
        from cellsynth import exemplars

        path = Path(path or self.path)  # type: ignore[arg-type]
        path.mkdir(parents=True, exist_ok=True)
        if path != self.path or not (path / exemplars.FILE).exists():
            cells = self.exemplars()  # read from the old folder (self.path moves below)
            if cells:
                exemplars.save(cells, path / exemplars.FILE)
        for name, model in (("mask_model", self.mask_unet), ("texture_model", self.texture_unet)):
            if model is not None:
                _save_model(model, path / name)
        if self.multiview is not None:
            self.multiview.save(path / MULTIVIEW)
        self.path = path
        return self.save_meta()

    def save_meta(self) -> Path:
        """Write bundle.json alone (atomically), in the current format."""
        assert self.path is not None
        self.meta["format"] = BUNDLE_FORMAT
        self.meta["cellsynth_version"] = __version__
        self.meta["mask_config"] = self.mask_cfg.to_dict()
        self.meta["texture_config"] = self.texture_cfg.to_dict()
        self.meta["parts"] = [*MODELS, *([MULTIVIEW] if self.multiview_path else [])]
        self.meta.setdefault("versions", {}).update(_versions())
        write_json(self.path / "bundle.json", self.meta)
        return self.path

    @classmethod
    def read_meta(cls, path: str | Path | None = None) -> GeneratorBundle:
        """bundle.json of ``path`` (default: the built-in bundle), checked, without models."""
        path = Path(path) if path is not None else builtin_bundle_path()
        meta_path = path / "bundle.json"
        if not path.is_dir():
            raise CellsynthInputError("generator bundle folder not found", path)
        if not meta_path.exists():
            raise CellsynthInputError(
                "is not a cellsynth generator bundle (no bundle.json); create one with "
                "'cellsynth learn'",
                path,
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CellsynthInputError(f"bundle.json is not valid JSON ({exc})", meta_path) from exc
        meta = _upgrade(meta, meta_path)
        validate_meta(meta, meta_path)
        bundle = cls(
            path=path,
            meta=meta,
            mask_cfg=DiffusionConfig.from_dict(meta["mask_config"]),
            texture_cfg=DiffusionConfig.from_dict(meta["texture_config"]),
        )
        if brightness_conditioned(bundle.texture_cfg) and not any(
            f.cells for f in bundle.brightness_frames
        ):
            raise CellsynthInputError(
                "the texture model is conditioned on cell brightness but "
                "cells.brightness_frames is missing or empty",
                meta_path,
            )
        return bundle

    @classmethod
    def load(cls, path: str | Path | None = None, device: Any = "cpu") -> GeneratorBundle:
        """Load a bundle folder (default: the built-in one) onto ``device``."""
        from diffusers import UNet2DModel

        bundle = cls.read_meta(path)
        path = bundle.path
        assert path is not None
        models = {}
        for name in MODELS:
            folder = _recovered(path / name)
            if not (folder / "diffusion_pytorch_model.safetensors").exists():
                raise CellsynthInputError(
                    f"{name} weights missing (expected {name}/diffusion_pytorch_model"
                    ".safetensors); the bundle may be incomplete",
                    path,
                )
            try:
                models[name] = UNet2DModel.from_pretrained(
                    folder, use_safetensors=True, local_files_only=True
                ).eval()
            except Exception as exc:  # diffusers raises many kinds for broken folders
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise CellsynthInputError(f"cannot load {name} ({msg})", folder) from None
        bundle.mask_unet = models["mask_model"]
        bundle.texture_unet = models["texture_model"]
        return bundle.to(device)


# --------------------------------------------------------------------------- format, checks


def _upgrade(meta: Any, where: Path) -> dict[str, Any]:
    """bundle.json of any format written so far, as the current format (in memory)."""
    if not isinstance(meta, dict):
        raise CellsynthInputError(
            f"bundle.json must hold a JSON object, not {type(meta).__name__}", where
        )
    fmt = meta.get("format")
    if fmt not in READABLE_FORMATS:
        raise CellsynthInputError(
            f"unsupported bundle format {fmt!r} (this cellsynth reads "
            f"{', '.join(READABLE_FORMATS)}; a newer cellsynth may have written it)",
            where,
        )
    meta = dict(meta)
    if fmt == "cellsynth-bundle/1":  # /2 lists its parts; /1 had only the two models
        meta["parts"] = list(MODELS)
    return meta


def _bad(where: Path, key: str, expected: str, got: Any) -> CellsynthInputError:
    return CellsynthInputError(f"{key} must be {expected}, got {json.dumps(got)}", where)


def _get(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return _MISSING
        d = d[part]
    return d


_MISSING = object()


def _int(d: dict, key: str, where: Path, *, lo: int, hi: int | None = None) -> int:
    v = _get(d, key)
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
    if not ok:
        rng = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
        raise _bad(where, key, rng, None if v is _MISSING else v)
    return int(v)


def _float(
    d: dict,
    key: str,
    where: Path,
    *,
    lo: float,
    hi: float | None = None,
    strict: bool = False,
    optional: bool = False,
) -> Any:
    v = _get(d, key)
    if optional and (v is _MISSING or v is None):
        return None
    ok = (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and np.isfinite(v)
        and (v > lo if strict else v >= lo)
        and (hi is None or v <= hi)
    )
    if not ok:
        expected = f"a number {'>' if strict else '>='} {lo}"
        if hi is not None:
            expected = f"a number from {lo} to {hi}"
        raise _bad(where, key, expected, None if v is _MISSING else v)
    return float(v)


def _numbers(
    d: dict, key: str, where: Path, *, positive: bool = False, optional: bool = False
) -> Any:
    v = _get(d, key)
    if optional and (v is _MISSING or v is None):
        return None
    ok = isinstance(v, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x) for x in v
    )
    ok = ok and (not positive or all(x > 0 for x in v)) and (optional or len(v) > 0)
    if not ok:
        what = "a non-empty list of " + ("positive numbers" if positive else "numbers")
        raise _bad(where, key, what, None if v is _MISSING else v)
    return [float(x) for x in v]


def validate_meta(meta: dict[str, Any], where: Path) -> None:
    """Check the values synthesis relies on; one error naming the file, key and expectation."""
    CellStats.from_dict(meta, where)
    intensity = _get(meta, "intensity")
    if not isinstance(intensity, dict):
        raise _bad(where, "intensity", "an object of intensity statistics", None)
    if intensity.get("dtype") not in (
        "uint8",
        "uint16",
        "uint32",
        "int8",
        "int16",
        "int32",
        "float32",
        "float64",
    ):
        raise _bad(
            where, "intensity.dtype", "a numpy dtype name such as uint16", intensity.get("dtype")
        )
    for k in ("minimum", "maximum", "foreground_mean", "background_mean"):
        v = intensity.get(k)
        if not (isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)):
            raise _bad(where, f"intensity.{k}", "a finite number", v)
    for k in ("foreground_std", "background_std"):
        _float(meta, f"intensity.{k}", where, lo=0.0)
    if intensity["maximum"] < intensity["minimum"]:
        raise _bad(where, "intensity.maximum", "at least intensity.minimum", intensity["maximum"])
    pct = intensity.get("percentiles")
    if not isinstance(pct, dict) or not pct:
        raise _bad(where, "intensity.percentiles", "an object of percentiles", pct)
    vs = meta.get("voxel_size")
    if vs is not None and not (
        isinstance(vs, list)
        and len(vs) in (2, 3)
        and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in vs)
    ):
        raise _bad(where, "voxel_size", "null or 2 or 3 positive numbers", vs)
    if meta.get("ndim") not in (None, 2, 3):
        raise _bad(where, "ndim", "2 or 3", meta.get("ndim"))
    for name in ("mask_config", "texture_config"):
        _check_config(meta, name, where)
    rho = _get(meta, "texture3d.rho")
    if rho is not _MISSING and rho is not None:
        _float(meta, "texture3d.rho", where, lo=0.0)
    _float(meta, "exemplar_strength", where, lo=0.0, hi=1.0, strict=True, optional=True)
    blur = meta.get("optical_blur")
    if blur is not None:
        if not isinstance(blur, dict):
            raise _bad(where, "optical_blur", "null or an object with a 'sigma'", blur)
        _float(meta, "optical_blur.sigma", where, lo=0.0, hi=MAX_BLUR)
        _float(meta, "optical_blur.edge_sigma", where, lo=0.0, hi=MAX_BLUR, optional=True)
    if "shape_prior" in meta and not isinstance(meta["shape_prior"], dict):
        raise _bad(where, "shape_prior", "an object", meta["shape_prior"])
    eq = (meta.get("shape_prior") or {}).get("z_equators")
    if eq is not None and not (
        isinstance(eq, list)
        and all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in eq)
    ):
        raise _bad(where, "shape_prior.z_equators", "a list of heights >= 0", eq)


def _check_config(meta: dict, name: str, where: Path) -> None:
    cfg = meta.get(name)
    if not isinstance(cfg, dict):
        raise _bad(where, name, "an object (the model's DiffusionConfig)", cfg)
    _int(meta, f"{name}.sample_size", where, lo=4, hi=4096)
    for k in ("in_channels", "out_channels"):
        _int(meta, f"{name}.{k}", where, lo=1, hi=64)
    _int(meta, f"{name}.cond_channels", where, lo=0, hi=64)
    _int(meta, f"{name}.num_train_timesteps", where, lo=2, hi=100000)
    _int(meta, f"{name}.sampling_steps", where, lo=1, hi=10000)
    w = cfg.get("widths")
    if not (isinstance(w, list) and w and all(isinstance(x, int) and x > 0 for x in w)):
        raise _bad(where, f"{name}.widths", "a non-empty list of positive integers", w)
    a = cfg.get("attention")
    if not (isinstance(a, list) and len(a) == len(w) and all(isinstance(x, bool) for x in a)):
        raise _bad(where, f"{name}.attention", f"a list of {len(w)} true/false", a)
    if cfg.get("prediction_type") not in ("epsilon", "v_prediction", "sample"):
        raise _bad(
            where,
            f"{name}.prediction_type",
            "epsilon, v_prediction or sample",
            cfg.get("prediction_type"),
        )
    if cfg.get("sampler", "ddim") not in SAMPLERS:
        raise _bad(where, f"{name}.sampler", " or ".join(SAMPLERS), cfg.get("sampler"))
    try:
        DiffusionConfig.from_dict(cfg)
    except TypeError as exc:
        raise CellsynthInputError(f"{name} is not a diffusion config ({exc})", where) from None


def _recovered(folder: Path) -> Path:
    """A model folder, or its previous version if a save was interrupted in the swap."""
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and old.is_dir():
        return old
    return folder


def _save_model(model: Any, folder: Path) -> None:
    """save_pretrained into a temporary folder, then swap it in (a crash never leaves half)."""
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    old = folder.with_name(f".{folder.name}.old")
    if old.exists() and not folder.exists():  # an earlier save was killed in the swap
        old.rename(folder)
    for orphan in folder.parent.glob(f".{folder.name}.*"):  # temp folders of killed saves
        if orphan != old and orphan.is_dir():
            shutil.rmtree(orphan, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        from cellsynth.io import _umask

        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "diffusers", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover
            pass
    return out
