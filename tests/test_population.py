"""Population synthesis: no overlaps, separate cells, clustering, big canvases, 3D."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cellsynth.errors import CellsynthInputError
from cellsynth.population import label_dtype, place_cells


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def _nn_distance(table) -> float:
    c = np.stack([table["centroid_y"], table["centroid_x"]], 1)
    d = np.linalg.norm(c[:, None] - c[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(d.min(1).mean())


def test_cells_never_overlap_or_touch():
    rng = np.random.default_rng(0)
    masks = [_disk(int(r)) for r in rng.integers(4, 9, 40)]
    pop = place_cells(masks, (200, 200), cluster_prob=0.5, rng=rng)
    lab = pop.labels
    assert pop.n_cells > 30
    for i in range(1, pop.n_cells + 1):
        cell = lab == i
        assert ndimage.label(cell)[1] == 1  # one connected component
        ring = ndimage.binary_dilation(cell) & ~cell
        assert set(np.unique(lab[ring])) <= {0}  # no other cell touches it


def test_labels_are_unsigned_integers_numbered_from_one():
    rng = np.random.default_rng(1)
    pop = place_cells([_disk(5)] * 10, (128, 128), rng=rng)
    assert pop.labels.dtype == np.uint16
    assert set(np.unique(pop.labels)) == set(range(pop.n_cells + 1))


def test_label_dtype_grows_to_uint32_beyond_65535_cells():
    assert label_dtype(65_535) == np.uint16
    assert label_dtype(65_536) == np.uint32


def test_thousands_of_cells_on_a_large_canvas():
    rng = np.random.default_rng(2)
    pop = place_cells([_disk(3)] * 3000, (1024, 1024), rng=rng, cluster_prob=0.3)
    assert pop.n_cells == 3000
    assert pop.labels.max() == 3000


def test_clustering_probability_brings_cells_together():
    masks = [_disk(5)] * 40
    spread = place_cells(masks, (400, 400), cluster_prob=0.0, rng=np.random.default_rng(3))
    clustered = place_cells(masks, (400, 400), cluster_prob=0.95, rng=np.random.default_rng(3))
    assert _nn_distance(clustered.table) < 0.6 * _nn_distance(spread.table)
    assert clustered.table["clustered"].sum() > 30
    assert spread.table["clustered"].sum() == 0


def test_same_seed_same_population():
    masks = [_disk(4)] * 15
    a = place_cells(masks, (96, 96), cluster_prob=0.5, rng=np.random.default_rng(7))
    b = place_cells(masks, (96, 96), cluster_prob=0.5, rng=np.random.default_rng(7))
    assert np.array_equal(a.labels, b.labels)


def test_3d_volumes_are_placed_without_overlap():
    z, y, x = np.mgrid[-3:4, -5:6, -5:6]
    ball = (z / 3) ** 2 + (y / 5) ** 2 + (x / 5) ** 2 <= 1
    pop = place_cells([ball] * 12, (16, 64, 64), rng=np.random.default_rng(0))
    assert pop.labels.ndim == 3
    assert pop.n_cells >= 8
    sizes = np.bincount(pop.labels.ravel())[1:]
    assert sizes.min() >= 0.5 * ball.sum()  # at least half of every cell inside the canvas


def test_bad_cluster_probability_is_refused():
    with pytest.raises(CellsynthInputError, match="clustering probability"):
        place_cells([_disk(3)], (32, 32), cluster_prob=1.5, rng=np.random.default_rng(0))


def test_cells_taller_than_a_thin_stack_are_still_placed():
    ball = np.ones((20, 12, 12), bool)  # 20 slices tall, the stack has 5
    pop = place_cells([ball] * 3, (5, 64, 64), rng=np.random.default_rng(0))
    assert pop.n_cells == 3
    for i in (1, 2, 3):
        assert (pop.labels == i).any(axis=(1, 2)).sum() == 5


def test_z_centres_put_the_cells_widest_slice_at_the_given_heights():
    """Adherent cells sit on the coverslip: a stack's cells are widest near its first slices."""
    z, y, x = np.mgrid[-4:5, -6:7, -6:7]
    ball = (z / 4) ** 2 + (y / 6) ** 2 + (x / 6) ** 2 <= 1
    free = place_cells([ball] * 10, (12, 96, 96), rng=np.random.default_rng(0))
    low = place_cells(
        [ball] * 10,
        (12, 96, 96),
        rng=np.random.default_rng(0),
        z_centres=np.array([1.5]),
        min_inside=0.25,
    )

    def widest(pop):
        areas = [(pop.labels == i).sum(axis=(1, 2)) for i in range(1, pop.n_cells + 1)]
        return np.array([int(np.argmax(a)) for a in areas])

    assert low.n_cells == 10
    assert widest(low).max() <= 2  # on the coverslip, half of each below the first slice
    assert widest(free).max() > 4  # anywhere in the stack without them


def _touching_fraction(labels) -> float:
    from cellsynth.metrics import layout_table

    return float(layout_table(labels)["touching"].mean())


def test_touching_cells_meet_without_gap_or_overlap():
    rng = np.random.default_rng(0)
    masks = [_disk(int(r)) for r in rng.integers(5, 9, 30)]
    pop = place_cells(masks, (256, 256), touch_prob=1.0, rng=rng)
    lab = pop.labels
    assert pop.n_cells == 30
    for i in range(1, pop.n_cells + 1):
        assert ndimage.label(lab == i)[1] == 1  # nothing was pasted over another cell
    # every cell meets another: its 8-connected ring holds another label
    ring = np.ones((3, 3), bool)
    met = [
        bool(set(np.unique(lab[ndimage.binary_dilation(lab == i, ring)])) - {0, i})
        for i in range(1, pop.n_cells + 1)
    ]
    assert np.mean(met) > 0.9
    assert _touching_fraction(lab) == 1.0
    assert pop.table["touching"].sum() >= pop.n_cells - 1


def test_with_edge_cut_touching_cells_meet_on_the_canvas():
    """A contact beyond the canvas edge would show two apart cells marked as touching (it
    happened to 2 of 198 cells here before contacts were checked on the canvas)."""
    ring = np.ones((3, 3), bool)
    marked = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        masks = [_disk(int(r)) for r in rng.integers(8, 14, 10)]
        pop = place_cells(masks, (64, 64), touch_prob=1.0, rng=rng, edge_cut=1.0)
        lab = pop.labels
        for i in np.flatnonzero(pop.table["touching"]) + 1:
            others = set(np.unique(lab[ndimage.binary_dilation(lab == i, ring)])) - {0, int(i)}
            assert others, f"seed {seed}: cell {i} is marked touching but meets no cell"
            marked += 1
    assert marked > 150


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_touch_prob_for_a_fraction_reproduces_it(fraction):
    from cellsynth.population import touch_prob

    rng = np.random.default_rng(3)
    got = []
    for _ in range(4):
        masks = [_disk(int(r)) for r in rng.integers(5, 9, 40)]
        got.append(
            _touching_fraction(
                place_cells(masks, (300, 300), touch_prob=touch_prob(fraction), rng=rng).labels
            )
        )
    assert abs(np.mean(got) - fraction) < 0.08


def test_without_touching_no_cell_is_within_two_pixels():
    rng = np.random.default_rng(2)
    masks = [_disk(int(r)) for r in rng.integers(5, 9, 40)]
    pop = place_cells(masks, (256, 256), cluster_prob=1.0, rng=rng)
    assert _touching_fraction(pop.labels) == 0.0


def test_bad_touching_probability_is_refused():
    with pytest.raises(CellsynthInputError, match="touching"):
        place_cells([_disk(4)], (64, 64), touch_prob=1.5, rng=np.random.default_rng(0))


@pytest.mark.parametrize(
    ("field", "value"), [("density_factor", 0.0), ("density_factor", -2.0), ("touching", 1.5)]
)
def test_bad_density_factor_or_touching_fraction_is_refused(field, value):
    from cellsynth.synthesize import SynthesisParams

    with pytest.raises(CellsynthInputError, match=field.replace("_", "-")):
        SynthesisParams(**{field: value}).validate()


def _border_share(pop) -> tuple[float, list[int]]:
    lab = pop.labels
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    edge = edge[edge > 0]
    sizes = np.bincount(lab.ravel())
    return len(edge) / pop.n_cells, [int(sizes[i]) for i in edge]


def test_edge_cut_places_cells_across_the_border_as_a_field_of_view_does():
    """A canvas cut from a larger sample: cells of the same sizes, centred anywhere, show
    more cut cells and smaller slivers than placement that keeps half of each cell inside."""
    masks = [_disk(10)] * 12
    shares: dict[bool, list[float]] = {False: [], True: []}
    sizes: dict[bool, list[int]] = {False: [], True: []}
    for seed in range(24):
        for edge_cut in (False, True):
            rng = np.random.default_rng(seed)
            pop = place_cells(masks, (200, 200), rng=rng, edge_cut=1.0 if edge_cut else None)
            assert pop.n_cells == 12
            share, cut_sizes = _border_share(pop)
            shares[edge_cut].append(share)
            sizes[edge_cut] += cut_sizes
            for i in range(1, pop.n_cells + 1):
                assert ndimage.label(pop.labels == i)[1] == 1
    # expected share of cells reaching the border: 1 - (180/200)^2 = 0.19 vs 1 - (180/220)^2 = 0.33
    assert np.mean(shares[True]) > 1.4 * np.mean(shares[False])
    assert min(sizes[True]) < 0.5 * _disk(10).sum() <= min(sizes[False])
    assert min(sizes[True]) >= 9  # min_pixels: no speck of a cell


def test_edge_cut_is_for_2d_canvases():
    with pytest.raises(CellsynthInputError, match="2D"):
        place_cells(
            [np.ones((3, 9, 9), bool)], (8, 64, 64), rng=np.random.default_rng(2), edge_cut=1.0
        )


def test_edge_cut_zero_keeps_every_cell_wholly_inside_and_refuses_bad_values():
    masks = [_disk(10)] * 12
    for seed in range(4):
        pop = place_cells(masks, (160, 160), rng=np.random.default_rng(seed), edge_cut=0.0)
        assert pop.n_cells == 12
        assert np.all(pop.table["area"] == _disk(10).sum())  # no cell is cut
    with pytest.raises(CellsynthInputError, match="edge cut"):
        place_cells(masks, (160, 160), rng=np.random.default_rng(0), edge_cut=1.5)


def test_edge_cut_probability_matches_the_datas_share_of_cut_cells():
    from cellsynth.population import edge_cut_probability

    diameters = [20.0] * 50
    density = 12 / 160**2
    assert edge_cut_probability(0.0, (160, 160), diameters, density) == 0.0
    assert edge_cut_probability(0.9, (160, 160), diameters, density) == 1.0  # a field of view
    half = edge_cut_probability(0.13, (160, 160), diameters, density)
    assert 0.3 < half < 0.8
    # synthetic frames placed with it show about the data's share of cut cells
    cut = total = 0
    for seed in range(30):
        pop = place_cells(
            [_disk(10)] * 12, (160, 160), rng=np.random.default_rng(seed), edge_cut=half
        )
        _share, sizes = _border_share(pop)
        cut += len(sizes)
        total += pop.n_cells
    assert abs(cut / total - 0.13) < 0.05


def _frames(cluster_prob: float, band: float, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    masks = [_disk(int(r)) for r in rng.integers(5, 8, 60)]
    return [
        place_cells(masks, (256, 256), cluster_prob=cluster_prob, band=band, rng=rng).labels
        for _ in range(n)
    ]


@pytest.mark.parametrize(("prob", "band"), [(1.0, 3.0), (0.0, 0.5)])
def test_fit_clustering_recovers_how_frames_were_laid_out(prob, band):
    """Frames of colonies fit a high clustering, Poisson frames a low one; either fit lies
    closer to the frames' nearest-neighbour ratios than the old default (0.3, 0.5)."""
    from cellsynth.population import fit_clustering

    fit = fit_clustering(_frames(prob, band), probs=(0.0, 0.3, 0.6, 1.0), bands=(0.5, 3.0))
    assert abs(fit["cluster_prob"] - prob) <= 0.4
    assert fit["nn_ratio_w1"] <= fit["nn_ratio_w1_default"]
    if prob == 1.0:
        assert fit["cluster_band"] == band and fit["nn_ratio_w1_default"] > 2 * fit["nn_ratio_w1"]


def test_fit_clustering_needs_cells_to_fit():
    from cellsynth.population import fit_clustering

    assert fit_clustering([np.zeros((64, 64), np.uint16)]) is None
    two = np.zeros((64, 64), np.uint16)
    two[10:20, 10:20], two[40:50, 40:50] = 1, 2
    assert fit_clustering([two]) is None  # two whole cells, two distances


def _ellipse(a: int, b: int) -> np.ndarray:
    y, x = np.mgrid[-a : a + 1, -b : b + 1]
    return (y / a) ** 2 + (x / b) ** 2 <= 1.0


def test_divide_turns_a_fraction_into_mirrored_sister_pairs_of_two_thirds_the_area():
    from cellsynth.population import DAUGHTER_AREA, divide

    # lopsided masks: an ellipse with a bite out of one side, so a turn shows
    masks = []
    for a in range(10, 30):
        m = _ellipse(a, a // 2 + 4)
        m[: a // 2, : a // 3] = False
        masks.append(m)
    out, pairs = divide(masks, 1.0, np.random.default_rng(0))
    assert len(out) == len(masks)  # as many cells as before
    assert len(pairs) == len(masks) // 2  # every cell a daughter
    assert len({k for p in pairs for k in p}) == 2 * len(pairs)
    areas = {i: int(m.sum()) for i, m in enumerate(masks)}
    for i, j in pairs:
        np.testing.assert_array_equal(out[j], out[i][::-1, ::-1])  # turned by 180 degrees
        assert abs(out[i].sum() / areas[i] - DAUGHTER_AREA) < 0.08
    # a fraction of them, drawn, and none at all without drawing a random number
    some = [len(divide(masks, 0.3, np.random.default_rng(s))[1]) for s in range(40)]
    assert abs(np.mean(some) * 2 / len(masks) - 0.3) < 0.06
    rng = np.random.default_rng(5)
    same, none = divide(masks, 0.0, rng)
    assert none == [] and all(np.array_equal(a, b) for a, b in zip(same, masks, strict=True))
    assert rng.random() == np.random.default_rng(5).random()
    with pytest.raises(CellsynthInputError, match="division fraction"):
        divide(masks, 1.5, rng)


def test_sisters_are_placed_touching_each_other_and_nothing_else():
    from cellsynth.population import divide

    ring = np.ones((3, 3), bool)
    rng = np.random.default_rng(2)
    masks, pairs = divide([_ellipse(9, 6)] * 24, 0.5, rng)
    assert len(pairs) >= 3
    pop = place_cells(masks, (300, 300), cluster_prob=0.0, rng=rng, pairs=pairs)
    lab, sister = pop.labels, pop.table["sister"]
    assert pop.n_cells == 24
    assert (sister > 0).sum() == 2 * len(pairs)  # every pair met
    for i in range(1, pop.n_cells + 1):
        met = set(np.unique(lab[ndimage.binary_dilation(lab == i, ring)])) - {0, i}
        s = int(sister[i - 1])
        assert met == ({s} if s else set())  # a sister touches hers only; others touch none
        if s:
            assert sister[s - 1] == i and pop.table["touching"][i - 1]
    plain = place_cells(masks, (300, 300), rng=np.random.default_rng(0))
    assert not plain.table["sister"].any()
    with pytest.raises(CellsynthInputError, match="must not share a cell"):
        place_cells(masks, (300, 300), rng=rng, pairs=[(0, 1), (1, 2)])
    with pytest.raises(CellsynthInputError, match="beyond"):
        place_cells(masks, (300, 300), rng=rng, pairs=[(0, 99)])
