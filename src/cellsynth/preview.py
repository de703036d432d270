"""What a bundle draws, written while it trains: a sample grid and the loss curves.

A long ``cellsynth learn`` run (``--quality``: hours) writes ``BUNDLE/progress/step-<n>.png``
at every checkpoint, and copies it to ``progress/latest.png``: a real training crop next to
synthetic pairs of the same size drawn with fixed seeds from the bundle as saved (the EMA
weights), label outlines below, and both models' loss curves. Successive images show the same
seeds, so they can be compared by eye as the model learns.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.io import atomic_path

log = logging.getLogger(__name__)

PROGRESS = "progress"  # BUNDLE/progress/step-<n>.png, latest.png


def preview_side(median_area: float, downsampling: int) -> int:
    """A canvas about eight cell diameters wide (96 to 256 px)."""
    diameter = 2.0 * np.sqrt(max(median_area, 1.0) / np.pi)
    side = int(np.clip(8 * diameter, 96, 256))
    return max(downsampling, side - side % downsampling)


def real_crop(image: np.ndarray, labels: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``side`` × ``side`` crop of a 2D training pair (its middle slice for a stack) with
    the most cells."""
    img, lab = np.asarray(image), np.asarray(labels)
    if lab.ndim == 3:
        z = int(np.argmax([(sl > 0).sum() for sl in lab]))
        img, lab = img[z], lab[z]
    h, w = lab.shape
    best, where = -1, (0, 0)
    for y in range(0, max(h - side, 0) + 1, max(side // 2, 1)):
        for x in range(0, max(w - side, 0) + 1, max(side // 2, 1)):
            n = np.unique(lab[y : y + side, x : x + side]).size
            if n > best:
                best, where = n, (y, x)
    y, x = where
    return img[y : y + side, x : x + side], lab[y : y + side, x : x + side]


def write_preview(
    bundle: Any,
    out_png: str | Path,
    real: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    device: Any = "cpu",
) -> Path:
    """Draw the grid for ``bundle`` (a saved :class:`GeneratorBundle`) into ``out_png``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from cellsynth.synthesize import SynthesisParams, Synthesizer

    side = preview_side(
        float(bundle.meta["cells"].get("median_area") or 100.0), bundle.texture_cfg.downsampling
    )
    synth = Synthesizer(bundle, device=device)
    pairs = [real_crop(img, lab, side) for img, lab in real[:1]]
    titles = ["real"] * len(pairs)
    for seed in seeds:
        pair = synth.sample(SynthesisParams(size=(side, side), seed=int(seed)))
        pairs.append((pair.image, pair.labels))
        titles.append(f"seed {seed}")
    lo, hi = bundle.intensity.low, bundle.intensity.high
    ncol = len(pairs)
    fig, axes = plt.subplots(3, ncol, figsize=(2.2 * ncol, 7.0), squeeze=False)
    for k, ((img, lab), title) in enumerate(zip(pairs, titles, strict=True)):
        axes[0, k].imshow(img, cmap="gray", vmin=lo, vmax=hi)
        axes[0, k].set_title(title, fontsize=9)
        rgb = np.clip((np.asarray(img, np.float64) - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
        rgb[find_boundaries(lab, mode="inner")] = (1.0, 0.8, 0.0)
        axes[1, k].imshow(rgb)
        for ax in axes[:2, k]:
            ax.set_axis_off()
    for ax in axes[2]:
        ax.remove()
    loss_ax = fig.add_subplot(3, 1, 3)
    training = bundle.meta.get("training", {})
    for name in ("mask_model", "texture_model"):
        curve = training.get(name, {}).get("loss_curve") or []
        if curve:
            steps, losses = zip(*curve, strict=True)
            loss_ax.plot(steps, losses, label=name.replace("_", " "))
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("training loss (running mean)")
    if loss_ax.lines:
        loss_ax.set_yscale("log")
        loss_ax.legend(fontsize=8)
    steps = {k: v.get("steps") for k, v in training.items() if isinstance(v, dict)}
    fig.suptitle(
        f"{bundle.name}: mask {steps.get('mask_model', 0)} steps, "
        f"texture {steps.get('texture_model', 0)} steps",
        fontsize=10,
    )
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out_png


def write_progress(
    bundle: Any,
    folder: str | Path,
    step: int,
    real: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    device: Any = "cpu",
) -> Path | None:
    """``folder/progress/step-<step>.png`` and ``latest.png``; a failure is logged, never
    raised (a preview must not stop a training run)."""
    try:
        png = write_preview(
            bundle, Path(folder) / PROGRESS / f"step-{step:07d}.png", real, device=device
        )
        latest = png.with_name("latest.png")
        with atomic_path(latest, overwrite=True) as tmp:
            shutil.copyfile(png, tmp)
        return png
    except Exception as exc:  # a preview is a by-product: never stop the training
        log.warning("could not write the training preview: %s", exc)
        return None
