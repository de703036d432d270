"""Train a generator bundle (mask model + texture model) from annotated images.

:func:`learn` is a generator: it yields a :class:`Progress` after every training step, so the
CLI turns it into a progress bar and the napari widget into a progress bar and a loss curve —
one long-work function, two front ends. Both models train interleaved (the one furthest behind
its target goes next), so a bundle saved at any moment has both models. Checkpoints are written
every ``checkpoint_minutes`` and whenever the loop ends — finished, interrupted (Ctrl-C), or
closed by its consumer (a cancelled GUI job) — and ``resume=True`` continues from them.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth.atlas import build_atlas
from cellsynth.bundle import GeneratorBundle
from cellsynth.device import seeded, select_device
from cellsynth.diffusion.core import (
    DiffusionConfig,
    build_unet,
    diffusion_loss,
    load_optimizer,
    make_train_scheduler,
    save_optimizer,
)
from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair, check_same_shape, count_cells, labelled_slices
from cellsynth.masks import mask_batch, mask_config, prepare_mask_crops
from cellsynth.metrics import background_summary, layout_summary
from cellsynth.texture import TextureTiles, texture_config

log = logging.getLogger(__name__)


@dataclass
class LearnSettings:
    """How long and how to train. ``minutes`` and the step targets both stop training."""

    minutes: float | None = 10.0
    mask_steps: int = 2000
    texture_steps: int = 4000
    mask_batch: int = 32
    texture_batch: int = 16
    lr: float = 1e-3
    warmup: int = 50
    ema_decay: float = 0.995
    crop_size: int = 64
    mask_size: int = 32
    tile: int | None = None  # texture training tile; None: from the cells' size (64..128)
    mask_widths: tuple[int, ...] = (16, 32, 64)
    texture_widths: tuple[int, ...] = (16, 32, 48, 64)
    seed: int = 0
    checkpoint_minutes: float = 2.0
    device: str = "auto"

    def use_tiny_models(self) -> None:
        """Tiny widths, batches and tiles: for tests and smoke runs, not for real bundles."""
        self.mask_widths, self.texture_widths = (8, 16, 16), (8, 16, 16)
        self.mask_batch, self.texture_batch, self.tile = 8, 4, 32

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mask_widths"] = list(self.mask_widths)
        d["texture_widths"] = list(self.texture_widths)
        return d


@dataclass
class Progress:
    """One training step's report: what the progress bar and the loss curve show."""

    step: int
    mask_step: int
    texture_step: int
    mask_target: int
    texture_target: int
    model: str
    loss: float
    elapsed: float
    fraction: float
    checkpoint: str | None = None
    done: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Trainer:
    name: str
    cfg: DiffusionConfig
    model: Any
    ema: Any
    scheduler: Any
    optimizer: torch.optim.Optimizer
    step: int = 0
    target: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    running: float = float("nan")

    def fraction(self) -> float:
        return self.step / max(self.target, 1)


def _ema_update(ema: Any, model: Any, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
            be.copy_(bm)


def _check_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    pairs = [p for p in pairs if p.has_labels]
    if not pairs:
        raise CellsynthInputError("no annotated images: learning needs images with labels")
    for p in pairs:
        if not p.has_image:
            raise CellsynthInputError("labels without an image", p.labels_path)
        check_same_shape(p.image, p.labels, p.image_path, p.labels_path)
        if p.labels.max() == 0:
            raise CellsynthInputError(
                "label image is empty: it contains no cells (all zeros)", p.labels_path or p.name
            )
    return pairs


def _texture_slices(pairs: Sequence[Pair]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """2D training images: each 2D image, or each annotated slice of a 3D stack."""
    pieces = [piece for p in pairs for piece in labelled_slices(p)]
    return [img for _, img, _ in pieces], [lab for _, _, lab in pieces]


def _density(pairs: Sequence[Pair], n_cells: int) -> float:
    area = 0.0
    for p in pairs:
        lab = p.labels
        if lab.ndim == 2:
            area += lab.size
        else:
            zs = p.annotated_slices or range(lab.shape[0])
            area += len(list(zs)) * lab.shape[1] * lab.shape[2]
    return n_cells / max(area, 1.0)


def auto_tile(diameter: float, batch: int, base: int = 64) -> tuple[int, int]:
    """Texture tiles about twice a cell's diameter (64 to 128 px, multiples of 32); the batch
    shrinks so that each step sees about the same number of pixels."""
    tile = int(np.clip(32 * np.ceil(2 * diameter / 32), base, 2 * base))
    return tile, max(4, round(batch * (base / tile) ** 2))


def learn(
    pairs: Sequence[Pair],
    out: str | Path,
    settings: LearnSettings | None = None,
    *,
    resume: bool = False,
) -> Iterator[Progress]:
    """Train the mask and texture models on ``pairs`` and save the bundle to ``out``."""
    settings = settings or LearnSettings()
    out = Path(out)
    if out.exists() and not resume and any(out.iterdir()):
        raise CellsynthInputError(
            "output bundle folder exists and is not empty; choose a new folder or pass --resume",
            out,
        )
    if resume and not (out / "training_state" / "state.json").exists():
        raise CellsynthInputError("nothing to resume: no training_state/state.json", out)
    device = select_device(settings.device)
    pairs = _check_pairs(pairs)
    t_start = time.monotonic()
    atlas = build_atlas(pairs, crop_size=settings.crop_size)
    if len(atlas) < 2:
        raise CellsynthInputError(
            f"only {len(atlas)} usable cell(s) in the training data; annotate a few more"
        )
    _, gen = seeded(settings.seed)
    torch.manual_seed(settings.seed)
    crops = torch.from_numpy(prepare_mask_crops(atlas.masks, settings.mask_size))
    if settings.tile is None:
        settings.tile, settings.texture_batch = auto_tile(
            float(np.median(atlas.table["equivalent_diameter"])), settings.texture_batch
        )
        log.info("texture tiles of %s px, batch %s", settings.tile, settings.texture_batch)
    tiles = TextureTiles(*_texture_slices(pairs), atlas.intensity, settings.tile)

    mcfg = mask_config(settings.mask_size, tuple(settings.mask_widths))
    tcfg = texture_config(tuple(settings.texture_widths), settings.tile)
    trainers = {}
    state: dict[str, Any] = {}
    if resume:
        state = json.loads((out / "training_state" / "state.json").read_text())
        old = json.loads((out / "bundle.json").read_text())
        mcfg = DiffusionConfig.from_dict(old["mask_config"])
        tcfg = DiffusionConfig.from_dict(old["texture_config"])
    for name, cfg, target in (
        ("mask_model", mcfg, settings.mask_steps),
        ("texture_model", tcfg, settings.texture_steps),
    ):
        if resume:
            from diffusers import UNet2DModel

            model = UNet2DModel.from_pretrained(out / "training_state" / name, use_safetensors=True)
            ema = UNet2DModel.from_pretrained(out / name, use_safetensors=True)
        else:
            model = build_unet(cfg)
            ema = copy.deepcopy(model)
        model.to(device).train()
        ema.to(device).eval().requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
        tr = _Trainer(name, cfg, model, ema, make_train_scheduler(cfg), opt, target=target)
        if resume:
            meta = load_optimizer(opt, out / "training_state" / f"{name}_optimizer")
            tr.step = int(meta["step"])
            tr.losses = [tuple(x) for x in state.get("losses", {}).get(name, [])]
        trainers[name] = tr
    elapsed0 = float(state.get("elapsed", 0.0))
    if resume:
        gen.manual_seed(settings.seed + sum(t.step for t in trainers.values()))

    bundle = GeneratorBundle(
        path=out,
        meta={
            "training_data": {
                "n_images": len(pairs),
                "names": [p.name for p in pairs][:200],
                "sources": sorted(
                    {str(p.image_path.parent.parent) for p in pairs if p.image_path is not None}
                )[:20],
                "atlas": atlas.summary,
            },
            "intensity": atlas.intensity.to_dict(),
            "voxel_size": list(pairs[0].voxel_size) if pairs[0].voxel_size else None,
            "ndim": atlas.ndim,
            "cells": {
                "crop_size": settings.crop_size,
                "scales": [round(float(s), 4) for s in atlas.table["scale"]],
                "areas": [float(a) for a in atlas.table["area"]],
                "mean_intensities": atlas.mean_intensities(),
                "density": _density(
                    pairs, sum(count_cells(p.labels, p.annotated_slices) for p in pairs)
                ),
                "median_area": float(np.median(atlas.table["area"])),
                # optional key (synthesize reads it with a default): placement reproduces it
                "touching_fraction": layout_summary(_texture_slices(pairs)[1])["touching_fraction"],
            },
            # optional: camera noise and illumination that synthesis adds to the painted image
            "background": background_summary(*_texture_slices(pairs)),
            "settings": settings.to_dict(),
        },
        mask_cfg=mcfg,
        texture_cfg=tcfg,
        mask_unet=trainers["mask_model"].ema,
        texture_unet=trainers["texture_model"].ema,
    )

    def checkpoint() -> str:
        elapsed = elapsed0 + time.monotonic() - t_start
        bundle.meta["training"] = {
            name: {"steps": t.step, "final_loss": t.running, "loss_curve": t.losses[-400:]}
            for name, t in trainers.items()
        }
        bundle.meta["training"]["seconds"] = round(elapsed, 1)
        bundle.meta["training"]["device"] = str(device)
        bundle.save(out)
        for name, t in trainers.items():
            t.model.save_pretrained(out / "training_state" / name, safe_serialization=True)
            save_optimizer(
                t.optimizer, out / "training_state" / f"{name}_optimizer", {"step": t.step}
            )
        from cellsynth.io import write_json

        write_json(
            out / "training_state" / "state.json",
            {
                "elapsed": elapsed,
                "losses": {n: t.losses for n, t in trainers.items()},
                "settings": settings.to_dict(),
            },
        )
        return str(out)

    budget = settings.minutes * 60.0 if settings.minutes else None
    last_ckpt = time.monotonic()
    dirty = False
    batches = {
        "mask_model": lambda: (mask_batch(crops, settings.mask_batch, gen).to(device), None),
        "texture_model": lambda: tuple(
            b.to(device) for b in tiles.batch(settings.texture_batch, gen)
        ),
    }
    step = sum(t.step for t in trainers.values())
    try:
        while True:
            elapsed = time.monotonic() - t_start
            todo = [t for t in trainers.values() if t.step < t.target]
            if not todo or (budget is not None and elapsed >= budget):
                break
            tr = min(todo, key=_Trainer.fraction)
            x0, cond = batches[tr.name]()
            lr_scale = min(1.0, (tr.step + 1) / max(settings.warmup, 1))
            for g in tr.optimizer.param_groups:
                g["lr"] = settings.lr * lr_scale
            loss = diffusion_loss(tr.model, tr.scheduler, x0, cond, generator=gen)
            tr.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tr.model.parameters(), 1.0)
            tr.optimizer.step()
            decay = min(settings.ema_decay, (1 + tr.step) / (10 + tr.step))
            _ema_update(tr.ema, tr.model, decay)
            tr.step += 1
            step += 1
            dirty = True
            lv = float(loss.detach())
            if not np.isfinite(lv):
                raise CellsynthInputError(
                    f"training diverged ({tr.name} loss is {lv}); try a smaller learning rate"
                )
            tr.running = lv if np.isnan(tr.running) else 0.98 * tr.running + 0.02 * lv
            if tr.step % 10 == 0:
                tr.losses.append((tr.step, round(tr.running, 5)))
            ckpt = None
            if time.monotonic() - last_ckpt > settings.checkpoint_minutes * 60:
                ckpt = checkpoint()
                last_ckpt = time.monotonic()
                dirty = False
            frac_steps = float(np.mean([min(t.fraction(), 1.0) for t in trainers.values()]))
            frac = max(frac_steps, elapsed / budget if budget else 0.0)
            yield Progress(
                step=step,
                mask_step=trainers["mask_model"].step,
                texture_step=trainers["texture_model"].step,
                mask_target=trainers["mask_model"].target,
                texture_target=trainers["texture_model"].target,
                model=tr.name,
                loss=lv,
                elapsed=elapsed0 + elapsed,
                fraction=min(frac, 1.0),
                checkpoint=ckpt,
            )
    finally:
        if dirty or not (out / "bundle.json").exists():
            checkpoint()
            log.info("saved bundle to %s", out)
    yield Progress(
        step=step,
        mask_step=trainers["mask_model"].step,
        texture_step=trainers["texture_model"].step,
        mask_target=trainers["mask_model"].target,
        texture_target=trainers["texture_model"].target,
        model="",
        loss=float("nan"),
        elapsed=elapsed0 + time.monotonic() - t_start,
        fraction=1.0,
        checkpoint=str(out),
        done=True,
    )
