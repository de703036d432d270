"""Stage 4: place single cells on a canvas to make a population (2D or 3D).

Cells go to free positions without overlap (a gap of ``gap`` pixels keeps instances separate).
With clustering probability ``p`` the next cell is placed in a band next to a cell already
placed — at the distance where the two would touch (ellipsoidal radii of both along the chosen
direction), plus up to ``band`` of the new cell's radius — otherwise uniformly on the canvas
(Svoboda & Ulman, ICIAP 2013, as used in paper 001). Neighbours are sought only along axes with
room for the cell (beside the others in a stack thinner than the cells), and a cell that finds
no room next to the others in half its tries is placed anywhere.
Cells may be cut by the canvas border, as in real images. Works for any number of dimensions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cellsynth.errors import CellsynthInputError
from cellsynth.metrics.morphology import border_labels

log = logging.getLogger(__name__)


@dataclass
class Population:
    labels: np.ndarray  # uint16 (uint32 beyond 65 535 cells)
    table: dict[str, np.ndarray] = field(default_factory=dict)
    requested: int = 0

    @property
    def n_cells(self) -> int:
        return len(self.table.get("label", []))


def label_dtype(n: int) -> np.dtype:
    return np.dtype(np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32)


#: the clustering of bundles that do not record their training frames' (``cells.cluster_prob``,
#: ``cells.cluster_band``; fitted by :func:`fit_clustering` since December 2026)
DEFAULT_CLUSTER_PROB = 0.3
DEFAULT_CLUSTER_BAND = 0.5
#: the grid :func:`fit_clustering` searches: probabilities, and bands in cell radii
CLUSTER_PROBS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0)
CLUSTER_BANDS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)

#: the smallest part of a cell cut by the canvas edge that is drawn, unless a bundle records the
#: training images' own (``cells.min_cut_area``); the atlas' smallest cell
MIN_CUT_PIXELS = 9


def place_cells(
    masks: Sequence[np.ndarray],
    shape: Sequence[int],
    *,
    cluster_prob: float = 0.0,
    rng: np.random.Generator,
    gap: int = 1,
    band: float = 0.5,
    max_tries: int = 60,
    min_inside: float = 0.5,
    touch_prob: float = 0.0,
    edge_cut: float | None = None,
    min_pixels: int = MIN_CUT_PIXELS,
    z_centres: np.ndarray | None = None,
    pairs: Sequence[tuple[int, int]] = (),
) -> Population:
    """Place ``masks`` (boolean arrays of the canvas' dimensionality) on a canvas of ``shape``.

    With probability ``touch_prob`` a cell is put in contact with a cell already placed
    (preferably one that touches no other yet): it slides towards it along a random direction
    until the next pixel step would overlap, so the two labels meet without a gap, as touching
    nuclei do in real images. Other cells keep ``gap`` pixels from everything.

    A cell keeps ``min_inside`` of its pixels on the canvas. With ``edge_cut`` (2D) the canvas is
    a field of view cut out of a larger sample, as a microscope image is: with probability
    ``edge_cut`` a cell is centred anywhere on the canvas grown by half a cell on each side and
    kept when ``min_pixels`` of it are inside, otherwise it lies wholly inside the canvas. 1 cuts
    cells at the border as often as a field of view does (the built-in images: 36 % of the cells
    touch the border; placement with ``min_inside`` 0.5: 23 %); data whose annotated frames hold
    few cut cells (GOWT1: 1 %) ask for less (:func:`edge_cut_probability`).

    With ``z_centres`` (3D; slices) a cell placed on its own has its centre at one of these
    heights, give or take half a slice, instead of anywhere in the stack: the heights at which
    the training cells are widest (adherent cells sit on the coverslip); clustered and
    touching cells take their partner's height.

    ``pairs`` are sisters, ``(i, j)`` indices of ``masks`` (:func:`divide`): ``j`` is placed
    right after ``i``, touching it (``max_tries`` contacts are tried), else like any other cell.
    The table's ``sister`` column holds each cell's sister's label when the two touch, else 0.
    """
    from scipy import ndimage

    shape = tuple(int(s) for s in shape)
    if not 0.0 <= cluster_prob <= 1.0:
        raise CellsynthInputError(f"clustering probability must be in [0, 1], got {cluster_prob}")
    if not 0.0 <= touch_prob <= 1.0:
        raise CellsynthInputError(f"touching probability must be in [0, 1], got {touch_prob}")
    if any(s < 4 for s in shape):
        raise CellsynthInputError(f"canvas {shape} is too small (each side must be >= 4)")
    nd = len(shape)
    labels = np.zeros(shape, label_dtype(len(masks)))
    occupied = np.zeros(shape, bool)
    centres: list[np.ndarray] = []
    halves: list[np.ndarray] = []
    shown: list[bool] = []  # at least half of the cell is on the canvas
    rows: dict[str, list] = {"label": [], "clustered": [], "touching": [], "sister": [], "area": []}
    placed_as: dict[int, int] = {}  # mask index -> label
    for a in "zyx"[-nd:]:
        rows[f"centroid_{a}"] = []
    struct = ndimage.generate_binary_structure(nd, 1)
    if edge_cut is not None and nd != 2:
        raise CellsynthInputError("edge_cut places cells on 2D canvases only")
    if edge_cut is not None and not 0.0 <= edge_cut <= 1.0:
        raise CellsynthInputError(f"edge cut probability must be in [0, 1], got {edge_cut}")

    def _add(i, m, grown, half, centre, corner, *, clustered=False, touch=False, sister=0):
        lab = len(rows["label"]) + 1
        placed_as[i] = lab
        area = _paste(labels, m, corner, lab)
        _paste(occupied, grown, corner - gap, True)
        centres.append(centre)
        halves.append(half)
        shown.append(2 * area >= int(m.sum()))
        rows["label"].append(lab)
        rows["clustered"].append(clustered)
        rows["touching"].append(touch)
        rows["sister"].append(sister)
        rows["area"].append(area)
        for a, c in zip("zyx"[-nd:], centre, strict=True):
            rows[f"centroid_{a}"].append(float(c))

    # big cells first: they are the hardest to fit; a second sister right after the first
    second = {int(j): int(i) for i, j in pairs}
    after = {i: j for j, i in second.items()}
    if len(second) != len(pairs) or set(second) & set(after):
        raise CellsynthInputError(f"sister pairs must not share a cell: {list(pairs)}")
    if any(not 0 <= k < len(masks) for k in (*second, *after)):
        raise CellsynthInputError(f"sister pairs name cells beyond the {len(masks)} masks")
    order = []
    for i in sorted(
        (k for k in range(len(masks)) if k not in second),
        key=lambda k: -int(np.count_nonzero(masks[k])),
    ):
        order += [i, after[i]] if i in after else [i]
    for i in order:
        m = np.asarray(masks[i], bool)
        if m.ndim != nd:
            raise CellsynthInputError(f"cell mask has {m.ndim} dimensions, canvas has {nd}")
        half = np.array(m.shape) / 2.0
        grown = ndimage.binary_dilation(np.pad(m, gap), struct, iterations=gap) if gap else m
        sister = placed_as.get(second.get(i, -1), 0)  # its sister's label, once placed
        touch = sister > 0 or (bool(centres) and touch_prob > 0 and rng.random() < touch_prob)
        # a field of view: this cell may overhang the edge (else it lies wholly inside)
        inside = min_inside
        overhang = False
        if edge_cut is not None:
            overhang = bool(rng.random() < edge_cut)
            inside = 0.0 if overhang else 1.0
        clustered = bool(centres) and not touch and rng.random() < cluster_prob
        # neighbours are sought along the axes where the canvas has room for the cell (in a
        # stack thinner than the cells, beside them, not above)
        free_axes = np.array([n > s for n, s in zip(shape, m.shape, strict=True)], float)
        if not free_axes.any():
            free_axes[:] = 1.0
        contact = None
        if touch:
            # a partner mostly beyond the canvas edge leaves little room for a contact on it
            lonely = [j for j, t in enumerate(rows["touching"]) if not t and shown[j]]
            contact = _contact(
                labels,
                m,
                centres,
                halves,
                [sister - 1] if sister else (lonely or range(len(centres))),
                free_axes,
                rng,
                max_tries if sister else max_tries // 2,
                inside,
                min_pixels,
            )
        if contact is not None:
            centre, partner = contact
            corner = np.rint(centre - half).astype(int)
            rows["touching"][partner] = True
            if sister:
                rows["sister"][partner] = len(rows["label"]) + 1
            _add(i, m, grown, half, centre, corner, touch=True, sister=sister)
            continue
        for attempt in range(max_tries):
            if clustered and attempt >= max_tries // 2:
                clustered = False  # no room next to the others: place it anywhere
            if clustered:
                j = rng.integers(len(centres))
                d = rng.normal(size=nd) * free_axes
                d /= np.linalg.norm(d) + 1e-12
                # ellipsoidal radii of both cells along d, so flat or long cells touch too
                r_new = 1.0 / np.sqrt(np.sum((d / half) ** 2))
                r_old = 1.0 / np.sqrt(np.sum((d / halves[j]) ** 2))
                dist = r_old + r_new + gap + rng.uniform(0, band * r_new)
                centre = centres[j] + d * dist
            else:
                # centres over the canvas; grown by half the cell (overhang) or shrunk by it
                # (wholly inside, where the cell fits) in a field of view
                lo = np.zeros(nd)
                if edge_cut is not None:
                    fits = free_axes > 0
                    lo = np.where(fits, -half if overhang else half, 0.0)
                centre = lo + rng.uniform(0, 1, nd) * (np.array(shape) - 2 * lo)
                if z_centres is not None and nd == 3 and len(z_centres):
                    centre[0] = float(rng.choice(z_centres)) + rng.uniform(-0.5, 0.5)
            corner = np.rint(centre - half).astype(int)
            if _fits(occupied, grown, corner - gap, m, corner, inside, min_pixels):
                _add(i, m, grown, half, centre, corner, clustered=clustered)
                break
    placed = len(rows["label"])
    if placed < len(masks):
        log.info("placed %s of %s cells (canvas full)", placed, len(masks))
    table = {k: np.asarray(v) for k, v in rows.items()}
    return Population(labels=labels, table=table, requested=len(masks))


#: a daughter nucleus' area relative to its mother's: half the volume, as a sphere's section
DAUGHTER_AREA = 0.5 ** (2 / 3)


def divide(
    masks: Sequence[np.ndarray], fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Turn a ``fraction`` of the cells into daughters of a recent division: pairs of sisters,
    each pair in place of two of ``masks`` (so as many cells as before).

    A mother (a 2D mask) is shrunk to :data:`DAUGHTER_AREA` of its area (half its volume) and
    its two daughters are that mask and the mask turned by 180 degrees: mirror images facing
    each other across the division plane whichever way :func:`place_cells` puts them together.
    Returns the masks and the ``(i, j)`` sister pairs for :func:`place_cells`' ``pairs``. No
    random numbers are drawn for ``fraction`` 0, so other draws stay as they were.
    """
    from skimage.transform import rescale

    if not 0.0 <= fraction <= 1.0:
        raise CellsynthInputError(f"division fraction must be in [0, 1], got {fraction}")
    out = [np.asarray(m, bool) for m in masks]
    n_pairs = int(rng.binomial(len(out) // 2, fraction)) if fraction > 0 and len(out) > 1 else 0
    if n_pairs == 0:
        return out, []
    chosen = rng.choice(len(out), size=2 * n_pairs, replace=False)
    pairs = []
    for i, j in chosen.reshape(-1, 2):
        mother = out[i]
        if mother.ndim != 2:
            raise CellsynthInputError(f"cells divide as 2D masks, got {mother.ndim}D")
        d = rescale(mother.astype(np.float32), np.sqrt(DAUGHTER_AREA), order=1) > 0.5
        if not d.any():  # a mother of a few pixels: a one-pixel daughter
            d = np.ones((1, 1), bool)
        ys, xs = np.nonzero(d)
        d = d[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        out[i], out[j] = d, d[::-1, ::-1].copy()
        pairs.append((int(i), int(j)))
    return out, pairs


def _contact(labels, m, centres, halves, partners, free_axes, rng, tries, min_inside, min_pixels):
    """A centre where ``m`` meets a placed cell without overlapping any: along a random
    direction from a random partner, start just beyond both cells' radii and step half a pixel
    closer until the next would overlap; the two must meet on the canvas (a contact beyond its
    edge would show two apart cells). (centre, partner index) or None."""
    from scipy import ndimage

    nd = labels.ndim
    half = np.array(m.shape) / 2.0
    partners = list(partners)
    ring = ndimage.binary_dilation(np.pad(m, 1))  # m grown by one pixel, at corner - 1
    for _ in range(tries):
        j = partners[rng.integers(len(partners))]
        d = rng.normal(size=nd) * free_axes
        d /= np.linalg.norm(d) + 1e-12
        r_new = 1.0 / np.sqrt(np.sum((d / half) ** 2))
        r_old = 1.0 / np.sqrt(np.sum((d / halves[j]) ** 2))
        last = None
        for dist in np.arange(r_old + r_new + 2.0, 0.0, -0.5):
            centre = centres[j] + d * dist
            corner = np.rint(centre - half).astype(int)
            w = _window(labels.shape, corner, m.shape)
            if w is None or m[w[1]].sum() < _needed(m, min_inside, min_pixels):
                break
            if np.any((labels[w[0]] > 0) & m[w[1]]):
                break
            last = centre
        else:
            last = None  # slid through without meeting anything (an empty partner crop)
        if last is not None and dist < r_old + r_new + 2.0:
            corner = np.rint(last - half).astype(int) - 1
            w = _window(labels.shape, corner, ring.shape)
            if w is not None and np.any((labels[w[0]] == j + 1) & ring[w[1]]):
                return last, j
    return None


def _window(shape: tuple[int, ...], corner: np.ndarray, size: tuple[int, ...]):
    """Slices of the canvas and of the patch for a patch whose first pixel is at ``corner``."""
    canvas, patch = [], []
    for c, s, n in zip(corner, size, shape, strict=True):
        a, b = max(c, 0), min(c + s, n)
        if a >= b:
            return None
        canvas.append(slice(a, b))
        patch.append(slice(a - c, b - c))
    return tuple(canvas), tuple(patch)


def _needed(m: np.ndarray, min_inside: float, min_pixels: int, cap: float = 1.0) -> float:
    """Pixels of ``m`` that must lie on the canvas."""
    total = int(m.sum())
    return max(min(min_pixels, total), min_inside * cap * total)


def _fits(occupied, grown, gcorner, m, corner, min_inside, min_pixels) -> bool:
    w = _window(occupied.shape, corner, m.shape)
    if w is None:
        return False
    _, pw = w
    # a cell larger than the canvas along some axis (a tall cell in a thin stack) can at most
    # show the canvas' share of it there; ask for min_inside of what can fit
    cap = float(np.prod([min(1.0, n / s) for n, s in zip(occupied.shape, m.shape, strict=True)]))
    if m[pw].sum() < _needed(m, min_inside, min_pixels, cap):
        return False
    wg = _window(occupied.shape, gcorner, grown.shape)
    if wg is None:
        return False
    cw, pw = wg
    return not np.any(occupied[cw] & grown[pw])


def _paste(canvas: np.ndarray, patch: np.ndarray, corner: np.ndarray, value) -> int:
    w = _window(canvas.shape, corner, patch.shape)
    if w is None:
        return 0
    cw, pw = w
    canvas[cw][patch[pw]] = value
    return int(patch[pw].sum())


def edge_cut_probability(
    cut_fraction: float,
    frame_shape: Sequence[int],
    diameters: Sequence[float],
    density: float,
    min_pixels: int = MIN_CUT_PIXELS,
    frames: int = 8,
) -> float:
    """The ``edge_cut`` of :func:`place_cells` under which synthetic frames show a data set's
    fraction of cells cut by the image border: that fraction over the one a field of view shows,
    measured by placing disks of the data's cell diameters (drawn from ``diameters``) at its
    density on frames of its size with ``edge_cut`` 1 (1 when the data show as many cut cells as
    a field of view or more)."""
    h, w = (int(v) for v in frame_shape[-2:])
    diameters = np.asarray(diameters, np.float64)
    diameters = diameters[np.isfinite(diameters) & (diameters > 0)]
    if diameters.size == 0:
        return 1.0
    n = max(1, round(density * h * w))
    rng = np.random.default_rng(0)
    cut = total = 0
    for _ in range(frames):
        disks = []
        for d in rng.choice(diameters, size=n):
            r = max(d / 2.0, 1.0)
            y, x = np.mgrid[-int(r) : int(r) + 1, -int(r) : int(r) + 1]
            disks.append(x * x + y * y <= r * r)
        lab = place_cells(disks, (h, w), rng=rng, edge_cut=1.0, min_pixels=min_pixels).labels
        cut += len(border_labels(lab))
        total += int(lab.max())
    field_of_view = cut / max(total, 1)
    return float(np.clip(cut_fraction / field_of_view, 0.0, 1.0)) if field_of_view > 0 else 1.0


def fit_clustering(
    label_images: Sequence[np.ndarray],
    *,
    touch_prob: float = 0.0,
    edge_cut: float | None = 1.0,
    min_pixels: int = MIN_CUT_PIXELS,
    probs: Sequence[float] = CLUSTER_PROBS,
    bands: Sequence[float] = CLUSTER_BANDS,
    min_cells: int = 400,
    max_repeats: int = 8,
    seed: int = 0,
) -> dict[str, float] | None:
    """The ``cluster_prob`` and ``band`` of :func:`place_cells` under which placed cells lie as
    far from their nearest neighbour (over their own diameter) as the cells of the 2D training
    ``label_images`` do: each pair of the grid places the training frames' own whole cells, as
    many as each frame holds, on canvases of its size (repeated until ``min_cells`` are placed,
    at most ``max_repeats`` times; the same random draws for every pair), and the pair whose
    nearest-neighbour ratios are the
    closest to the real ones (Wasserstein-1 over the real ratios' standard deviation) wins.

    Clustered cells start a colony next to a cell already placed, up to ``band`` radii beyond
    contact; the others fall anywhere, so 0 clustering gives a Poisson layout whose isolated
    cells lie far apart, while real frames — colonies of dividing cells — hold few such cells
    (HeLa's training frames: 95 % of the cells within 2.4 diameters of another; placement with
    0.3 and 0.5 left a quarter beyond 2.3). Returns ``cluster_prob``, ``cluster_band`` and the
    fitted ``nn_ratio_w1`` (and at 0.3, 0.5: ``nn_ratio_w1_default``), or None with fewer than
    three whole cells or nearest-neighbour distances to fit."""
    from scipy.stats import wasserstein_distance

    from cellsynth.metrics.morphology import layout_table

    frames = [np.asarray(lab) for lab in label_images if np.asarray(lab).ndim == 2]
    real = [layout_table(lab)["nn_ratio"] for lab in frames]
    ratios = np.concatenate(real) if real else np.zeros(0)
    ratios = ratios[np.isfinite(ratios)]
    masks = [m for lab in frames for m in _whole_cells(lab)]
    if len(masks) < 3 or ratios.size < 3 or not ratios.std() > 0:
        return None
    counts = [len(np.unique(lab[lab > 0])) for lab in frames]
    repeats = min(max_repeats, max(1, -(-min_cells // max(sum(counts), 1))))

    def w1(prob: float, band: float) -> float:
        rng = np.random.default_rng(seed)
        sims = []
        for _ in range(repeats):
            for lab, n in zip(frames, counts, strict=True):
                if n < 2:
                    continue
                drawn = [masks[i] for i in rng.integers(len(masks), size=n)]
                pop = place_cells(
                    drawn,
                    lab.shape,
                    cluster_prob=prob,
                    band=band,
                    rng=rng,
                    touch_prob=touch_prob,
                    edge_cut=edge_cut,
                    min_pixels=min_pixels,
                )
                sims.append(layout_table(pop.labels)["nn_ratio"])
        sim = np.concatenate(sims) if sims else np.zeros(0)
        sim = sim[np.isfinite(sim)]
        return float(wasserstein_distance(sim, ratios) / ratios.std()) if sim.size else np.inf

    scores = {(p, b): w1(p, b) for p in probs for b in bands}
    (prob, band), best = min(scores.items(), key=lambda kv: kv[1])
    out = {"cluster_prob": float(prob), "cluster_band": float(band), "nn_ratio_w1": best}
    default = (DEFAULT_CLUSTER_PROB, DEFAULT_CLUSTER_BAND)
    out["nn_ratio_w1_default"] = scores[default] if default in scores else w1(*default)
    return out


def _whole_cells(labels: np.ndarray) -> list[np.ndarray]:
    """The masks (bounding-box crops) of the cells the image border does not cut."""
    from scipy import ndimage

    cut = set(border_labels(labels).tolist())
    boxes = ndimage.find_objects(labels)
    return [
        labels[box] == i + 1 for i, box in enumerate(boxes) if box is not None and i + 1 not in cut
    ]


def cells_for_canvas(density: float, shape: Sequence[int], rng: np.random.Generator) -> int:
    """A cell count for a canvas from the atlas' density (cells per pixel), Poisson-drawn."""
    area = float(np.prod(shape))
    return max(1, int(rng.poisson(density * area)))


def touch_prob(fraction: float) -> float:
    """The ``touch_prob`` of :func:`place_cells` that makes about ``fraction`` of the cells touch
    another: each contact joins a new cell to one that touched none, so it adds two."""
    return float(np.clip(fraction / 2.0, 0.0, 1.0))
