"""Exemplar-guided texture: real training cells, warped onto new masks, as the texture model's
starting point.

The texture model alone paints the coarse structure inside a nucleus (nucleoli, chromatin
patches) as a mottle a classifier tells from real cells at a glance (docs/results.md). Real
training cells hold that structure. A synthetic cell here starts from one of them: the one of
closest area, turned and mirrored at random, warped onto the new mask in polar coordinates
(each ray from the centre keeps its relative position between centre and boundary, so a
nucleolus halfway out stays halfway out) and scaled to the cell's drawn brightness. The image of
these warped cells on the frame's background level is then noised to a fraction ``strength`` of
the diffusion schedule and denoised by the mask-conditioned texture model (SDEdit, Meng et al.
2022): the model repaints the fine grain, the boundaries, the background's haze and the shared
boundaries of touching cells, while the cells keep a real cell's layout. ``strength`` 1 is the
model alone; 0 is the warped exemplars unchanged.

The exemplars are crops of the training images (stage 1's image crops) saved in the bundle as
safetensors (``exemplars.safetensors``): one flat array of pixels and masks and a table of
offsets; nothing is unpickled. Pixels of 8-bit data are kept as they are, others as float16
(exact to 11 bits, within 0.05 % above: far below the texture's own grain); masks as bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cellsynth.errors import CellsynthInputError

N_ANGLES = 72  # boundary radius sampled every 5 degrees
PAD = 6  # px of real surroundings kept around each exemplar cell (its edge profile)
#: the strength at the cells' edges (:func:`strength_map`): measured on GOWT1 (docs/results.md),
#: the texture model repainting the edges at the full strength makes them sharper than real
EDGE_STRENGTH = 0.0
EDGE_WIDTH = 6.0  # px from a cell's boundary over which the strength rises to the full one
KEEP = 3.0  # px outside a warped cell kept whole before its rim fades (edge metrics see 2 px)
FILE = "exemplars.safetensors"
MAX_EXEMPLARS = 2000  # a bundle keeps at most this many (about 8 MB of 16-bit 40 px cells)
#: the strength bundles learnt since December 2026 record: on GOWT1 (docs/results.md) the
#: classifier told real from synthetic crops at 0.54 with 0.3, 0.57 with 0.5, 0.75 with 0.15
#: (the warped cells' own seams show) and 0.79 with the model alone
DEFAULT_STRENGTH = 0.3


@dataclass
class Exemplar:
    """One real cell: its image crop (raw units), its mask, the background level of its frame."""

    image: np.ndarray  # (h, w) float32
    mask: np.ndarray  # (h, w) bool
    background: float
    cell: int = -1  # the 3D cell this cross-section belongs to (stacks); -1: a 2D cell
    z: int = 0  # the cross-section's slice, counted from the cell's first

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def collect(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    min_area: int = 16,
    limit: int = MAX_EXEMPLARS,
) -> list[Exemplar]:
    """The whole cells (not cut by the image border) of training images, with their rims; at
    most ``limit`` of them, an even random subset (seeded: the same data keep the same).

    A 2D image gives one exemplar per cell; a densely labelled 3D stack (Z, Y, X) one per
    cross-section of each cell (``cell`` and ``z`` say which), so that a synthetic stack can
    take a real cell's slices in order (:func:`compose`). A stack's cells are kept or left
    out whole."""
    from cellsynth.texture import measure_brightness

    groups: list[list[Exemplar]] = []
    for img, lab in zip(images, labels, strict=True):
        img = np.asarray(img, np.float32)
        lab = np.asarray(lab)
        if img.ndim not in (2, 3) or lab.shape != img.shape:
            continue
        background, _ = measure_brightness(img, lab)
        if img.ndim == 2:
            groups += [[e] for e in _crops(img, lab, float(background), min_area)]
        else:
            groups += _cells_of_stack(img, lab, float(background), min_area, len(groups))
    if all(len(g) == 1 for g in groups):
        out = [g[0] for g in groups]
        if len(out) > limit:
            keep = np.sort(np.random.default_rng(0).choice(len(out), size=limit, replace=False))
            out = [out[int(k)] for k in keep]
        return out
    kept, total = [], 0
    for k in np.random.default_rng(0).permutation(len(groups)):  # whole cells, up to limit
        if total + len(groups[k]) <= limit:
            kept.append(int(k))
            total += len(groups[k])
    cells = [groups[k] for k in sorted(kept)]
    return [replace(e, cell=e.cell if e.cell < 0 else n) for n, g in enumerate(cells) for e in g]


def _crops(img: np.ndarray, lab: np.ndarray, background: float, min_area: int) -> list[Exemplar]:
    """The cells of a 2D image not cut by its border, each with its rim."""
    from scipy import ndimage

    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        ex = _crop_cell(img, lab, i, sl, background, min_area)
        if ex is not None:
            out.append(ex)
    return out


def _crop_cell(
    img: np.ndarray,
    lab: np.ndarray,
    i: int,
    sl: tuple[slice, ...] | None,
    background: float,
    min_area: int,
) -> Exemplar | None:
    """Cell ``i`` of a 2D image (bounding box ``sl``) with its rim; None if it is absent, cut
    by the border or smaller than ``min_area``."""
    if sl is None:
        return None
    (y0, y1), (x0, x1) = ((s.start, s.stop) for s in sl)
    if y0 == 0 or x0 == 0 or y1 == lab.shape[0] or x1 == lab.shape[1]:
        return None  # cut by the border: its shape is not a cell's
    y0, x0 = max(0, y0 - PAD), max(0, x0 - PAD)
    y1, x1 = min(lab.shape[0], y1 + PAD), min(lab.shape[1], x1 + PAD)
    mask = lab[y0:y1, x0:x1] == i
    if mask.sum() < min_area:
        return None
    return Exemplar(img[y0:y1, x0:x1].copy(), mask, background)


def _cells_of_stack(
    img: np.ndarray, lab: np.ndarray, background: float, min_area: int, first: int
) -> list[list[Exemplar]]:
    """Per cell of a 3D stack not cut by its XY border: its cross-sections, slice by slice."""
    from scipy import ndimage

    boxes = [ndimage.find_objects(sl) for sl in lab]  # per slice, once for all cells
    groups = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        (y0, y1), (x0, x1) = ((s.start, s.stop) for s in sl[1:])
        if y0 == 0 or x0 == 0 or y1 == lab.shape[1] or x1 == lab.shape[2]:
            continue
        cell = first + len(groups)
        sections = []
        for z in range(sl[0].start, sl[0].stop):
            box = boxes[z][i - 1] if i <= len(boxes[z]) else None
            ex = _crop_cell(img[z], lab[z], i, box, background, 1)
            if ex is not None:
                sections.append(replace(ex, cell=cell, z=z - sl[0].start))
        if sections and max(e.area for e in sections) >= min_area:
            groups.append(sections)
    return groups


def save(exemplars: Sequence[Exemplar], path: str | Path) -> None:
    """Write the exemplars as one safetensors file (atomically)."""
    import torch

    from cellsynth.diffusion.training import save_tensors

    shapes = np.asarray([e.image.shape for e in exemplars], np.int64).reshape(-1, 2)
    pixels = np.concatenate([e.image.ravel() for e in exemplars]) if exemplars else np.zeros(0)
    masks = np.concatenate([e.mask.ravel() for e in exemplars]) if exemplars else np.zeros(0)
    whole = np.array_equal(pixels, np.round(pixels))
    small = whole and (pixels.size == 0 or (pixels.min() >= 0 and pixels.max() <= 255))
    tensors = {
        # 8-bit data as it was; anything else as float16
        "pixels": torch.from_numpy(pixels.astype(np.uint8 if small else np.float16)),
        "masks": torch.from_numpy(np.packbits(masks.astype(bool))),
        "shapes": torch.from_numpy(shapes),
        "background": torch.tensor([e.background for e in exemplars], dtype=torch.float32),
    }
    if any(e.cell >= 0 for e in exemplars):  # a stack's cells: which cell, which slice
        tensors["cell"] = torch.tensor([[e.cell, e.z] for e in exemplars], dtype=torch.int64)
    save_tensors(Path(path), tensors)


def load(path: str | Path) -> list[Exemplar]:
    from cellsynth.diffusion.training import load_tensors

    path = Path(path)
    try:
        t = load_tensors(path)
        pixels = t["pixels"].numpy().astype(np.float32)
        shapes, background = t["shapes"].numpy(), t["background"].numpy()
        masks = np.unpackbits(t["masks"].numpy())[: pixels.size].astype(bool)
        cell = t["cell"].numpy() if "cell" in t else np.tile([-1, 0], (len(shapes), 1))
    except Exception as e:  # a truncated or foreign file
        raise CellsynthInputError(f"{path}: not a cellsynth exemplar file ({e})") from None
    sizes = shapes.prod(axis=1) if len(shapes) else np.zeros(0, np.int64)
    if (
        sizes.sum() != pixels.size
        or pixels.size != masks.size
        or len(background) != len(sizes)
        or cell.shape != (len(sizes), 2)
    ):
        raise CellsynthInputError(f"{path}: the exemplar table and its pixels disagree")
    ends = np.cumsum(sizes)
    out = []
    for (h, w), end, n, bg, (c, z) in zip(shapes, ends, sizes, background, cell, strict=True):
        sl = slice(int(end - n), int(end))
        img, mask = pixels[sl].reshape(h, w), masks[sl].reshape(h, w)
        out.append(Exemplar(img, mask, float(bg), int(c), int(z)))
    return out


def _polar(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (y, x) and boundary radius per angle bin of a star-shaped mask."""
    ys, xs = np.nonzero(mask)
    c = np.asarray([ys.mean(), xs.mean()])
    dy, dx = ys - c[0], xs - c[1]
    r = np.hypot(dy, dx) + 0.5  # a pixel reaches half a pixel further than its centre
    b = (np.floor((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * N_ANGLES).astype(int)) % N_ANGLES
    radius = np.zeros(N_ANGLES)
    np.maximum.at(radius, b, r)
    have = radius > 0
    if not have.all():  # thin cells leave angles without pixels: interpolate around the circle
        k = np.arange(N_ANGLES)
        radius = np.interp(k, k[have], radius[have], period=N_ANGLES)
    return c, np.maximum(radius, 1.0)


def _radius_at(radius: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Boundary radius at angles ``theta`` (radians), interpolated between bins."""
    pos = (theta + np.pi) / (2 * np.pi) * N_ANGLES - 0.5
    k = np.arange(N_ANGLES)
    return np.interp(pos, k, radius, period=N_ANGLES)


def warp(
    exemplar: Exemplar, mask: np.ndarray, rng: np.random.Generator, *, keep: float = KEEP
) -> tuple[np.ndarray, np.ndarray]:
    """The exemplar's pixels mapped onto ``mask`` (a crop holding one cell) and the weight of
    each pixel. Inside, each ray keeps its relative position between centre and boundary;
    outside, its distance to the boundary in pixels, so the real edge profile (its blur, its
    halo) keeps its width whatever the cell's size. The weight is 1 inside the cell and up to
    ``keep`` px outside it, then fades to 0 at the exemplar's rim (``PAD`` px)."""
    from scipy import ndimage

    c_t, r_t = _polar(mask)
    c_e, r_e = _polar(exemplar.mask)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]].astype(np.float64)
    dy, dx = yy - c_t[0], xx - c_t[1]
    theta = np.arctan2(dy, dx)
    radius_t = _radius_at(r_t, theta)
    rho = np.hypot(dy, dx) / radius_t
    turn = rng.uniform(-np.pi, np.pi)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    src = np.angle(np.exp(1j * (sign * theta + turn)))
    radius_e = _radius_at(r_e, src)
    beyond = np.maximum(rho - 1.0, 0.0) * radius_t  # px outside the boundary, along the ray
    rs = np.where(rho <= 1.0, rho * radius_e, radius_e + beyond)
    coords = np.stack([c_e[0] + rs * np.sin(src), c_e[1] + rs * np.cos(src)])
    values = ndimage.map_coordinates(exemplar.image, coords, order=1, mode="nearest")
    weight = np.where(mask, 1.0, np.clip((PAD - beyond) / (PAD - keep), 0.0, 1.0))
    return values.astype(np.float32), weight.astype(np.float32)


def choose(exemplars: Sequence[Exemplar], area: float, rng: np.random.Generator, k: int = 5):
    """One of the ``k`` exemplars closest in area (log scale) to ``area``."""
    return exemplars[_choose_index([e.area for e in exemplars], area, rng, k)]


def compose(
    labels: np.ndarray,
    exemplars: Sequence[Exemplar],
    lut: np.ndarray,
    background: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A frame of warped exemplars: each cell of ``labels`` gets one, its contrast over its own
    frame's background scaled so its mean is ``lut[label]``; the rims fade into the
    ``background`` level outside the cells. Raw intensity units, float32.

    For a 3D label stack (Z, Y, X) each slice is composed as a frame. A cell takes a real 3D
    cell's cross-sections in order when the exemplars hold a stack's cells (chosen by largest
    cross-section; its first slice on the synthetic cell's first, its last on its last), so
    its texture changes from slice to slice as a real nucleus's does and dims where a real one
    dims; with 2D exemplars only, one exemplar on every slice. Either way one turn and mirror
    and one brightness scale per cell, whose mean over all its slices is ``lut[label]``."""
    from scipy import ndimage

    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise CellsynthInputError(
            f"exemplar texture needs a 2D label image or a 3D stack, got {lab.shape}"
        )
    if not exemplars:
        raise CellsynthInputError("the bundle holds no exemplar cells")
    if lab.ndim == 2:
        return _compose_frame(lab, exemplars, lut, background, rng)
    cells = _by_cell(exemplars)
    picks: list[dict[int, tuple[Exemplar, int, float]]] = [{} for _ in lab]
    for i, sl3 in enumerate(ndimage.find_objects(lab), start=1):
        if sl3 is None:
            continue
        crops = [(z, *_crop(lab[z], i, sl3[1:])) for z in range(sl3[0].start, sl3[0].stop)]
        crops = [(z, sl, m) for z, sl, m in crops if m.any()]
        largest = max(float(m.sum()) for _, _, m in crops)
        if cells:
            real = cells[_choose_index([max(e.area for e in c) for c in cells], largest, rng)]
            k, n = len(crops), len(real)
            per = [real[round(j * (n - 1) / (k - 1))] for j in range(k)] if k > 1 else None
            per = per or [max(real, key=lambda e: e.area)]
        else:
            per = [choose(exemplars, largest, rng)] * len(crops)
        seed = int(rng.integers(2**32))
        excess = area = 0.0
        for (_, _, mask), ex in zip(crops, per, strict=True):
            values, _ = warp(ex, mask, np.random.default_rng(seed))
            excess += float((values[mask] - ex.background).sum())
            area += float(mask.sum())
        scale = _scale(excess / area, lut, i, background)
        for (z, _, _), ex in zip(crops, per, strict=True):
            picks[z][i] = (ex, seed, scale)
    return np.stack(
        [_compose_frame(sl, exemplars, lut, background, rng, picks[z]) for z, sl in enumerate(lab)]
    )


def _scale(contrast: float, lut: np.ndarray, i: int, background: float) -> float:
    """The factor that brings a warped exemplar's ``contrast`` over its background to cell
    ``i``'s drawn brightness ``lut[i]``; 1 (the exemplar's own) where that is NaN or absent."""
    want = float(lut[i]) if i < len(lut) else np.nan
    ok = contrast > 1e-6 and np.isfinite(want)
    return (want - background) / contrast if ok else 1.0


def _by_cell(exemplars: Sequence[Exemplar]) -> list[list[Exemplar]]:
    """The exemplars of a stack's cells, grouped per cell in slice order (2D ones left out)."""
    cells: dict[int, list[Exemplar]] = {}
    for e in exemplars:
        if e.cell >= 0:
            cells.setdefault(e.cell, []).append(e)
    return [sorted(c, key=lambda e: e.z) for _, c in sorted(cells.items())]


def _choose_index(areas: Sequence[float], area: float, rng: np.random.Generator, k: int = 5):
    """The index of one of the ``k`` ``areas`` closest to ``area`` (log scale)."""
    a = np.log(np.maximum(np.asarray(areas, np.float64), 1.0))
    order = np.argsort(np.abs(a - np.log(max(area, 1.0))))
    return int(order[int(rng.integers(min(k, len(order))))])


def _crop(lab: np.ndarray, i: int, sl: tuple[slice, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
    """The region around cell ``i`` (bounding box ``sl``) with room for its rim, and its mask."""
    grow = PAD + 2
    sl = tuple(
        slice(max(0, s.start - grow), min(n, s.stop + grow))
        for s, n in zip(sl, lab.shape, strict=True)
    )
    return sl, lab[sl] == i


def _compose_frame(
    lab: np.ndarray,
    exemplars: Sequence[Exemplar],
    lut: np.ndarray,
    background: float,
    rng: np.random.Generator,
    picks: dict[int, tuple[Exemplar, int, float]] | None = None,
) -> np.ndarray:
    """:func:`compose` of one 2D frame. ``picks`` (label -> exemplar, seed of its turn,
    brightness scale) fixes each cell's exemplar (a stack's slices); without it each cell
    draws one from ``rng`` and is scaled to ``lut[label]``."""
    from scipy import ndimage

    out = np.full(lab.shape, background, np.float64)
    rim_w = np.zeros(lab.shape, np.float64)
    rim_v = np.zeros(lab.shape, np.float64)
    for i, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        sl, mask = _crop(lab, i, box)
        if picks is None:
            ex = choose(exemplars, float(mask.sum()), rng)
            values, weight = warp(ex, mask, rng)
            # its contrast as warped onto this mask
            scale = _scale(float(values[mask].mean()) - ex.background, lut, i, background)
        else:
            ex, seed, scale = picks[i]
            values, weight = warp(ex, mask, np.random.default_rng(seed))
        values = background + (values - ex.background) * scale
        out[sl][mask] = values[mask]
        free = lab[sl] == 0
        # where two cells' rims overlap, the nearer (heavier) one wins
        better = free & (weight > rim_w[sl])
        rim_w[sl][better] = weight[better]
        rim_v[sl][better] = values[better]
    bg = lab == 0
    out[bg] = background + rim_w[bg] * (rim_v[bg] - background)
    return out.astype(np.float32)


def strength_map(
    labels: np.ndarray, strength: float, edge: float = EDGE_STRENGTH, width: float = EDGE_WIDTH
) -> np.ndarray:
    """Per-pixel strength for the texture model's repaint (:func:`cellsynth.diffusion.core.
    ddim_sample`): ``edge`` on the cells' boundaries (both sides, and between touching cells),
    rising to ``strength`` over ``width`` px. The warped exemplars carry the real cells' edge
    profile; repainted at the full strength the model makes them sharper than real."""
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    lab = np.asarray(labels)
    if lab.ndim == 3:  # a stack is painted slice by slice: each slice's own boundaries
        return np.stack([strength_map(sl, strength, edge, width) for sl in lab])
    edge = min(float(edge), float(strength))
    bound = find_boundaries(lab, mode="inner") | find_boundaries(lab, mode="outer")
    if not bound.any():
        return np.full(lab.shape, float(strength), np.float32)
    d = ndimage.distance_transform_edt(~bound)
    ramp = np.clip(d / max(width, 1e-6), 0.0, 1.0)
    return (edge + (float(strength) - edge) * ramp).astype(np.float32)
