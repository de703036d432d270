"""Stage 3b: the multiview model — from one 2D mask, the other silhouettes of one 3D shape.

The K-1 unseen views are denoised *jointly*: they are the channels of one diffusers
``UNet2DModel`` (with attention at its coarsest level, so every view sees every other), and the
given mask (the top view) is concatenated to the input at every step. The model is trained on
the spherical-harmonic prior alone (:mod:`cellsynth.shapes.harmonics`), so it does not depend on
any data set; cellsynth ships one (``data/multiview``, reproduced by
``scripts/train_builtin_multiview.sh``) and ``cellsynth learn --3d`` refines it on a prior fitted
to the user's cells (z extent relative to the in-plane size).

Masks are centred on their centroid and scaled so that their farthest pixel lies at
:data:`~cellsynth.shapes.harmonics.TOP_RADIUS` of the frame, as the prior's shapes are; the scale
(pixels per frame unit) is returned so that volumes come back at the cell's own size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth.diffusion.core import (
    DiffusionConfig,
    build_unet,
    ddim_sample,
    make_sampler,
    make_train_scheduler,
    to_numpy,
)
from cellsynth.errors import CellsynthInputError
from cellsynth.io import write_json
from cellsynth.shapes.harmonics import TOP_RADIUS, ShapePriorConfig, sample_shapes
from cellsynth.shapes.views import DEFAULT_VIEWS, view_matrices

log = logging.getLogger(__name__)

FORMAT = "cellsynth-multiview/1"


def builtin_multiview_path() -> Path:
    return Path(str(files("cellsynth") / "data" / "multiview"))


def multiview_config(
    n_views: int = len(DEFAULT_VIEWS), res: int = 32, widths: tuple[int, ...] = (16, 32, 64)
) -> DiffusionConfig:
    return DiffusionConfig(
        sample_size=res,
        in_channels=n_views - 1,
        cond_channels=1,
        out_channels=n_views - 1,
        widths=widths,
        layers_per_block=1,
        attention=(False,) * (len(widths) - 1) + (True,),
        sampling_steps=10,
    )


@dataclass
class MultiviewModel:
    unet: Any
    cfg: DiffusionConfig
    prior: ShapePriorConfig
    angles: tuple[tuple[float, float], ...] = DEFAULT_VIEWS
    meta: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def views(self) -> torch.Tensor:
        return view_matrices(self.angles)

    @property
    def res(self) -> int:
        return self.cfg.sample_size

    def sampler(self) -> Any:
        return make_sampler(make_train_scheduler(self.cfg))

    @classmethod
    def new(
        cls,
        prior: ShapePriorConfig | None = None,
        res: int = 32,
        widths: tuple[int, ...] = (16, 32, 64),
    ) -> MultiviewModel:
        cfg = multiview_config(len(DEFAULT_VIEWS), res, widths)
        return cls(build_unet(cfg), cfg, prior or ShapePriorConfig(), DEFAULT_VIEWS, {})

    def save(self, path: str | Path) -> Path:
        from cellsynth.bundle import _save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _save_model(self.unet, path / "unet")
        meta = dict(self.meta or {})
        meta.update(
            format=FORMAT,
            config=self.cfg.to_dict(),
            prior=self.prior.to_dict(),
            views=[list(a) for a in self.angles],
        )
        write_json(path / "multiview.json", meta)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path | None = None, device: Any = "cpu") -> MultiviewModel:
        from diffusers import UNet2DModel

        path = Path(path) if path is not None else builtin_multiview_path()
        meta_path = path / "multiview.json"
        if not meta_path.exists():
            raise CellsynthInputError(
                "is not a cellsynth multiview model (no multiview.json)", path
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise CellsynthInputError(
                f"unsupported multiview format {meta.get('format')!r}", meta_path
            )
        try:
            unet = UNet2DModel.from_pretrained(path / "unet", use_safetensors=True).eval()
        except Exception as exc:
            raise CellsynthInputError(f"cannot load the multiview model ({exc})", path) from exc
        return cls(
            unet.to(device),
            DiffusionConfig.from_dict(meta["config"]),
            ShapePriorConfig.from_dict(meta["prior"]),
            tuple(tuple(a) for a in meta["views"]),
            meta,
            path,
        )


# --------------------------------------------------------------------------- masks <-> frame


def normalise_masks(masks: Sequence[np.ndarray], res: int) -> tuple[np.ndarray, np.ndarray]:
    """Top views (B, res, res) bool of 2D cell masks, and each mask's pixels per frame unit."""
    from scipy import ndimage

    out = np.zeros((len(masks), res, res), bool)
    scale = np.zeros(len(masks))
    c = (np.arange(res) + 0.5) / res * 2 - 1  # frame coordinates of the view's pixels
    for i, m in enumerate(masks):
        m = np.asarray(m, bool)
        if m.ndim != 2 or not m.any():
            raise CellsynthInputError(f"cell mask {i} is empty or not 2D (shape {m.shape})")
        ys, xs = np.nonzero(m)
        cy, cx = ys.mean(), xs.mean()
        radius = float(np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max()) + 0.5
        px = radius / TOP_RADIUS
        yy, xx = np.meshgrid(cy + c * px, cx + c * px, indexing="ij")
        v = ndimage.map_coordinates(m.astype(np.float32), [yy, xx], order=1, cval=0.0)
        out[i] = v > 0.5
        if not out[i].any():  # a one-pixel cell: keep its centre
            out[i, res // 2, res // 2] = True
        scale[i] = px
    return out, scale


@torch.inference_mode()
def sample_views(
    model: MultiviewModel,
    top: np.ndarray,
    *,
    generator: torch.Generator | None = None,
    steps: int | None = None,
    device: Any = "cpu",
    batch_size: int = 128,
) -> np.ndarray:
    """All K silhouettes (B, K, res, res) bool; view 0 is the given top view (B, res, res)."""
    top = np.asarray(top, bool)
    b, res = top.shape[0], model.res
    if top.shape[1:] != (res, res):
        raise CellsynthInputError(f"top views must be {res}x{res}, got {top.shape[1:]}")
    if b == 0:
        return np.zeros((0, len(model.angles), res, res), bool)
    cond = torch.from_numpy(top[:, None].astype(np.float32) * 2 - 1).to(device)
    noise = torch.randn((b, model.cfg.in_channels, res, res), generator=generator).to(device)
    x = ddim_sample(
        model.unet,
        model.sampler(),
        noise,
        cond,
        steps=steps or model.cfg.sampling_steps,
        batch_size=batch_size,
    )
    return np.concatenate([top[:, None], to_numpy(x) > 0], axis=1)


# --------------------------------------------------------------------------- training


class PriorViews:
    """A pool of prior shapes' silhouettes, (N, K, res, res) in {-1, 1}, refreshed as it is used."""

    def __init__(
        self,
        prior: ShapePriorConfig,
        views: torch.Tensor,
        res: int,
        size: int,
        rng: np.random.Generator,
        chunk: int = 64,
    ) -> None:
        self.prior, self.views, self.res, self.rng, self.chunk = prior, views, res, rng, chunk
        parts = [self._make(min(chunk, size - i)) for i in range(0, size, chunk)]
        self.data = torch.cat(parts)
        self._next = 0

    def _make(self, n: int) -> torch.Tensor:
        s = sample_shapes(n, self.prior, self.rng).silhouettes(self.views, self.res, 40)
        return torch.from_numpy(s.astype(np.float32) * 2 - 1)

    def refresh(self) -> None:
        """Replace the oldest ``chunk`` entries with new shapes."""
        n = min(self.chunk, len(self.data))
        i = self._next
        self.data[i : i + n] = self._make(n)[: len(self.data) - i]
        self._next = (i + n) % len(self.data)

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.data), (size,), generator=generator)
        x = self.data[idx]
        return x[:, 1:], x[:, :1]


@dataclass
class MultiviewProgress:
    step: int
    steps: int
    loss: float
    elapsed: float
    done: bool = False


def train_multiview(
    model: MultiviewModel,
    steps: int,
    *,
    batch_size: int = 32,
    lr: float = 1e-3,
    pool: int | None = None,
    refresh_every: int = 25,
    seed: int = 0,
    device: Any = "cpu",  # a name (auto, cpu, cuda, mps) or a torch device
    ema_decay: float = 0.995,
) -> Iterator[MultiviewProgress]:
    """Train (or refine) ``model`` in place on silhouettes of its prior; yields progress.

    Runs :func:`cellsynth.diffusion.training.train_loop` (the loop of the mask and texture
    models). The model's weights become the EMA of the training weights when the loop ends
    (also when the consumer stops early).
    """
    from cellsynth.diffusion.training import (
        ModelTrainer,
        OptimSettings,
        make_accelerator,
        train_loop,
    )

    if steps < 1:
        raise CellsynthInputError(f"multiview training steps must be >= 1, got {steps}")
    accelerator = make_accelerator(device)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    if pool is None:  # enough shapes that a batch rarely repeats, few for short refinements
        pool = int(np.clip(steps * batch_size // 4, 64, 2048))
    data = PriorViews(model.prior, model.views, model.res, pool, rng)
    per_process = max(1, batch_size // accelerator.num_processes)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        if (trainer.step + 1) % refresh_every == 0:
            data.refresh()
        return data.batch(per_process, gen)

    optim = OptimSettings(
        lr=lr, warmup=0, weight_decay=1e-4, ema_decay=ema_decay, max_grad_norm=None
    )
    trainer = ModelTrainer(
        "multiview_model", model.cfg, model.unet, accelerator, optim, target=steps, batch=batch
    )
    try:
        for r in train_loop({"multiview_model": trainer}, gen):
            if r.done:
                break
            yield MultiviewProgress(r.step, steps, r.running, r.elapsed, r.step == steps)
    finally:
        model.unet = trainer.averaged()
        model.meta = dict(model.meta or {})
        model.meta["training_steps"] = int(model.meta.get("training_steps", 0)) + trainer.step
