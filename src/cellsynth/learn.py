"""Train a generator bundle (mask model + texture model) from annotated images.

:func:`learn` is a generator: it yields a :class:`Progress` after every training step, so the
CLI turns it into a progress bar and the napari widget into a progress bar and a loss curve —
one long-work function, two front ends. Both models train interleaved (the one furthest behind
its target goes next), so a bundle saved at any moment has both models. Checkpoints are written
every ``checkpoint_minutes`` and whenever the loop ends — finished, interrupted (Ctrl-C), or
closed by its consumer (a cancelled GUI job) — and ``resume=True`` continues from them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth import exemplars
from cellsynth.atlas import CellAtlas, build_atlas
from cellsynth.bundle import GeneratorBundle
from cellsynth.device import seeded
from cellsynth.diffusion.core import DiffusionConfig, build_unet, load_widened
from cellsynth.diffusion.training import (
    Checkpoints,
    ModelTrainer,
    OptimSettings,
    TrainReport,
    generator_states,
    make_accelerator,
    read_checkpoint,
    restore,
    train_loop,
    write_checkpoint,
)
from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair, check_same_shape, count_cells, labelled_slices
from cellsynth.locks import folder_lock
from cellsynth.masks import fit_bundle_smoothing, mask_batch, mask_config, prepare_mask_crops
from cellsynth.metrics import background_summary, layout_summary
from cellsynth.population import (
    MIN_CUT_PIXELS,
    edge_cut_probability,
    fit_clustering,
    touch_prob,
)
from cellsynth.preview import write_progress
from cellsynth.settings import LearnSettings
from cellsynth.synthesize import Synthesizer
from cellsynth.texture import TextureTiles, frame_brightness, texture_config

log = logging.getLogger(__name__)

CHECKPOINTS = "training_state"  # BUNDLE/training_state/checkpoint-<step>/


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


def exemplar_sources(pairs: Sequence[Pair]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """What exemplar cells are collected from: densely labelled stacks whole (each cell's
    slices in order), 2D images and the annotated slices of sparsely labelled stacks."""
    images, labels = [], []
    for p in pairs:
        if p.labels.ndim == 3 and not p.annotated_slices:
            images.append(p.image)
            labels.append(p.labels)
        else:
            for _, img, lab in labelled_slices(p):
                images.append(img)
                labels.append(lab)
    return images, labels


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


def layout_record(
    atlas: CellAtlas,
    slices: Sequence[np.ndarray],
    clustering: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The bundle's optional placement keys (synthesize reads them with defaults), from the
    training label images ``slices``: the touching fraction placement reproduces; the smallest
    sliver of a cut cell nearly all the training images show (``min_cut_area``; None: too few
    cut cells to tell); and how often a synthetic cell may overhang the canvas edge so that
    frames show the training frames' share of cut cells (``edge_cut``; 2D only, None for 3D);
    and the clustering under which placed cells lie as far from their neighbours as the training
    cells do (``cluster_prob``, ``cluster_band``: :func:`~cellsynth.population.fit_clustering`;
    2D only, None for 3D and too few cells; ``clustering`` when already fitted: a resumed run
    keeps its first run's)."""
    layout = layout_summary(slices)
    edge_cut = None
    min_pixels = round(layout["cut_area_p5"] or MIN_CUT_PIXELS)
    if atlas.ndim == 2 and slices:
        edge_cut = edge_cut_probability(
            layout["cut_fraction"],
            slices[0].shape,
            diameters=2.0 * np.sqrt(np.asarray(atlas.table["area"], np.float64) / np.pi),
            density=layout["density"],
            min_pixels=min_pixels,
        )
    if atlas.ndim == 2 and slices and clustering is None:
        log.info("fitting the placement's clustering to the training frames' layout")
        clustering = fit_clustering(
            slices,
            touch_prob=touch_prob(layout["touching_fraction"]),
            edge_cut=edge_cut,
            min_pixels=min_pixels,
        )
    return {
        "touching_fraction": layout["touching_fraction"],
        "min_cut_area": layout["cut_area_p5"],
        "edge_cut": edge_cut,
        "cluster_prob": None if clustering is None else clustering["cluster_prob"],
        "cluster_band": None if clustering is None else clustering["cluster_band"],
    }


def _recorded_clustering(out: Path) -> dict[str, float] | None:
    """The clustering an interrupted run fitted (its bundle.json), which a resume keeps rather
    than fitting it again; None if there is none."""
    try:
        cells = json.loads((out / "bundle.json").read_text()).get("cells", {})
        fitted = {k: float(cells[k]) for k in ("cluster_prob", "cluster_band")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return fitted


def training_solidity(atlas: CellAtlas) -> np.ndarray:
    """Solidity of the training cells the image border does not cut (2D atlases)."""
    if atlas.ndim != 2:
        return np.zeros(0)
    sol = np.asarray(atlas.table["solidity"], np.float64)
    cut = np.asarray(atlas.table["touches_border"], bool)
    return sol[~cut & np.isfinite(sol)]


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
    """Train the mask and texture models on ``pairs`` and save the bundle to ``out``.

    Under ``accelerate launch`` every process trains on its share of each batch (the batch
    sizes are global) and process 0 alone writes the bundle and the checkpoints, holding the
    folder's lock while it does.
    """
    settings = settings or LearnSettings()
    out = Path(out)
    accelerator = make_accelerator(settings.device, settings.mixed_precision)
    with contextlib.ExitStack() as stack:
        if accelerator.is_main_process:
            _check_output(out, resume)
            stack.enter_context(folder_lock(out, "bundle folder"))
        accelerator.wait_for_everyone()
        job = _learn(pairs, out, settings, accelerator, resume)
        try:
            for final in job:
                if final.done:
                    break
                yield final
        finally:
            job.close()
    yield final  # after the lock is released: the bundle is complete


def _check_output(out: Path, resume: bool) -> None:
    from cellsynth.locks import LOCK_NAME

    if resume:
        if not (out / CHECKPOINTS).is_dir():
            raise CellsynthInputError(f"nothing to resume: no {CHECKPOINTS}/ folder", out)
    elif out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise CellsynthInputError(
            "output bundle folder exists and is not empty; choose a new folder or pass --resume",
            out,
        )


def _learn(
    pairs: Sequence[Pair],
    out: Path,
    settings: LearnSettings,
    accelerator: Any,
    resume: bool,
) -> Iterator[Progress]:
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    pairs = _check_pairs(pairs)
    t_start = time.monotonic()
    atlas = build_atlas(pairs, crop_size=settings.crop_size)
    if len(atlas) < 2:
        raise CellsynthInputError(
            f"only {len(atlas)} usable cell(s) in the training data; annotate a few more"
        )
    _, gen = seeded(settings.seed if rank == 0 else settings.seed + 1_000_003 * rank)
    torch.manual_seed(settings.seed)
    crops = torch.from_numpy(prepare_mask_crops(atlas.masks, settings.mask_size))
    # a bundle to continue from fixes the texture tile (its model's); the batch stays as set
    init = GeneratorBundle.load(settings.init_from) if settings.init_from else None
    if init is not None:
        settings.tile = init.texture_cfg.sample_size
    if settings.tile is None:
        settings.tile, settings.texture_batch = auto_tile(
            float(np.median(atlas.table["equivalent_diameter"])), settings.texture_batch
        )
        log.info("texture tiles of %s px, batch %s", settings.tile, settings.texture_batch)
    slice_images, slice_labels = _texture_slices(pairs)  # the 2D images every stage reads
    tiles = TextureTiles(
        slice_images,
        slice_labels,
        atlas.intensity,
        settings.tile,
        brightness=settings.brightness_condition,
    )

    ckpts = Checkpoints(out / CHECKPOINTS)
    resumed: tuple[Path, dict[str, Any], dict[str, Any]] | None = None
    mcfg = mask_config(settings.mask_size, tuple(settings.mask_widths))
    tcfg = texture_config(
        tuple(settings.texture_widths), settings.tile, settings.brightness_condition
    )
    if init is not None:  # its architecture, with or without the brightness channel
        mcfg = init.mask_cfg
        tcfg = replace(
            init.texture_cfg,
            cond_channels=texture_config(brightness=settings.brightness_condition).cond_channels,
        )
    if resume:
        resumed = _find_checkpoint(ckpts, out)
        if resumed is not None:
            mcfg = DiffusionConfig.from_dict(resumed[1]["models"]["mask_model"]["config"])
            tcfg = DiffusionConfig.from_dict(resumed[1]["models"]["texture_model"]["config"])
        else:  # a bundle from before generation checkpoints (cellsynth <= 0.3)
            old = GeneratorBundle.read_meta(out)
            mcfg, tcfg = old.mask_cfg, old.texture_cfg
    mask_batch_size = _share(settings.mask_batch, n_proc, "mask batch")
    texture_batch_size = _share(settings.texture_batch, n_proc, "texture batch")
    optim = OptimSettings(
        lr=settings.lr,
        warmup=settings.warmup,
        lr_schedule=settings.lr_schedule,
        ema_decay=settings.ema_decay,
        grad_accumulation=settings.grad_accumulation,
    )
    unets = {"mask_model": build_unet(mcfg), "texture_model": build_unet(tcfg)}
    if init is not None and resumed is None:
        load_widened(unets["mask_model"], init.mask_unet)
        load_widened(unets["texture_model"], init.texture_unet)
    trainers = {
        "mask_model": ModelTrainer(
            "mask_model",
            mcfg,
            unets["mask_model"],
            accelerator,
            optim,
            target=settings.mask_steps,
            batch=lambda: (mask_batch(crops, mask_batch_size, gen), None),
        ),
        "texture_model": ModelTrainer(
            "texture_model",
            tcfg,
            unets["texture_model"],
            accelerator,
            optim,
            target=settings.texture_steps,
            batch=lambda: tiles.batch(texture_batch_size, gen),
        ),
    }
    elapsed0 = 0.0
    if resumed is not None:
        folder, meta, tensors = resumed
        restore(folder, trainers, gen, meta, tensors)
        elapsed0 = float(meta.get("elapsed", 0.0))
    elif resume:
        elapsed0 = _restore_legacy(out, trainers, gen, settings.seed)

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
                **layout_record(atlas, slice_labels, _recorded_clustering(out) if resume else None),
                # optional: what a brightness-conditioned texture model is told to paint
                "brightness_frames": [
                    frame_brightness(img, lab).to_dict()
                    for img, lab in zip(slice_images, slice_labels, strict=True)
                ],
            },
            # optional: camera noise and illumination that synthesis adds to the painted image
            "background": background_summary(slice_images, slice_labels),
            "settings": settings.to_dict(),
            **({"init_from": _init_record(init)} if init is not None else {}),
        },
        mask_cfg=mcfg,
        texture_cfg=tcfg,
    )
    # real cells to start the texture from (cellsynth.exemplars)
    bundle.set_exemplars(exemplars.collect(*exemplar_sources(pairs)), exemplars.DEFAULT_STRENGTH)
    # the solidity of the whole training cells, which the sampled masks' smoothing is fitted to
    solidity = training_solidity(atlas)
    device = accelerator.device
    elapsed_now = [elapsed0]
    preview_pairs = [(pairs[0].image, pairs[0].labels)]

    def save(interrupted: bool = False) -> str | None:
        """Checkpoint, then the bundle (its models are the EMA weights); process 0 writes.
        Interrupted (Ctrl-C, Cancel): no preview — the last periodic one stays, and the user
        is not kept waiting while the models draw a new one."""
        rng_states = generator_states(accelerator, gen)  # all processes take part
        if not accelerator.is_main_process:
            return None
        elapsed = elapsed_now[0]
        step = sum(t.step for t in trainers.values())
        ckpts.save(
            step,
            lambda folder: write_checkpoint(
                folder, trainers, rng_states, {"elapsed": elapsed, "settings": settings.to_dict()}
            ),
        )
        bundle.mask_unet = trainers["mask_model"].averaged()
        bundle.texture_unet = trainers["texture_model"].averaged()
        if atlas.ndim == 2 and len(solidity):  # outlines as ragged as the training cells'
            bundle.meta["cells"]["mask_smooth"] = fit_bundle_smoothing(bundle, solidity)
        bundle.meta["training"] = {
            name: {"steps": t.step, "final_loss": t.running, "loss_curve": t.losses[-400:]}
            for name, t in trainers.items()
        }
        bundle.meta["training"]["seconds"] = round(elapsed, 1)
        bundle.meta["training"]["device"] = str(device)
        bundle.meta["training"]["processes"] = n_proc
        bundle.save(out)
        if settings.preview and not interrupted:
            write_progress(bundle, out, step, preview_pairs, device=device)
        return str(out)

    budget = settings.minutes * 60.0 if settings.minutes else None
    setup = time.monotonic() - t_start
    job = train_loop(
        trainers,
        gen,
        budget_s=None if budget is None else max(budget - setup, 0.0),
        checkpoint_s=settings.checkpoint_minutes * 60,
        save=save,
        elapsed0=elapsed0 + setup,
    )
    if resume and accelerator.is_main_process:
        ckpts.clean_orphans()
    last = None
    try:
        for r in job:
            elapsed_now[0] = r.elapsed
            last = r
            if r.done:
                break
            frac = max(r.fraction, (r.elapsed - elapsed0) / budget if budget else 0.0)
            yield _progress(r, min(frac, 1.0))
    finally:
        job.close()
    assert last is not None
    if not resume and last.total_steps == 0:
        save()  # no step fitted in the budget: still leave a (untrained) bundle behind
    saved = bundle.texture_unet is not None  # not when a resumed run had no time for a step
    if accelerator.is_main_process and atlas.ndim == 2 and last.total_steps > 0 and saved:
        log.info("fitting the optical blur and edge softening to the training cells")
        fit = Synthesizer(bundle, device=device).fit_blur(slice_images, slice_labels)
        bundle.meta["optical_blur"] = fit
        bundle.save_meta()
    if accelerator.is_main_process:
        log.info("saved bundle to %s", out)
    yield _progress(last, 1.0, checkpoint=str(out))


def _init_record(init: GeneratorBundle) -> dict[str, Any]:
    """Where a bundle's training started from: the bundle's folder and its training steps."""
    steps = {
        k: v.get("steps") for k, v in init.meta.get("training", {}).items() if isinstance(v, dict)
    }
    return {"bundle": str(init.path), "steps": steps}


def _progress(r: TrainReport, fraction: float, checkpoint: str | None = None) -> Progress:
    return Progress(
        step=r.total_steps,
        mask_step=r.steps["mask_model"],
        texture_step=r.steps["texture_model"],
        mask_target=r.targets["mask_model"],
        texture_target=r.targets["texture_model"],
        model=r.model,
        loss=r.loss,
        elapsed=r.elapsed,
        fraction=fraction,
        checkpoint=checkpoint or r.checkpoint,
        done=r.done,
    )


def _share(batch: int, n_proc: int, what: str) -> int:
    """Each process's part of a global batch."""
    if batch % n_proc:
        raise CellsynthInputError(
            f"the {what} ({batch}) must be a multiple of the number of processes ({n_proc})"
        )
    return batch // n_proc


def _find_checkpoint(
    ckpts: Checkpoints, out: Path
) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
    """The newest complete checkpoint, read; a damaged one is named with the previous one."""
    found = ckpts.complete()
    if not found:
        if (out / CHECKPOINTS / "state.json").exists() and _is_legacy(out):
            return None
        raise CellsynthInputError(
            f"nothing to resume: no complete checkpoint in {CHECKPOINTS}/", out
        )
    try:
        meta, tensors = read_checkpoint(found[0])
    except CellsynthInputError as exc:
        hint = (
            f"; the previous one is {found[1]} (delete the damaged folder to resume from it)"
            if len(found) > 1
            else ""
        )
        raise CellsynthInputError(f"{exc}{hint}") from None
    return found[0], meta, tensors


def _is_legacy(out: Path) -> bool:
    try:
        state = json.loads((out / CHECKPOINTS / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "format" not in state and "losses" in state


def _restore_legacy(out: Path, trainers: dict[str, Any], gen: torch.Generator, seed: int) -> float:
    """Resume from the training_state/ of cellsynth <= 0.3 (raw weights + optimiser folders)."""
    from diffusers import UNet2DModel

    from cellsynth.diffusion.core import load_optimizer

    root = out / CHECKPOINTS
    try:
        state = json.loads((root / "state.json").read_text())
        for name, tr in trainers.items():
            raw = UNet2DModel.from_pretrained(
                root / name, use_safetensors=True, local_files_only=True
            )
            tr.unet.load_state_dict(raw.state_dict())
            ema = UNet2DModel.from_pretrained(
                out / name, use_safetensors=True, local_files_only=True
            )
            tr.ema.shadow_params = [
                p.detach().clone().to(tr.accelerator.device) for p in ema.parameters()
            ]
            meta = load_optimizer(tr.optimizer, root / f"{name}_optimizer")
            tr.step = int(meta["step"])
            tr.ema.optimization_step = tr.step
            for _ in range(tr.step):
                tr.lr_scheduler.step()
            tr.losses = [tuple(x) for x in state.get("losses", {}).get(name, [])]
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CellsynthInputError(f"damaged training state ({msg})", root) from None
    gen.manual_seed(seed + sum(t.step for t in trainers.values()))
    return float(state.get("elapsed", 0.0))
