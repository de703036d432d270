"""``cellsynth learn --3d``: a bundle that synthesizes 3D stacks like the user's.

On top of :func:`cellsynth.learn.learn` (the mask model learns each cell's largest annotated
slice, the texture model the annotated slices), three things are fitted to the 3D data:

1. **Shape prior**: the z extent of the cells relative to their in-plane diameter (physical
   units, from dense 3D labels; for cells cut by the first or last slice, from an ellipsoid
   fitted to their slice areas) sets the prior's ``z_ratio``; the built-in multiview model is
   refined on that prior and saved as ``multiview_model/`` in the bundle.
2. **Slice correlation rho**: the adjacent-slice correlation of the texture inside cells
   (:func:`cellsynth.metrics.slice_correlation`) is measured on the real stacks and on a real
   label stack painted at several rho; the rho that matches goes into ``bundle.json``.
3. **3D density**: cells per voxel, so stacks get as many cells as the data has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.bundle import MULTIVIEW
from cellsynth.device import select_device
from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair, count_cells, require_3d
from cellsynth.learn import LearnSettings, Progress, learn
from cellsynth.locks import folder_lock
from cellsynth.settings import Learn3DSettings

log = logging.getLogger(__name__)


def check_3d_pairs(pairs: Sequence[Pair]) -> None:
    for p in pairs:
        if p.has_labels:
            require_3d(p.labels.shape, p.labels_path or p.name, what="cellsynth learn --3d")


def z_ratios(pairs: Sequence[Pair], voxel_size: Sequence[float]) -> tuple[np.ndarray, int]:
    """z extent / in-plane equivalent diameter (physical) of each cell of dense 3D labels,
    and how many cells the stack cuts (they touch its first or last slice).

    For a cut cell the z extent seen is only a lower bound; its slice areas are fitted with an
    ellipsoid's, ``A(z) = A0 (1 - (z - z0)^2 / c^2)``, and ``2c`` is its z extent (the extent
    seen if the fit fails or gives less).
    """
    from skimage.measure import regionprops

    vz, vy, vx = (float(v) for v in voxel_size)
    out, n_cut = [], 0
    for p in pairs:
        if p.annotated_slices:  # slice annotations say nothing about z extent
            continue
        lab = p.labels
        for r in regionprops(lab):
            z0, _, _, z1, _, _ = r.bbox
            areas = r.image.sum(axis=(1, 2)).astype(np.float64)  # per slice of the cell
            a_max = float(areas.max())
            d_xy = np.sqrt(4 * a_max * vy * vx / np.pi)
            extent = (z1 - z0) * vz
            if z0 == 0 or z1 == lab.shape[0]:
                n_cut += 1
                extent = max(extent, _ellipsoid_height(areas) * vz)
            out.append(extent / max(d_xy, 1e-9))
    return np.asarray(out), n_cut


def z_equators(pairs: Sequence[Pair], voxel_size: Sequence[float]) -> list[float]:
    """Where the cells of dense 3D labels are widest: the height (physical units, from the
    stack's first slice) of the centre of each cell's largest cross-section. Adherent cells on
    a coverslip are widest near the first slices (CHO: every nucleus within two slices of it);
    synthesis places its cells' equators at these heights."""
    from skimage.measure import regionprops

    vz = float(voxel_size[0])
    out = []
    for p in pairs:
        if p.annotated_slices:
            continue
        for r in regionprops(p.labels):
            areas = r.image.sum(axis=(1, 2))
            out.append(round((r.bbox[0] + int(np.argmax(areas)) + 0.5) * vz, 4))
    return out


def _ellipsoid_height(areas: np.ndarray) -> float:
    """Height 2c (slices) of the ellipsoid whose cross-sections best match ``areas``."""
    if len(areas) < 3:
        return 0.0
    z = np.arange(len(areas), dtype=np.float64)
    g, b, a = np.polyfit(z, areas, 2)
    if g >= 0:  # no curvature: far taller than the stack; the extent seen is all we know
        return 0.0
    peak = a - b * b / (4 * g)
    return float(2 * np.sqrt(max(peak, 0.0) / -g))


def calibrate_rho(
    bundle: Any, labels: np.ndarray, real_corr: float, grid: Sequence[float], seed: int = 0
) -> dict[str, Any]:
    """Paint ``labels`` at each rho of ``grid`` as synthesis paints a stack (the same cells'
    brightness at every rho and, for bundles holding exemplar cells, the same warped real
    cells to start from) and pick the rho whose slice correlation is closest to
    ``real_corr``."""
    import torch

    from cellsynth.metrics import slice_correlation
    from cellsynth.synthesize import SynthesisParams, Synthesizer

    syn = Synthesizer(bundle, device=next(bundle.texture_unet.parameters()).device)
    params = SynthesisParams(size=tuple(labels.shape), seed=seed)
    table = {}
    for rho in grid:
        gen = torch.Generator().manual_seed(seed)
        img, _, _ = syn.painted(labels, params, gen, rho=float(rho))
        table[float(rho)] = slice_correlation(img, labels)
    best = min(table, key=lambda r: abs(table[r] - real_corr))
    return {
        "rho": best,
        "real_correlation": real_corr,
        "synthetic_correlation": {str(k): v for k, v in table.items()},
        "exemplar_strength": syn.exemplar_strength(labels, params),
    }


def fit_rho(
    bundle: Any, pairs: Sequence[Pair], grid: Sequence[float], side: int, seed: int = 0
) -> dict[str, Any]:
    """The ``texture3d`` record: rho calibrated (:func:`calibrate_rho`) to the mean slice
    correlation of the densely labelled stacks, or a note when there are none."""
    from cellsynth.metrics import slice_correlation

    dense = [p for p in pairs if not p.annotated_slices]
    corrs = [slice_correlation(p.image, p.labels) for p in dense]
    corrs = [c for c in corrs if np.isfinite(c)]
    if not corrs:
        return {"rho": None, "note": "no densely annotated stack: rho not calibrated"}
    stack = _calibration_stack(pairs, side)
    return calibrate_rho(bundle, stack, float(np.mean(corrs)), grid, seed)


def _calibration_stack(pairs: Sequence[Pair], side: int) -> np.ndarray:
    """A real label stack cropped to ``side`` around its most crowded window."""
    lab = max((p.labels for p in pairs), key=lambda a: int(a.max()))
    _, h, w = lab.shape
    if h <= side and w <= side:
        return lab
    fg = (lab > 0).any(axis=0).astype(np.float64)
    from scipy import ndimage

    dens = ndimage.uniform_filter(fg, size=side, mode="constant")
    cy, cx = np.unravel_index(np.argmax(dens), dens.shape)
    y0 = int(np.clip(cy - side // 2, 0, max(h - side, 0)))
    x0 = int(np.clip(cx - side // 2, 0, max(w - side, 0)))
    return lab[:, y0 : y0 + side, x0 : x0 + side]


def learn_3d(
    pairs: Sequence[Pair],
    out: str | Path,
    settings: LearnSettings | None = None,
    settings_3d: Learn3DSettings | None = None,
    *,
    resume: bool = False,
) -> Iterator[Progress]:
    """:func:`learn` on 3D stacks, then the 3D fits above; yields :class:`Progress`."""
    from cellsynth.bundle import GeneratorBundle
    from cellsynth.shapes.multiview import MultiviewModel, train_multiview

    s3 = settings_3d or Learn3DSettings()
    settings = settings or LearnSettings()
    pairs = [p for p in pairs if p.has_labels]
    if not pairs:
        raise CellsynthInputError("no annotated stacks: learning needs images with labels")
    check_3d_pairs(pairs)
    vs = s3.voxel_size or pairs[0].voxel_size
    if vs is None or len(vs) != 3:
        log.warning("the stacks carry no voxel size; assuming cubic voxels (pass --voxel-size)")
        vs = (1.0, 1.0, 1.0)
    vs = tuple(float(v) for v in vs)
    out = Path(out)
    last = None
    for prog in learn(pairs, out, settings, resume=resume):
        if prog.done:
            last = prog
            break
        yield prog
    assert last is not None
    t0 = time.monotonic()

    # 1. shape prior and multiview model
    ratios, n_cut = z_ratios(pairs, vs)
    mv = MultiviewModel.load(None)
    prior = mv.prior
    if len(ratios):
        prior.z_ratio = float(np.clip(np.exp(np.mean(np.log(ratios))), 0.1, 1.6))
        prior.z_ratio_std = float(np.clip(np.std(np.log(ratios)), 0.05, 0.5))
    # the prior frame must hold the tallest cells
    prior.max_z = 0.98
    steps = s3.multiview_steps
    for mp in (
        train_multiview(mv, steps, seed=settings.seed, device=settings.device, lr=5e-4)
        if steps
        else ()
    ):
        yield Progress(
            step=last.step + mp.step,
            mask_step=last.mask_step,
            texture_step=last.texture_step,
            mask_target=last.mask_target,
            texture_target=last.texture_target,
            model="multiview_model",
            loss=mp.loss,
            elapsed=last.elapsed + mp.elapsed,
            fraction=0.9 + 0.09 * mp.step / steps,
        )
    mv.meta = {
        **(mv.meta or {}),
        "refined_on": str(out),
        "z_ratios_measured": len(ratios),
        "cells_cut_by_stack": n_cut,
    }
    with folder_lock(out, "bundle folder"):
        mv.save(out / MULTIVIEW)

    # 2. rho
    from cellsynth.bundle import Calibration3D

    bundle = GeneratorBundle.load(out, device=select_device(settings.device))
    texture3d = fit_rho(bundle, pairs, s3.rho_grid, s3.calibration_side, settings.seed)

    # 3. density and metadata, through the bundle (it owns bundle.json)
    n_cells = sum(count_cells(p.labels) for p in pairs)
    voxels = sum(p.labels.size for p in pairs)
    cal = Calibration3D(
        shape_prior={
            **prior.to_dict(),
            "z_ratios": [round(float(r), 4) for r in ratios],
            "cells_cut_by_stack": n_cut,
            "z_equators": z_equators(pairs, vs),
        },
        texture3d=texture3d if texture3d.get("rho") is not None else None,
        settings_3d={**s3.to_dict(), "voxel_size": list(vs)},
        seconds=round(time.monotonic() - t0, 1),
    )
    bundle.set_calibration_3d(cal, list(vs), n_cells / max(voxels, 1))
    with folder_lock(out, "bundle folder"):
        bundle.save_meta()
    yield Progress(
        step=last.step + steps,
        mask_step=last.mask_step,
        texture_step=last.texture_step,
        mask_target=last.mask_target,
        texture_target=last.texture_target,
        model="",
        loss=float("nan"),
        elapsed=last.elapsed + time.monotonic() - t0,
        fraction=1.0,
        checkpoint=str(out),
        done=True,
    )
