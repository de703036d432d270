"""Stages 6–7: fine-tuning a segmenter on real + synthetic data, segmentation, quality scores.

The work is done by a segmenter backend (:mod:`cellsynth.segmenters`; Cellpose 3 by default,
:mod:`cellsynth.segmenters.cellpose3`). This module is the backend-neutral front: it checks
inputs and outputs, picks the backend (by name, or from a model file) and scores results. Real
and synthetic images are mixed as in paper 000 (:func:`mixing_probabilities`).

:func:`finetune` is a generator yielding :class:`FinetuneProgress`; closing it cancels training
and saves the current model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair, count_cells, write_json
from cellsynth.segmenters import (
    DEFAULT_BACKEND,
    Segmenter,
    backend_for_model_file,
    get_backend,
)
from cellsynth.segmenters.base import (
    MIN_SIDE,
    FinetuneProgress,
    FinetuneSettings,
    check_image_size,
    mixing_probabilities,
    training_slices,
)

if TYPE_CHECKING:
    from cellsynth.metrics import Evaluation

__all__ = [
    "MIN_SIDE",
    "FinetuneProgress",
    "FinetuneSettings",
    "anisotropy_of",
    "check_finetune_output",
    "check_image_size",
    "check_model_file",
    "evaluate_model",
    "evaluating",
    "finetune",
    "finetune_outputs",
    "load_model",
    "mixing_probabilities",
    "pretrain_path",
    "read_log",
    "record_quality",
    "score_dataset",
    "scoring",
    "segment",
    "training_slices",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- models


def check_model_file(path: str | Path) -> Path:
    """A path to a Cellpose model file (Cellpose format or safetensors), or a clear error."""
    from cellsynth.segmenters.cellpose3 import check_model_file as check

    return check(path)


def load_model(
    path: str | Path | None, device: str | Any = "auto", backend: str | None = None
) -> Segmenter:
    """A segmenter: from a local model file, or untrained (``None``). Never downloads.

    ``backend`` (a registered name) defaults to the one that recognises the file, else
    Cellpose 3.
    """
    if backend is None:
        cls = backend_for_model_file(path) if path is not None else get_backend(DEFAULT_BACKEND)
    else:
        cls = get_backend(backend)
    return cls.load(path, device)


def _as_segmenter(model: Any) -> Segmenter:
    if isinstance(model, Segmenter):
        return model
    from cellsynth.segmenters.cellpose3 import Cellpose3Segmenter

    return Cellpose3Segmenter(model)  # a bare cellpose.models.CellposeModel


def segment(
    model: Any,
    image: np.ndarray,
    *,
    diameter: float | None = None,
    do_3D: bool | None = None,
    anisotropy: float | None = None,
    path: Any = None,
    stitch_threshold: float | None = None,
) -> np.ndarray:
    """Instance labels of a 2D image or a 3D (Z, Y, X) stack (3D flows for stacks; with
    ``stitch_threshold``, XY slices segmented in 2D and stitched where consecutive slices'
    nuclei overlap by that IoU — for stacks of few, coarse slices).

    ``model`` is a :class:`~cellsynth.segmenters.Segmenter` (see :func:`load_model`);
    ``path`` (the image's file, or its name) is named in errors about the image.
    """
    check_stitch_threshold(stitch_threshold)
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise CellsynthInputError(
            f"can only segment 2D images or 3D stacks (ZYX), got shape {image.shape}",
            path if path is not None else "image",
        )
    check_image_size(image.shape, path if path is not None else "image")
    three_d = image.ndim == 3 if do_3D is None else do_3D
    if three_d and stitch_threshold is not None:
        masks = _as_segmenter(model).segment_stitched(
            image, threshold=stitch_threshold, diameter=diameter
        )
    else:
        masks = _as_segmenter(model).segment(
            image, anisotropy=anisotropy if three_d else None, diameter=diameter, do_3D=three_d
        )
    masks = np.asarray(masks)
    return masks.astype(np.uint16 if masks.max() <= 65535 else np.uint32)


def check_stitch_threshold(value: float | None, where: Any = "--stitch-threshold") -> None:
    """A stitch threshold is an IoU in (0, 1] (None: Cellpose's 3D mode for stacks)."""
    if value is not None and not 0.0 < value <= 1.0:
        raise CellsynthInputError(f"the stitch threshold is an IoU in (0, 1], got {value:g}", where)


def anisotropy_of(voxel_size: Sequence[float] | None, ndim: int) -> float | None:
    """Cellpose's ``anisotropy`` (z step / in-plane pixel) for a stack, from its voxel size."""
    if ndim != 3 or not voxel_size or len(voxel_size) != 3 or not voxel_size[1] > 0:
        return None
    return float(voxel_size[0]) / float(voxel_size[1])


def segment_pair(model: Any, pair: Pair, stitch_threshold: float | None = None) -> np.ndarray:
    """:func:`segment` a pair's image: a stack in 3D with its voxel anisotropy, or stitched
    from 2D slices with ``stitch_threshold``; errors name its file."""
    image = pair.image
    return segment(
        model,
        image,
        anisotropy=anisotropy_of(pair.voxel_size, image.ndim),
        path=pair.image_path or pair.name,
        stitch_threshold=stitch_threshold,
    )


def evaluating(
    model: Any, pairs: Sequence[Pair], stitch_threshold: float | None = None
) -> Iterator[tuple[int, int, Evaluation]]:
    """:func:`evaluate_model` one image at a time, for a progress bar: yields (images done,
    images, the evaluation so far)."""
    from cellsynth.metrics import Evaluation, compare_frames

    ev = Evaluation()
    for i, p in enumerate(pairs, 1):
        pred = segment_pair(model, p, stitch_threshold)
        ev.frames.extend(compare_frames(p.name, p.labels, pred, p.annotated_slices))
        yield i, len(pairs), ev


def evaluate_model(
    model: Any, pairs: Sequence[Pair], stitch_threshold: float | None = None
) -> Evaluation:
    """Segment each pair's image and score it against its labels (slice-wise when annotated;
    stacks stitched from 2D slices with ``stitch_threshold``, see :func:`segment`)."""
    from cellsynth.metrics import Evaluation

    last = deque(evaluating(model, pairs, stitch_threshold), maxlen=1)  # keep the last record
    return last[0][2] if last else Evaluation()


# --------------------------------------------------------------------------- fine-tuning


def finetune(
    real: Sequence[Pair],
    synthetic: Sequence[Pair],
    out: str | Path,
    settings: FinetuneSettings | None = None,
    backend: str | None = None,
) -> Iterator[FinetuneProgress]:
    """Train a segmenter (default Cellpose 3) on real (+ synthetic) pairs; write ``out``.

    With ``settings.pretrain_epochs`` the training has two stages: the synthetic pairs alone
    for that many epochs (their model is kept beside ``out``: :func:`pretrain_path`), then
    ``settings.epochs`` on the real (+ synthetic) pairs starting from those weights, at the
    same learning rate. Progress counts both stages as one run.
    """
    settings = settings or FinetuneSettings()
    out = check_finetune_output(out, backend)
    if settings.epochs < 1:
        raise CellsynthInputError(f"--epochs must be >= 1, got {settings.epochs}")
    pre = settings.pretrain_epochs
    if pre < 0:
        raise CellsynthInputError(f"--pretrain-epochs must be >= 0, got {pre}")
    trainer = get_backend(backend)
    if not pre:
        yield from trainer.finetune(real, synthetic, out, settings)
        return
    if not synthetic:
        raise CellsynthInputError(
            "--pretrain-epochs trains on the synthetic pairs first: give synthetic pairs "
            "(--synthetic), or set --pretrain-epochs 0"
        )
    stage = check_finetune_output(pretrain_path(out), backend)
    total = pre + settings.epochs
    first = dataclasses.replace(settings, epochs=pre, p_real=0.0, pretrain_epochs=0)
    done = 0  # batches of the first stage
    losses: list[float] = []
    # closing: a consumer that stops (Cancel) stops the stage in progress, which then writes
    # its last weights as a backend does when its own generator is closed
    with contextlib.closing(trainer.finetune([], synthetic, stage, first)) as stage_one:
        for p in stage_one:
            done, losses = p.batches, p.epoch_losses
            yield dataclasses.replace(
                p, epochs=total, fraction=p.fraction * pre / total, done=False, model=None
            )
    first_log = read_log(stage) if log_path(stage).is_file() else {}  # a backend may keep none
    if first_log.get("cancelled"):  # stopped inside the backend: no second stage
        return
    lr = settings.learning_rate or first_log.get("learning_rate")
    second = dataclasses.replace(
        settings, pretrained=str(stage), learning_rate=lr, pretrain_epochs=0
    )
    with contextlib.closing(trainer.finetune(real, synthetic, out, second)) as stage_two:
        for p in stage_two:
            yield dataclasses.replace(
                p,
                epoch=p.epoch + pre,
                epochs=total,
                batch=p.batch + done,
                batches=p.batches + done,
                fraction=(pre + p.fraction * settings.epochs) / total,
                epoch_losses=losses + p.epoch_losses,
            )
    if log_path(out).is_file():  # the second stage's log says where it started from
        rec = read_log(out)
        rec["pretrain"] = {"model": str(stage), "epochs": pre, "n_synthetic": len(synthetic)}
        write_json(log_path(out), rec)


def pretrain_path(out: str | Path) -> Path:
    """Where ``finetune`` with ``pretrain_epochs`` keeps the synthetic-only model of its first
    stage: ``OUT_synthetic_pretrain`` beside ``OUT``."""
    out = Path(out).expanduser()
    return out.with_name(f"{out.name}_synthetic_pretrain")


def finetune_outputs(out: str | Path, backend: str | None = None) -> list[Path]:
    """Everything ``finetune -o OUT`` writes (the model first), per its backend: for Cellpose 3
    the model, its safetensors copy, its log and its work folder (deleted at the end)."""
    return get_backend(backend).outputs(Path(out).expanduser())


def check_finetune_output(out: str | Path, backend: str | None = None) -> Path:
    """Refuse, before any work, an output name whose model, sidecars or work folder exist."""
    from cellsynth.outputs import check_new_outputs

    main, *sidecars = finetune_outputs(out, backend)
    return check_new_outputs(main, sidecars, "the model")


# --------------------------------------------------------------------------- scoring


def scoring(
    model: Any, pairs: Sequence[Pair], stitch_threshold: float | None = None
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """:func:`score_dataset` one image at a time: yields (images done, images, the image's row)."""
    from cellsynth.metrics import seg_jaccards

    for i, p in enumerate(pairs, 1):
        pred = segment_pair(model, p, stitch_threshold)
        j = seg_jaccards(p.labels, pred)
        fg_i = np.logical_and(p.labels > 0, pred > 0).sum()
        fg_u = np.logical_or(p.labels > 0, pred > 0).sum()
        row = {
            "name": p.name,
            "SEG": float(j.mean()) if j.size else float("nan"),
            "IoU": float(fg_i / fg_u) if fg_u else float("nan"),
            "n_labels": int(j.size),
            "n_predicted": count_cells(pred),
        }
        yield i, len(pairs), row


def score_dataset(
    model: Any, pairs: Sequence[Pair], stitch_threshold: float | None = None
) -> list[dict[str, Any]]:
    """Segment each synthetic image and score agreement with its own labels (SEG and IoU;
    stacks in 3D with their anisotropy, or stitched from 2D slices with ``stitch_threshold``)."""
    return [row for _, _, row in scoring(model, pairs, stitch_threshold)]


def record_quality(
    writer: Any, rows: Sequence[dict[str, Any]], model: str | Path, **extra: Any
) -> None:
    """Write :func:`score_dataset` rows into dataset.json (``samples.NAME.quality``)."""
    for r in rows:
        writer.meta["samples"].setdefault(r["name"], {})["quality"] = {
            "SEG": r["SEG"],
            "IoU": r["IoU"],
            "model": str(model),
            **extra,
        }
    writer.save()


def read_log(model_path: str | Path) -> dict[str, Any]:
    return json.loads(log_path(model_path).read_text())


def log_path(model_path: str | Path) -> Path:
    """The training log ``finetune`` writes beside a model: ``MODEL.log.json``."""
    return Path(str(model_path) + ".log.json")
