"""The segmenter seam: what cellsynth needs from a segmentation backend, and the data helpers
every backend shares (training slices, real/synthetic mixing, settings and progress).

A backend is one class, a subclass of :class:`Segmenter`, registered with
:func:`cellsynth.segmenters.register_backend`. An instance is a loaded model; loading,
fine-tuning and recognising model files are class methods, so the CLI, the jobs and the widgets
never name a backend's library. See docs/segmentation.md ("Adding a backend").
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair, labelled_slices

log = logging.getLogger(__name__)


@dataclass
class FinetuneSettings:
    """Fine-tuning settings shared by all backends; a backend ignores those it has no use for."""

    epochs: int = 100
    p_real: float = 0.6
    learning_rate: float | None = None  # None: 0.005 from scratch, 1e-4 from a pretrained model
    weight_decay: float = 1e-5
    batch_size: int = 8
    bsize: int = 224
    nimg_per_epoch: int | None = None  # None: 8 images or the number of images, if larger
    pretrained: str | None = None
    # first this many epochs on the synthetic pairs alone, then ``epochs`` on real (+ synthetic)
    # from those weights at the same learning rate (0: off); see segment.finetune
    pretrain_epochs: int = 0
    device: str = "auto"
    seed: int = 0  # an untrained network's initial weights (Cellpose draws the crops itself)
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


class Segmenter(ABC):
    """A loaded segmentation model of one backend.

    Subclasses set :attr:`name` (the ``--backend`` value) and :attr:`label` (shown in the
    Fine-tune widget) and implement the five methods below. Input checks (2D/3D, size) are done
    by :func:`cellsynth.segment.segment` before :meth:`segment` is called.
    """

    name: ClassVar[str]
    label: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path | None, device: str | Any = "auto") -> Segmenter:
        """The model in ``path`` (``None``: an untrained one); a clear error for a bad file."""

    @classmethod
    @abstractmethod
    def is_model_file(cls, path: Path) -> bool:
        """Whether ``path`` looks like this backend's model file (cheap, never raises)."""

    @abstractmethod
    def segment(
        self,
        image: np.ndarray,
        *,
        anisotropy: float | None = None,
        diameter: float | None = None,
        do_3D: bool = False,
    ) -> np.ndarray:
        """Instance labels of a 2D image (Y, X) or, with ``do_3D``, a stack (Z, Y, X)."""

    def segment_stitched(
        self, stack: np.ndarray, *, threshold: float, diameter: float | None = None
    ) -> np.ndarray:
        """Instance labels of a stack (Z, Y, X) segmented slice by slice in 2D, each slice's
        nuclei joined to the previous slice's where they overlap by IoU >= ``threshold``
        (Cellpose's ``stitch3D``). For stacks of few, coarse slices, where a model trained on
        the annotated XY slices fragments nuclei in the YZ and XZ views of a 3D mode.
        """
        from cellpose.utils import stitch3D

        slices = np.stack([np.asarray(self.segment(z, diameter=diameter), np.int32) for z in stack])
        return stitch3D(slices, stitch_threshold=threshold)

    @classmethod
    @abstractmethod
    def finetune(
        cls,
        real: Sequence[Pair],
        synthetic: Sequence[Pair],
        out: Path,
        settings: FinetuneSettings,
    ) -> Iterator[FinetuneProgress]:
        """Train on real (+ synthetic) pairs, yielding progress; the last item has ``done``.

        ``out`` has been checked by :func:`check_finetune_output` (nothing of
        :meth:`outputs` exists). Closing the generator cancels training and still writes the
        current model to ``out``.
        """

    @abstractmethod
    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (a new file), in a form :meth:`load` reads."""

    @classmethod
    def outputs(cls, out: Path) -> list[Path]:
        """Everything :meth:`finetune` writes for ``out`` (first the model itself)."""
        return [out, out.with_name(out.name + ".log.json")]


# --------------------------------------------------------------------------- shared helpers

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


def epoch_means(losses: Sequence[float], per_epoch: int) -> list[float]:
    """Mean loss of each complete epoch of ``per_epoch`` batches."""
    k = len(losses) // per_epoch
    return [float(np.mean(losses[i * per_epoch : (i + 1) * per_epoch])) for i in range(k)]
