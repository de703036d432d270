"""Realism reports: synthetic vs real cell statistics, as numbers and as a PNG figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.atlas import cell_table
from cellsynth.io import Pair, count_cells, labelled_slices
from cellsynth.metrics import (
    BACKGROUND_FEATURES,
    TEXTURE_FEATURES,
    background_stats,
    classifier_two_sample_test,
    frechet_distance,
    layout_table,
    realism_distances,
    relative_image,
    shared_boundaries,
    style_vectors,
    texture_table,
)

#: scale-free summaries compared as synthetic / real ratios (median over cells or images);
#: the issue's target is a factor 1.5 either way
TARGET_FACTOR = 1.5

FIGURE_FEATURES = ("area", "eccentricity", "solidity", "mean_intensity")


def tables_of(pairs: Sequence[Pair]) -> dict[str, np.ndarray]:
    """The per-cell table of several labelled pairs, concatenated."""
    tabs = [
        cell_table(
            p.labels,
            p.image,
            voxel_size=p.voxel_size,
            annotated_slices=p.annotated_slices,
            name=p.name,
        )
        for p in pairs
    ]
    return {k: np.concatenate([t[k] for t in tabs]) for k in tabs[0]}


def half_split(real: Sequence[Pair], seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Two disjoint halves of the real images (a seeded random split), for real-to-real."""
    idx = np.random.default_rng(seed).permutation(len(real))
    return [real[i] for i in idx[: len(real) // 2]], [real[i] for i in idx[len(real) // 2 :]]


def halves_distances(
    table_a: dict[str, np.ndarray],
    table_b: dict[str, np.ndarray],
    synth: dict[str, np.ndarray],
    features: Sequence[str] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Real-to-real (half A vs half B) and synthetic-to-real (mean of synthetic vs A and vs B),
    so that both compare sets of about the same size."""
    s2a = realism_distances(table_a, synth, features)
    s2b = realism_distances(table_b, synth, features)
    s2r = {f: {k: (s2a[f][k] + s2b[f][k]) / 2 for k in s2a[f]} for f in s2a if f in s2b}
    return realism_distances(table_a, table_b, features), s2r


def look_tables(pairs: Sequence[Pair]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-cell texture and layout features (one row per cell of every 2D image or annotated
    slice; ``shared_boundary`` one per pair of adjacent cells) and per-image background
    features (one row per image), all scale-free."""
    cells: dict[str, list[np.ndarray]] = {}
    images: dict[str, list[float]] = {k: [] for k in BACKGROUND_FEATURES}
    for p in pairs:
        for _, img, lab in labelled_slices(p):
            t = texture_table(img, lab)
            lay = layout_table(lab)
            t["touching"] = lay["touching"].astype(np.float64)
            t["nn_ratio"] = lay["nn_ratio"]
            t["shared_boundary"] = shared_boundaries(img, lab)  # one per pair of adjacent cells
            for k, v in t.items():
                cells.setdefault(k, []).append(np.asarray(v, np.float64))
            for k, v in background_stats(img, lab).items():
                images[k].append(v)
    return (
        {k: np.concatenate(v) for k, v in cells.items()},
        {k: np.asarray(v, np.float64) for k, v in images.items()},
    )


def _summary_value(cells: dict[str, np.ndarray], images: dict[str, np.ndarray], key: str) -> float:
    if key == "touching_fraction":
        v = cells["touching"]
        return float(np.mean(v)) if v.size else float("nan")
    v = images[key] if key in images else cells[key]
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


#: the quantities of the issue's "within a factor 1.5" target, in the order they are reported
LOOK_SUMMARY = (
    "touching_fraction",
    "nn_ratio",
    "texture_spread",
    "edge_contrast",
    "edge_gradient",
    "radial_profile",
    "shared_boundary",
    "brightness_spread",
    "background_noise",
    "illumination",
)


def look_ratios(real: tuple[dict, dict], other: tuple[dict, dict]) -> dict[str, dict[str, float]]:
    """For each of :data:`LOOK_SUMMARY`: the real and the other set's value (fraction, or median
    over cells / images) and their ratio other / real."""
    out = {}
    for k in LOOK_SUMMARY:
        a, b = _summary_value(*real, k), _summary_value(*other, k)
        ratio = b / a if a and np.isfinite(a) and np.isfinite(b) else float("nan")
        out[k] = {"real": a, "other": b, "ratio": ratio}
    return out


def texture_realism(
    real: Sequence[Pair],
    synthetic: Sequence[Pair],
    *,
    seed: int = 0,
    cellpose_model: Any = None,
    two_sample: bool = True,
) -> dict[str, Any]:
    """The realism report that sees texture: scale-free summaries (synthetic / real ratios next to
    half B / half A of the real images), W1 of the per-cell texture features (synthetic-to-real
    next to real-to-real), the Fréchet distance of Cellpose style vectors when a model is
    given, and a classifier two-sample test (real vs synthetic next to real half vs half)."""
    if len(real) >= 2:
        a, b = half_split(real, seed)
        look_a, look_b = look_tables(a), look_tables(b)
        look_r = _joined(look_a, look_b)  # the halves cover the real set: measure it once
    else:
        a = b = list(real)
        look_r = look_a = look_b = look_tables(real)
    look_s = look_tables(synthetic)
    feats = [*TEXTURE_FEATURES, "nn_ratio", "shared_boundary"]
    r2r, s2r = halves_distances(look_a[0], look_b[0], look_s[0], feats)
    out: dict[str, Any] = {
        "synthetic_vs_real": look_ratios(look_r, look_s),
        "real_half_vs_half": look_ratios(look_a, look_b),
        "w1_synthetic_to_real": s2r,
        "w1_real_to_real": r2r,
    }
    if cellpose_model is not None:
        sa, sb, ss = (style_vectors(cellpose_model, _images(x)) for x in (a, b, synthetic))
        out["style_frechet"] = {
            "synthetic_to_real": (frechet_distance(sa, ss) + frechet_distance(sb, ss)) / 2,
            "real_to_real": frechet_distance(sa, sb),
            "n_tiles": [len(sa), len(sb), len(ss)],
        }
    # the test holds out whole images: two per set at least (real vs real: four real images)
    if two_sample and len(real) >= 2 and len(synthetic) >= 2:
        rel_r, rel_s = _relative(real), _relative(synthetic)
        test = {"real_vs_synthetic": classifier_two_sample_test(rel_r, rel_s, seed=seed).to_dict()}
        if len(a) >= 2 and len(b) >= 2:
            rel_a, rel_b = _relative(a), _relative(b)
            test["real_vs_real"] = classifier_two_sample_test(rel_a, rel_b, seed=seed).to_dict()
        out["two_sample"] = test
    return out


def _joined(*tables: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> tuple[dict, dict]:
    """The look tables of the union of disjoint image sets (rows concatenated)."""
    return tuple(  # type: ignore[return-value]
        {k: np.concatenate([t[i][k] for t in tables]) for k in tables[0][i]} for i in (0, 1)
    )


def _images(pairs: Sequence[Pair]) -> list[np.ndarray]:
    return [img for p in pairs for _, img, _ in labelled_slices(p)]


def _relative(pairs: Sequence[Pair]) -> list[np.ndarray]:
    return [relative_image(img, lab) for p in pairs for _, img, lab in labelled_slices(p)]


def realism_summary(
    real: Sequence[Pair],
    synthetic: Sequence[Pair],
    seed: int = 0,
    *,
    texture: bool = True,
    two_sample: bool = False,
    cellpose_model: Any = None,
) -> dict[str, Any]:
    """Synthetic-to-real distances next to real-to-real ones (two disjoint halves of the real set).

    Real-to-real needs at least two real images; the halves are a seeded random split. With
    ``texture`` the 2D report of :func:`texture_realism` is added under ``"texture"`` (with its
    two-sample test and style distance when asked for).
    """
    real_t = tables_of(real)
    synth_t = tables_of(synthetic)
    out: dict[str, Any] = {
        "n_real_images": len(real),
        "n_synthetic_images": len(synthetic),
        "n_real_cells": len(real_t["label"]),
        "n_synthetic_cells": len(synth_t["label"]),
        "synthetic_to_real": realism_distances(real_t, synth_t),
    }
    if len(real) >= 2:
        a, b = half_split(real, seed)
        out["real_to_real"] = realism_distances(tables_of(a), tables_of(b))
    if texture:
        out["texture"] = texture_realism(
            real, synthetic, seed=seed, cellpose_model=cellpose_model, two_sample=two_sample
        )
    return out


def realism_figure(
    real: Sequence[Pair], synthetic: Sequence[Pair], path: str | Path, title: str = ""
) -> Path:
    """Histograms of cell features (real vs synthetic) and one real and one synthetic example."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    real_t, synth_t = tables_of(real), tables_of(synthetic)
    fig = plt.figure(figsize=(14, 7.5), dpi=100)
    gs = fig.add_gridspec(2, 4, height_ratios=[1.25, 1])
    for k, (pairs, name) in enumerate(((real, "real"), (synthetic, "synthetic"))):
        for j in range(2):
            ax = fig.add_subplot(gs[0, 2 * k + j])
            if j < len(pairs):
                p = pairs[j]
                img = p.image.astype(np.float32)
                lo, hi = np.percentile(img, (0.5, 99.8))
                ax.imshow(np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray")
                edge = np.ma.masked_where(
                    ~find_boundaries(p.labels, mode="inner"), np.ones(p.labels.shape)
                )
                ax.imshow(edge, cmap="autumn", alpha=0.9, interpolation="nearest")
                ax.set_title(f"{name}: {p.name} ({count_cells(p.labels)} cells)", fontsize=9)
            ax.axis("off")
    for j, f in enumerate(FIGURE_FEATURES):
        ax = fig.add_subplot(gs[1, j])
        a, b = real_t[f][np.isfinite(real_t[f])], synth_t[f][np.isfinite(synth_t[f])]
        if a.size and b.size:
            bins = np.histogram_bin_edges(np.concatenate([a, b]), bins=25)
            ax.hist(a, bins=bins, density=True, alpha=0.55, label=f"real (n={a.size})")
            ax.hist(b, bins=bins, density=True, alpha=0.55, label=f"synthetic (n={b.size})")
        ax.set_title(f.replace("_", " "), fontsize=10)
        ax.tick_params(labelsize=8)
        if j == 0:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
