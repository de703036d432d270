"""3D synthesis figures (JSON on stdout): stack time, seconds per cell volume, NeuS vs visual
hull IoU on held-out prior shapes, adjacent-slice correlation for real and synthetic stacks.

    python benchmarks/bench_synthesis_3d.py [--bundle BUNDLE] [--size 32 256 256]
        [--real ../shared/data/ctc_Fluo-N3DH-CHO_02_ERRSEG] [--shapes 64]

IoU is measured on a 32^3 lattice against the prior's exact shapes, for volumes built from
(a) the shapes' true silhouettes and (b) the views the multiview model generates from the true
top view alone (what synthesis does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a & b).sum(-1) / np.maximum((a | b).sum(-1), 1)


def shape_figures(n: int, seed: int) -> dict:
    from cellsynth.shapes.harmonics import sample_shapes, volume_points
    from cellsynth.shapes.multiview import MultiviewModel, sample_views
    from cellsynth.shapes.neus import NeuSConfig, fit_sdf, sample_grid, visual_hull

    mv = MultiviewModel.load()
    views = mv.views
    rng = np.random.default_rng(10_000 + seed)  # not the training seed's shapes
    shapes = sample_shapes(n, mv.prior, rng)
    true = shapes.silhouettes(views, mv.res, 48)
    pts = volume_points(32)[0]
    gt = shapes.volume(32).reshape(n, -1)
    t = time.perf_counter()
    gen = sample_views(mv, true[:, 0], generator=torch.Generator().manual_seed(seed))
    t_views = time.perf_counter() - t
    out: dict = {"shapes": n, "views": len(mv.angles), "resolution": mv.res}
    for name, sil in (("true_views", true), ("generated_views", gen)):
        hull = visual_hull(sil, views, pts).numpy()
        t = time.perf_counter()
        grids = fit_sdf(sil, views, NeuSConfig())
        t_neus = time.perf_counter() - t
        neus = (sample_grid(grids, pts[None].expand(n, -1, -1)) < 0).numpy()
        out[name] = {
            "iou_neus": round(float(iou(neus, gt).mean()), 4),
            "iou_visual_hull": round(float(iou(hull, gt).mean()), 4),
        }
        if name == "generated_views":
            out["seconds_per_cell"] = round((t_views + t_neus) / n, 4)
            out["seconds_per_cell_neus"] = round(t_neus / n, 4)
            out["view_iou_generated_vs_true"] = round(
                float(iou(gen[:, 1:].reshape(n, -1), true[:, 1:].reshape(n, -1)).mean()), 4
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--size", type=int, nargs=3, default=[32, 256, 256])
    ap.add_argument("--real", type=Path, default=None)
    ap.add_argument("--shapes", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-stack", action="store_true")
    args = ap.parse_args()

    from cellsynth.metrics import slice_correlation
    from cellsynth.synthesize import SynthesisParams, Synthesizer

    result: dict = {"torch_threads": torch.get_num_threads()}
    result["shapes"] = shape_figures(args.shapes, args.seed)
    print(json.dumps(result["shapes"]), file=sys.stderr)
    synth = Synthesizer(args.bundle, device="cpu")
    result["bundle"] = str(synth.bundle.path)
    if not args.skip_stack:
        t = time.perf_counter()
        pair = synth.sample(SynthesisParams(size=tuple(args.size), seed=args.seed))
        lab = pair.labels
        ids = [i for i in np.unique(lab) if i]
        spans = [int((lab == i).any(axis=(1, 2)).sum()) for i in ids]
        from scipy import ndimage

        one_piece = all(ndimage.label(lab == i)[1] == 1 for i in ids)
        result["stack"] = {
            "size": args.size,
            "seconds": round(time.perf_counter() - t, 2),
            "timing": {k: round(v, 2) for k, v in pair.params["timing"].items()},
            "cells": len(ids),
            "slices_per_cell_median": float(np.median(spans)) if spans else 0.0,
            "min_slices_per_cell": int(min(spans)) if spans else 0,
            "every_cell_one_component": bool(one_piece),
            "rho": pair.params["rho"],
            "voxel_size": pair.params["voxel_size"],
        }
        print(json.dumps(result["stack"]), file=sys.stderr)
    # slice correlation: real stacks, and synthetic stacks at rho = 0 and the bundle's rho
    corr: dict = {}
    shape = (8, 128, 128)
    if args.real is not None:
        from cellsynth.io import read_dataset

        pairs = read_dataset(args.real, require_labels=True).pairs
        vals = [slice_correlation(p.image, p.labels) for p in pairs]
        corr["real"] = round(float(np.nanmean(vals)), 4)
        shape = (pairs[0].labels.shape[0], 128, 128)
    chosen = synth.rho(SynthesisParams())
    for rho in sorted({0.0, chosen}):
        vals = []
        for s in range(3):
            p = synth.sample(SynthesisParams(size=shape, seed=args.seed + s, rho=rho))
            vals.append(slice_correlation(p.image, p.labels))
        corr[f"synthetic_rho_{rho:g}"] = round(float(np.nanmean(vals)), 4)
    corr["chosen_rho"] = chosen
    corr["stack_shape"] = list(shape)
    result["slice_correlation"] = corr
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
