"""Stages 6–7: Cellpose fine-tuning on real + synthetic data, segmentation, quality scores.

Training is Cellpose 3's own ``train_seg``. Real and synthetic images are mixed as in paper 000:
each image drawn for an epoch comes from the real set with probability ``p_real`` (default 0.6)
— implemented with Cellpose's per-image sampling probabilities ``train_probs`` and
``nimg_per_epoch`` set so that the draw actually happens (Cellpose ignores the probabilities
when ``nimg_per_epoch`` equals the number of images).

:func:`finetune` is a generator yielding progress per training batch; ``train_seg`` runs in a
worker thread, a forward hook on the network reports batches and checks for cancellation, and
the per-batch loss is recorded by wrapping Cellpose's loss function for the duration of the run.
Closing the generator cancels training and saves the current weights as the last checkpoint.

The output is a Cellpose model file (what ``cellpose.models.CellposeModel(pretrained_model=…)``
and the Cellpose GUI load; Cellpose reads it with ``torch.load(weights_only=True)``), a
``.safetensors`` copy of the same weights, and a JSON training log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellsynth.device import select_device
from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair, count_cells, labelled_slices, write_json

if TYPE_CHECKING:
    from cellsynth.metrics import Evaluation

log = logging.getLogger(__name__)

CHANNELS = [0, 0]  # grayscale


@dataclass
class FinetuneSettings:
    epochs: int = 100
    p_real: float = 0.6
    learning_rate: float | None = None  # None: 0.005 from scratch, 1e-4 from a pretrained model
    weight_decay: float = 1e-5
    batch_size: int = 8
    bsize: int = 224
    nimg_per_epoch: int | None = None  # None: 8 images or the number of images, if larger
    pretrained: str | None = None
    device: str = "auto"
    seed: int = 0
    save_every: int = 10
    min_train_masks: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneProgress:
    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float
    elapsed: float
    fraction: float
    epoch_losses: list[float] = field(default_factory=list)
    done: bool = False
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Cancelled(Exception):
    """Raised inside the training thread to stop ``train_seg`` when the job is cancelled."""


# --------------------------------------------------------------------------- data


def training_slices(
    pairs: Sequence[Pair], what: str
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """2D (image, labels) for training: 2D pairs as they are, 3D stacks by annotated slices."""
    imgs, labs, names = [], [], []
    for p in pairs:
        if not p.has_labels:
            raise CellsynthInputError(f"{what} image has no labels", p.image_path or p.name)
        for name, i, lb in labelled_slices(p):
            check_image_size(lb.shape, p.labels_path or p.image_path or name, f"{what} image")
            if lb.max() == 0:
                log.warning("%s: no cells, skipped", name)
                continue
            imgs.append(np.asarray(i, dtype=np.float32))
            labs.append(np.asarray(lb, dtype=np.int32))
            names.append(name)
    return imgs, labs, names


def mixing_probabilities(n_real: int, n_synthetic: int, p_real: float) -> np.ndarray:
    """Per-image probabilities: the real set gets ``p_real`` in all, the synthetic set the rest."""
    if not 0.0 <= p_real <= 1.0:
        raise CellsynthInputError(f"--p-real must be between 0 and 1, got {p_real}")
    if n_real == 0 and n_synthetic == 0:
        raise CellsynthInputError("no training images")
    if n_synthetic == 0:
        return np.full(n_real, 1.0 / n_real)
    if n_real == 0:
        return np.full(n_synthetic, 1.0 / n_synthetic)
    return np.concatenate(
        [np.full(n_real, p_real / n_real), np.full(n_synthetic, (1.0 - p_real) / n_synthetic)]
    )


# --------------------------------------------------------------------------- models


def check_model_file(path: str | Path) -> Path:
    """A path to a Cellpose model file (Cellpose format or safetensors), or a clear error."""
    path = Path(path)
    if not path.exists():
        raise CellsynthInputError("Cellpose model file not found", path)
    if path.is_dir():
        raise CellsynthInputError("is a folder, expected a Cellpose model file", path)
    try:
        state = _read_state_dict(path)
    except CellsynthInputError:
        raise
    except Exception as exc:
        raise CellsynthInputError(
            f"is not a Cellpose model file ({exc.__class__.__name__})", path
        ) from exc
    if not any(k.startswith("downsample.") for k in state) or "diam_mean" not in state:
        raise CellsynthInputError("is not a Cellpose 3 model file (no CPnet weights)", path)
    return path


def _read_state_dict(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    # Cellpose's own format; weights_only=True never runs code from the file
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CellsynthInputError("is not a Cellpose model file (no weights inside)", path)
    return state


def load_model(path: str | Path | None, device: str | Any = "auto") -> Any:
    """A Cellpose 3 model: from a local file, or untrained (``None``). Never downloads."""
    from cellpose import models

    dev = select_device(device)
    gpu = dev.type != "cpu"
    if path is None:
        return models.CellposeModel(
            gpu=gpu, device=dev, pretrained_model=False, model_type=None, diam_mean=30.0, nchan=2
        )
    path = check_model_file(path)
    if path.suffix == ".safetensors":
        model = models.CellposeModel(
            gpu=gpu, device=dev, pretrained_model=False, model_type=None, diam_mean=30.0, nchan=2
        )
        state = _read_state_dict(path)
        model.net.load_state_dict(state)
        model.diam_mean = float(model.net.diam_mean.item())
        model.diam_labels = float(model.net.diam_labels.item())
        return model
    return models.CellposeModel(
        gpu=gpu, device=dev, pretrained_model=str(path), model_type=None, nchan=2
    )


#: smallest image side (Y and X) Cellpose can segment or train on (its resizing fails below)
MIN_SIDE = 8


def check_image_size(shape: Sequence[int], path: Any, what: str = "image") -> None:
    """Refuse images smaller than :data:`MIN_SIDE` px in Y or X, naming the file."""
    if min(shape[-2:]) < MIN_SIDE:
        raise CellsynthInputError(
            f"{what} of {'×'.join(map(str, shape))} px is too small; Cellpose needs at least "
            f"{MIN_SIDE}×{MIN_SIDE} px",
            path,
        )


def segment(
    model: Any,
    image: np.ndarray,
    *,
    diameter: float | None = None,
    do_3D: bool | None = None,
    anisotropy: float | None = None,
    path: Any = None,
) -> np.ndarray:
    """Instance labels of a 2D image or a 3D (Z, Y, X) stack (3D flows for stacks).

    ``path`` (the image's file, or its name) is named in errors about the image.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise CellsynthInputError(
            f"can only segment 2D images or 3D stacks (ZYX), got shape {image.shape}",
            path if path is not None else "image",
        )
    check_image_size(image.shape, path if path is not None else "image")
    three_d = image.ndim == 3 if do_3D is None else do_3D
    kwargs: dict[str, Any] = {"channels": CHANNELS, "diameter": diameter}
    if three_d:
        kwargs.update(do_3D=True, z_axis=0, anisotropy=anisotropy)
    masks = model.eval(image.astype(np.float32), **kwargs)[0]
    masks = np.asarray(masks)
    return masks.astype(np.uint16 if masks.max() <= 65535 else np.uint32)


def anisotropy_of(voxel_size: Sequence[float] | None, ndim: int) -> float | None:
    """Cellpose's ``anisotropy`` (z step / in-plane pixel) for a stack, from its voxel size."""
    if ndim != 3 or not voxel_size or len(voxel_size) != 3 or not voxel_size[1] > 0:
        return None
    return float(voxel_size[0]) / float(voxel_size[1])


def evaluate_model(
    model: Any, pairs: Sequence[Pair], on_image: Callable[[int, int], None] | None = None
) -> Evaluation:
    """Segment each pair's image and score it against its labels (slice-wise when annotated)."""
    from cellsynth.metrics import Evaluation, compare_frames

    ev = Evaluation()
    for i, p in enumerate(pairs):
        image = p.image
        pred = segment(
            model,
            image,
            anisotropy=anisotropy_of(p.voxel_size, image.ndim),
            path=p.image_path or p.name,
        )
        ev.frames.extend(compare_frames(p.name, p.labels, pred, p.annotated_slices))
        if on_image is not None:
            on_image(i + 1, len(pairs))
    return ev


# --------------------------------------------------------------------------- fine-tuning


@contextlib.contextmanager
def _record_losses(sink: list[float]) -> Iterator[None]:
    """Wrap cellpose.train._loss_fn_seg so each batch's loss is recorded (restored after)."""
    from cellpose import train

    original = train._loss_fn_seg

    def recording(lbl, y, device):
        loss = original(lbl, y, device)
        sink.append(float(loss.detach()))
        return loss

    train._loss_fn_seg = recording
    try:
        yield
    finally:
        train._loss_fn_seg = original


def finetune(
    real: Sequence[Pair],
    synthetic: Sequence[Pair],
    out: str | Path,
    settings: FinetuneSettings | None = None,
) -> Iterator[FinetuneProgress]:
    """Train a Cellpose model on real (+ synthetic) pairs; write ``out`` (the model file)."""
    import torch
    from cellpose import train

    settings = settings or FinetuneSettings()
    out = check_finetune_output(out)
    if settings.epochs < 1:
        raise CellsynthInputError(f"--epochs must be >= 1, got {settings.epochs}")
    r_imgs, r_labs, r_names = training_slices(real, "real")
    s_imgs, s_labs, s_names = training_slices(synthetic, "synthetic")
    if not r_imgs and not s_imgs:
        raise CellsynthInputError("no annotated training images (all label images are empty?)")
    probs = mixing_probabilities(len(r_imgs), len(s_imgs), settings.p_real)
    n = len(probs)
    nimg = settings.nimg_per_epoch or max(8, n)
    if nimg == n and s_imgs and r_imgs:
        nimg = n + 1  # Cellpose uses its probabilities only when nimg_per_epoch != n
    lr = settings.learning_rate or (1e-4 if settings.pretrained else 0.005)
    model = load_model(settings.pretrained, settings.device)
    net = model.net
    out.parent.mkdir(parents=True, exist_ok=True)
    work = _work_folder(out)
    try:
        work.mkdir()  # this run's own: deleted at the end, so never one that was there before
    except FileExistsError:
        raise CellsynthInputError(
            "already exists (another finetune into the same name is running, or was killed); "
            "cellsynth never deletes folders it did not create — remove it or choose another "
            "output name",
            work,
        ) from None
    batches_per_epoch = int(np.ceil(nimg / settings.batch_size))
    total = settings.epochs * batches_per_epoch
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    losses: list[float] = []
    counter = {"batches": 0}

    def hook(module, inputs, output):
        if cancel.is_set():
            raise Cancelled
        if module.training:
            counter["batches"] += 1
            events.put(("batch", counter["batches"]))

    handle = net.register_forward_hook(hook)
    result: dict[str, Any] = {}

    def run() -> None:
        torch.manual_seed(settings.seed)
        try:
            with _record_losses(losses):
                result["out"] = train.train_seg(
                    net,
                    train_data=r_imgs + s_imgs,
                    train_labels=r_labs + s_labs,
                    train_probs=probs,
                    channels=CHANNELS,
                    n_epochs=settings.epochs,
                    learning_rate=lr,
                    weight_decay=settings.weight_decay,
                    batch_size=settings.batch_size,
                    bsize=settings.bsize,
                    nimg_per_epoch=nimg,
                    save_path=str(work),
                    save_every=settings.save_every,
                    model_name="model",
                    min_train_masks=settings.min_train_masks,
                )
        except Cancelled:
            result["cancelled"] = True
        except Exception as exc:  # reported to the consumer, not lost in the thread
            result["error"] = exc
        finally:
            events.put(("end", None))

    t0 = time.monotonic()
    thread = threading.Thread(target=run, name="cellsynth-finetune", daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            kind, value = events.get()
            if kind == "end":
                break
            b = int(value)
            epoch = (b - 1) // batches_per_epoch
            epoch_losses = _epoch_means(losses, batches_per_epoch)
            yield FinetuneProgress(
                epoch=epoch + 1,
                epochs=settings.epochs,
                batch=b,
                batches=total,
                loss=losses[-1] if losses else float("nan"),
                elapsed=time.monotonic() - t0,
                fraction=min(b / total, 1.0),
                epoch_losses=epoch_losses,
            )
        finished = True
    finally:
        cancel.set()
        thread.join()
        handle.remove()
        _finish(
            model,
            out,
            work,
            settings,
            lr,
            nimg,
            probs,
            r_names,
            s_names,
            losses,
            batches_per_epoch,
            cancelled=not finished or result.get("cancelled", False),
            seconds=time.monotonic() - t0,
        )
    if "error" in result:
        raise result["error"]
    yield FinetuneProgress(
        epoch=settings.epochs,
        epochs=settings.epochs,
        batch=total,
        batches=total,
        loss=losses[-1] if losses else float("nan"),
        elapsed=time.monotonic() - t0,
        fraction=1.0,
        epoch_losses=_epoch_means(losses, batches_per_epoch),
        done=True,
        model=str(out),
    )


def _work_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.training"


def finetune_outputs(out: str | Path) -> list[Path]:
    """Everything ``finetune -o OUT`` writes: the model, its safetensors copy, its log, and its
    work folder (deleted at the end)."""
    out = Path(out).expanduser()
    return [
        out,
        out.with_name(out.name + ".safetensors"),
        out.with_name(out.name + ".log.json"),
        _work_folder(out),
    ]


def check_finetune_output(out: str | Path) -> Path:
    """Refuse, before any work, an output name whose model, sidecars or work folder exist."""
    from cellsynth.outputs import check_new_outputs

    main, *sidecars = finetune_outputs(out)
    return check_new_outputs(main, sidecars, "the model")


def _epoch_means(losses: list[float], per_epoch: int) -> list[float]:
    k = len(losses) // per_epoch
    return [float(np.mean(losses[i * per_epoch : (i + 1) * per_epoch])) for i in range(k)]


def _finish(
    model,
    out: Path,
    work: Path,
    settings: FinetuneSettings,
    lr: float,
    nimg: int,
    probs: np.ndarray,
    r_names,
    s_names,
    losses,
    per_epoch,
    *,
    cancelled: bool,
    seconds: float,
) -> None:
    """Write the model (Cellpose format + safetensors) and the training log, atomically."""
    import shutil

    from safetensors.torch import save_file

    from cellsynth.io import atomic_path

    net = model.net
    with atomic_path(out) as tmp:
        net.save_model(str(tmp))
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    st = out.with_name(out.name + ".safetensors")
    with atomic_path(st) as tmp:
        save_file(state, str(tmp))
    write_json(
        out.with_name(out.name + ".log.json"),
        {
            "model": str(out),
            "cancelled": cancelled,
            "seconds": round(seconds, 2),
            "settings": settings.to_dict(),
            "learning_rate": lr,
            "nimg_per_epoch": nimg,
            "n_real": len(r_names),
            "n_synthetic": len(s_names),
            "real": r_names[:500],
            "synthetic": s_names[:500],
            "p_real_effective": float(probs[: len(r_names)].sum()),
            "diameter": float(net.diam_labels.item()),
            "epoch_losses": _epoch_means(losses, per_epoch),
            "batch_losses": losses[-2000:],
        },
        overwrite=False,
    )
    shutil.rmtree(work, ignore_errors=True)
    log.info("model written to %s%s", out, " (cancelled: last weights)" if cancelled else "")


# --------------------------------------------------------------------------- scoring


def score_dataset(model: Any, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
    """Segment each synthetic image and score agreement with its own labels (SEG and IoU)."""
    from cellsynth.metrics import seg_jaccards

    rows = []
    for p in pairs:
        pred = segment(model, p.image, path=p.image_path or p.name)
        j = seg_jaccards(p.labels, pred)
        fg_i = np.logical_and(p.labels > 0, pred > 0).sum()
        fg_u = np.logical_or(p.labels > 0, pred > 0).sum()
        rows.append(
            {
                "name": p.name,
                "SEG": float(j.mean()) if j.size else float("nan"),
                "IoU": float(fg_i / fg_u) if fg_u else float("nan"),
                "n_labels": int(j.size),
                "n_predicted": count_cells(pred),
            }
        )
    return rows


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
    return json.loads(Path(str(model_path) + ".log.json").read_text())
