"""The generator bundle: every trained model of a data set in one folder.

::

    BUNDLE/
      bundle.json            versions, training data summary, intensity statistics, voxel size,
                             cell sizes and density, training settings and progress
      mask_model/            diffusers save_pretrained (config.json + safetensors)
      texture_model/         idem
      training_state/        optimiser and raw (non-EMA) weights, for --resume (safetensors+JSON)

Weights are only ever read from safetensors; a bundle can be rebuilt from its folder alone.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth import __version__
from cellsynth.atlas import IntensityStats
from cellsynth.diffusion.core import DiffusionConfig, make_sampler, make_train_scheduler
from cellsynth.errors import CellsynthInputError
from cellsynth.io import write_json

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "cellsynth-bundle/1"
MODELS = ("mask_model", "texture_model")


def builtin_bundle_path() -> Path:
    """The small bundle shipped with cellsynth (trained on the built-in CC0 nuclei)."""
    return Path(str(files("cellsynth") / "data" / "bundle_dsb2018"))


@dataclass
class GeneratorBundle:
    """Models + statistics needed to synthesise data like the training set."""

    path: Path | None
    meta: dict[str, Any]
    mask_cfg: DiffusionConfig
    texture_cfg: DiffusionConfig
    mask_unet: Any = None
    texture_unet: Any = None
    extra_models: dict[str, Any] = field(default_factory=dict)

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
    def cell_intensities(self) -> np.ndarray | None:
        """Mean raw intensity of each training cell (bundles from before 0.2 lack it)."""
        v = self.meta["cells"].get("mean_intensities")
        return np.asarray(v, dtype=np.float64) if v else None

    @property
    def crop_size(self) -> int:
        return int(self.meta["cells"]["crop_size"])

    @property
    def density(self) -> float:
        return float(self.meta["cells"]["density"])

    @property
    def voxel_size(self) -> list[float] | None:
        return self.meta.get("voxel_size")

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "bundle"

    def mask_sampler(self) -> Any:
        return make_sampler(make_train_scheduler(self.mask_cfg))

    def texture_sampler(self) -> Any:
        return make_sampler(make_train_scheduler(self.texture_cfg))

    def to(self, device: Any) -> GeneratorBundle:
        for m in (self.mask_unet, self.texture_unet, *self.extra_models.values()):
            if m is not None:
                m.to(device)
        return self

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path | None = None) -> Path:
        """Write bundle.json and each model with ``save_pretrained`` (safetensors)."""
        path = Path(path or self.path)  # type: ignore[arg-type]
        path.mkdir(parents=True, exist_ok=True)
        for name, model in (("mask_model", self.mask_unet), ("texture_model", self.texture_unet)):
            if model is not None:
                _save_model(model, path / name)
        for name, model in self.extra_models.items():
            _save_model(model, path / name)
        self.meta["format"] = BUNDLE_FORMAT
        self.meta["cellsynth_version"] = __version__
        self.meta["mask_config"] = self.mask_cfg.to_dict()
        self.meta["texture_config"] = self.texture_cfg.to_dict()
        self.meta.setdefault("versions", {}).update(_versions())
        write_json(path / "bundle.json", self.meta)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path | None = None, device: Any = "cpu") -> GeneratorBundle:
        """Load a bundle folder (default: the built-in one) onto ``device``."""
        from diffusers import UNet2DModel

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
        except json.JSONDecodeError as exc:
            raise CellsynthInputError(f"bundle.json is not valid JSON ({exc})", meta_path) from exc
        if meta.get("format") != BUNDLE_FORMAT:
            raise CellsynthInputError(
                f"unsupported bundle format {meta.get('format')!r} (expected {BUNDLE_FORMAT})",
                meta_path,
            )
        models = {}
        for name in MODELS:
            folder = path / name
            if not (folder / "diffusion_pytorch_model.safetensors").exists():
                raise CellsynthInputError(
                    f"{name} weights missing (expected {name}/diffusion_pytorch_model"
                    ".safetensors); the bundle may be incomplete",
                    path,
                )
            try:
                models[name] = UNet2DModel.from_pretrained(folder, use_safetensors=True).eval()
            except Exception as exc:  # diffusers raises many kinds for broken folders
                raise CellsynthInputError(f"cannot load {name} ({exc})", folder) from exc
        bundle = cls(
            path=path,
            meta=meta,
            mask_cfg=DiffusionConfig.from_dict(meta["mask_config"]),
            texture_cfg=DiffusionConfig.from_dict(meta["texture_config"]),
            mask_unet=models["mask_model"],
            texture_unet=models["texture_model"],
        )
        return bundle.to(device)


def _save_model(model: Any, folder: Path) -> None:
    """save_pretrained into a temporary folder, then swap it in (a crash never leaves half)."""
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        from cellsynth.io import _umask

        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        old = folder.with_name(f".{folder.name}.old")
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
