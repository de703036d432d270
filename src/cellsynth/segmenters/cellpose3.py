"""The Cellpose 3 backend: the only module that imports ``cellpose.models`` and ``cellpose.train``.

Training is Cellpose 3's own ``train_seg``. Real and synthetic images are mixed as in paper 000:
each image drawn for an epoch comes from the real set with probability ``p_real`` (default 0.6)
— implemented with Cellpose's per-image sampling probabilities ``train_probs`` and
``nimg_per_epoch`` set so that the draw actually happens (Cellpose ignores the probabilities
when ``nimg_per_epoch`` equals the number of images).

:meth:`Cellpose3Segmenter.finetune` is a generator yielding progress per training batch;
``train_seg`` runs in a worker thread, a forward hook on the network reports batches and checks
for cancellation, and the per-batch loss is recorded by wrapping Cellpose's private loss function
``cellpose.train._loss_fn_seg`` for the duration of the run (``train_seg`` has no callback).
Both rely on Cellpose internals present in the versions :data:`CELLPOSE_VERSIONS`; a test pins
them. Closing the generator cancels training and saves the current weights.

The output is a Cellpose model file (what ``cellpose.models.CellposeModel(pretrained_model=…)``
and the Cellpose GUI load; Cellpose reads it with ``torch.load(weights_only=True)``), a
``.safetensors`` copy of the same weights, and a JSON training log.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.device import select_device
from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair, write_json
from cellsynth.segmenters import register_backend
from cellsynth.segmenters.base import (
    FinetuneProgress,
    FinetuneSettings,
    Segmenter,
    epoch_means,
    mixing_probabilities,
    training_slices,
)

log = logging.getLogger(__name__)

CHANNELS = [0, 0]  # grayscale

#: Cellpose versions whose private ``train._loss_fn_seg(lbl, y, device)`` and per-batch
#: network forward calls this backend relies on (checked by tests/test_segmenter_backend.py)
CELLPOSE_VERSIONS = (3, 4)  # >= 3.0, < 4


class Cancelled(Exception):
    """Raised inside the training thread to stop ``train_seg`` when the job is cancelled."""


def cellpose_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(x) for x in version("cellpose").split(".")[:2] if x.isdigit())


def check_cellpose_version() -> None:
    """Refuse to train with a Cellpose whose internals this backend does not know."""
    v = cellpose_version()
    lo, hi = CELLPOSE_VERSIONS
    if not lo <= v[0] < hi:
        raise CellsynthInputError(
            f"the cellpose3 backend trains with Cellpose {lo}.x; Cellpose "
            f"{'.'.join(map(str, v))} is installed"
        )


# --------------------------------------------------------------------------- model files


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


def load_cellpose_model(path: str | Path | None, device: str | Any = "auto") -> Any:
    """A ``cellpose.models.CellposeModel``: from a local file, or untrained. Never downloads."""
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
        model.net.load_state_dict(_read_state_dict(path))
        model.diam_mean = float(model.net.diam_mean.item())
        model.diam_labels = float(model.net.diam_labels.item())
        return model
    return models.CellposeModel(
        gpu=gpu, device=dev, pretrained_model=str(path), model_type=None, nchan=2
    )


# --------------------------------------------------------------------------- the backend


@register_backend
class Cellpose3Segmenter(Segmenter):
    """Cellpose 3 (``CellposeModel``, CPnet). Attributes it does not define (``net``,
    ``diam_mean``, ``eval`` …) are the wrapped ``CellposeModel``'s, so Cellpose-specific code
    such as :func:`cellsynth.metrics.style_vectors` takes this object as it is."""

    name = "cellpose3"
    label = "Cellpose 3"

    def __init__(self, model: Any) -> None:
        self.model = model

    def __getattr__(self, attr: str) -> Any:
        if attr == "model":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.model, attr)

    @classmethod
    def load(cls, path: str | Path | None, device: str | Any = "auto") -> Cellpose3Segmenter:
        return cls(load_cellpose_model(path, device))

    @classmethod
    def is_model_file(cls, path: Path) -> bool:
        try:
            check_model_file(path)
        except CellsynthInputError:
            return False
        return True

    def segment(
        self,
        image: np.ndarray,
        *,
        anisotropy: float | None = None,
        diameter: float | None = None,
        do_3D: bool = False,
    ) -> np.ndarray:
        kwargs: dict[str, Any] = {"channels": CHANNELS, "diameter": diameter}
        if do_3D:
            kwargs.update(do_3D=True, z_axis=0, anisotropy=anisotropy)
        return np.asarray(self.model.eval(image.astype(np.float32), **kwargs)[0])

    def segment_stitched(
        self, stack: np.ndarray, *, threshold: float, diameter: float | None = None
    ) -> np.ndarray:
        """Cellpose's own stitching (``stitch_threshold``): the slices in one batch."""
        out = self.model.eval(
            stack.astype(np.float32),
            channels=CHANNELS,
            diameter=diameter,
            z_axis=0,
            stitch_threshold=threshold,
        )[0]
        return np.asarray(out)

    def save(self, path: str | Path) -> Path:
        """The Cellpose model file and its ``.safetensors`` copy (both new, written atomically)."""
        from safetensors.torch import save_file

        from cellsynth.io import atomic_path

        path = Path(path)
        net = self.model.net
        with atomic_path(path) as tmp:
            net.save_model(str(tmp))
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        with atomic_path(path.with_name(path.name + ".safetensors")) as tmp:
            save_file(state, str(tmp))
        return path

    @classmethod
    def outputs(cls, out: Path) -> list[Path]:
        return [
            out,
            out.with_name(out.name + ".safetensors"),
            out.with_name(out.name + ".log.json"),
            _work_folder(out),
        ]

    @classmethod
    def finetune(
        cls,
        real: Sequence[Pair],
        synthetic: Sequence[Pair],
        out: Path,
        settings: FinetuneSettings,
    ) -> Iterator[FinetuneProgress]:
        return _finetune(cls, real, synthetic, out, settings)


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


def _work_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.training"


def _finetune(
    cls: type[Cellpose3Segmenter],
    real: Sequence[Pair],
    synthetic: Sequence[Pair],
    out: Path,
    settings: FinetuneSettings,
) -> Iterator[FinetuneProgress]:
    import torch
    from cellpose import train

    check_cellpose_version()
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
    # The seed fixes an untrained network's initial weights, whatever drew from torch's generator
    # before (a previous row, a bundle); Cellpose itself reseeds numpy with the epoch number, so
    # the crops and augmentations are the same for every seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = cls.load(settings.pretrained, settings.device)
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
            yield FinetuneProgress(
                epoch=(b - 1) // batches_per_epoch + 1,
                epochs=settings.epochs,
                batch=b,
                batches=total,
                loss=losses[-1] if losses else float("nan"),
                elapsed=time.monotonic() - t0,
                fraction=min(b / total, 1.0),
                epoch_losses=epoch_means(losses, batches_per_epoch),
            )
        finished = True
    finally:
        cancel.set()
        thread.join()
        handle.remove()
        cancelled = not finished or result.get("cancelled", False)
        model.save(out)
        write_json(
            out.with_name(out.name + ".log.json"),
            {
                "model": str(out),
                "backend": cls.name,
                "cancelled": cancelled,
                "seconds": round(time.monotonic() - t0, 2),
                "settings": settings.to_dict(),
                "learning_rate": lr,
                "nimg_per_epoch": nimg,
                "n_real": len(r_names),
                "n_synthetic": len(s_names),
                "real": r_names[:500],
                "synthetic": s_names[:500],
                "p_real_effective": float(probs[: len(r_names)].sum()),
                "diameter": float(net.diam_labels.item()),
                "epoch_losses": epoch_means(losses, batches_per_epoch),
                "batch_losses": losses[-2000:],
            },
            overwrite=False,
        )
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        log.info("model written to %s%s", out, " (cancelled: last weights)" if cancelled else "")
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
        epoch_losses=epoch_means(losses, batches_per_epoch),
        done=True,
        model=str(out),
    )
