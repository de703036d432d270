"""Realism of a 3D bundle against its real stacks: orthogonal views and cell statistics.

    python benchmarks/quality_3d.py DATA --bundle BUNDLE [-n 4] [--figure PNG] [--size Z Y X]
    python benchmarks/quality_3d.py DATA --synthetic FOLDER [--voxel-size Z Y X] [--figure PNG]

Synthesizes ``n`` stacks of the real stacks' shape (voxel size from the bundle), then
(1) draws XY, XZ and YZ sections through the middle of one real and one synthetic stack, labels
outlined, z stretched by the voxel anisotropy; (2) compares per-cell statistics (area, shape,
intensity, z extent) as in quality_2d.py: real half A vs half B next to synthetic vs real;
(3) reports the adjacent-slice correlation inside cells. With --synthetic, an existing synthetic
dataset (e.g. an experiment's OUT/synthetic) is measured instead of drawing new stacks. Prints
JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def orthoviews(ax_row, image, labels, aniso, title):
    from skimage.segmentation import find_boundaries

    z, y, x = (s // 2 for s in image.shape)
    # the plane through the most cells
    z = int(np.argmax([(labels[k] > 0).sum() for k in range(labels.shape[0])]))
    y = int(np.argmax((labels > 0).sum(axis=(0, 2))))
    x = int(np.argmax((labels > 0).sum(axis=(0, 1))))
    lo, hi = np.percentile(image, [1, 99.5])
    planes = [
        ("XY", image[z], labels[z], 1.0),
        ("XZ", image[:, y, :], labels[:, y, :], aniso),
        ("YZ", image[:, :, x], labels[:, :, x], aniso),
    ]
    for ax, (name, img, lab, a) in zip(ax_row, planes, strict=True):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=a, interpolation="nearest")
        edge = np.ma.masked_where(~find_boundaries(lab), np.ones(lab.shape))
        ax.imshow(edge, cmap="autumn", alpha=0.8, aspect=a, interpolation="nearest")
        ax.set_title(f"{title} {name}", fontsize=9)
        ax.axis("off")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path)
    src.add_argument("--synthetic", type=Path, help="an existing synthetic dataset folder")
    ap.add_argument("--voxel-size", type=float, nargs=3, default=None)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=3, default=None)
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from cellsynth.io import Pair, read_dataset
    from cellsynth.metrics import slice_correlation
    from cellsynth.report import half_split, halves_distances, tables_of
    from cellsynth.synthesize import SynthesisParams, Synthesizer

    real = read_dataset(args.data, require_labels=True).pairs
    size = tuple(args.size) if args.size else real[0].labels.shape
    t = time.perf_counter()
    fake = []
    if args.synthetic:
        ds = read_dataset(args.synthetic, require_labels=True)
        vs = tuple(args.voxel_size or ds.pairs[0].voxel_size or (1.0, 1.0, 1.0))
        fake = [Pair.from_arrays(p.name, p.image, p.labels, vs) for p in ds.pairs]
        samples = json.loads((args.synthetic / "dataset.json").read_text())["samples"]
        rho = sorted({s.get("rho") for s in samples.values()}, key=str)
    else:
        synth = Synthesizer(args.bundle, device="cpu")
        vs = synth.voxel_size_3d(SynthesisParams(size=size))
        rho = synth.rho(SynthesisParams())
        for i in range(args.n):
            p = synth.sample(SynthesisParams(size=size, seed=args.seed + i))
            fake.append(Pair.from_arrays(f"synthetic_{i}", p.image, p.labels, vs))
    seconds = None if args.synthetic else (time.perf_counter() - t) / args.n
    source = args.bundle or args.synthetic
    real = [Pair.from_arrays(p.name, p.image, p.labels, vs) for p in real]
    half_a, half_b = half_split(real, args.seed)
    ta, tb, ts = tables_of(half_a), tables_of(half_b), tables_of(fake)
    r2r, s2r = halves_distances(ta, tb, ts)

    def zext(t):
        return {
            "mean": round(float(np.mean(t["z_extent"])), 2),
            "p95": round(float(np.percentile(t["z_extent"], 95)), 2),
        }

    out = {
        "data": str(args.data),
        "bundle": str(source),
        "stack": list(size),
        "voxel_size": list(vs),
        "rho": rho,
        "cells": {"real": int(len(ta["label"]) + len(tb["label"])), "synthetic": len(ts["label"])},
        "cells_per_stack": {
            "real": round((len(ta["label"]) + len(tb["label"])) / len(real), 1),
            "synthetic": round(len(ts["label"]) / len(fake), 1),
        },
        "z_extent_slices": {
            "real": zext({"z_extent": np.r_[ta["z_extent"], tb["z_extent"]]}),
            "synthetic": zext(ts),
        },
        "slice_correlation": {
            "real": round(
                float(np.nanmean([slice_correlation(p.image, p.labels) for p in real])), 4
            ),
            "synthetic": round(
                float(np.nanmean([slice_correlation(p.image, p.labels) for p in fake])), 4
            ),
        },
        "seconds_per_synthetic_stack": None if seconds is None else round(seconds, 2),
        "real_to_real": r2r,
        "synthetic_to_real": s2r,
    }
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        aniso = vs[0] / vs[2]
        z, h, w = size
        zh = max(z * aniso, 10)
        fig, axes = plt.subplots(
            3,
            2,
            figsize=(11, 5.5 * (h + 2 * zh) / w + 1.0),
            gridspec_kw={"height_ratios": [h, zh, zh]},
        )
        orthoviews(axes[:, 0], real[0].image, real[0].labels, aniso, "real")
        orthoviews(axes[:, 1], fake[0].image, fake[0].labels, aniso, "synthetic")
        fig.suptitle(
            f"{args.data.name} vs {source.name}: XY, XZ, YZ sections (z stretched x{aniso:g})",
            fontsize=10,
        )
        fig.tight_layout()
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=90)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
