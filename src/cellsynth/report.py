"""Realism reports: synthetic vs real cell statistics, as numbers and as a PNG figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.atlas import cell_table
from cellsynth.io import Pair, count_cells
from cellsynth.metrics import realism_distances

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
    table_a: dict[str, np.ndarray], table_b: dict[str, np.ndarray], synth: dict[str, np.ndarray]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Real-to-real (half A vs half B) and synthetic-to-real (mean of synthetic vs A and vs B),
    so that both compare sets of about the same size."""
    s2a, s2b = realism_distances(table_a, synth), realism_distances(table_b, synth)
    s2r = {f: {k: (s2a[f][k] + s2b[f][k]) / 2 for k in s2a[f]} for f in s2a if f in s2b}
    return realism_distances(table_a, table_b), s2r


def realism_summary(
    real: Sequence[Pair], synthetic: Sequence[Pair], seed: int = 0
) -> dict[str, Any]:
    """Synthetic-to-real distances next to real-to-real ones (two disjoint halves of the real set).

    Real-to-real needs at least two real images; the halves are a seeded random split.
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
