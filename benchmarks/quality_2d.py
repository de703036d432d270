"""Realism of a 2D bundle against its real data: synthetic-to-real next to real-to-real.

    python benchmarks/quality_2d.py DATA --bundle BUNDLE [-n 4] [--figure PNG] [--size H W]
    python benchmarks/quality_2d.py DATA --synthetic FOLDER [--figure PNG]

With --synthetic, an existing synthetic dataset (e.g. an experiment's OUT/synthetic) is measured
instead of drawing new frames.

The real frames are split into two disjoint halves A and B (seeded). real_to_real = d(A, B);
synthetic_to_real = mean of d(synthetic, A) and d(synthetic, B), so both compare sets of about
the same kind. d is cellsynth.metrics.realism_distances (W1/std and KS per feature). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path)
    src.add_argument("--synthetic", type=Path, help="an existing synthetic dataset folder")
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=2, default=None)
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from cellsynth.io import Pair, read_dataset
    from cellsynth.report import half_split, halves_distances, realism_figure, tables_of
    from cellsynth.synthesize import SynthesisParams, Synthesizer

    real = read_dataset(args.data, require_labels=True).pairs
    size = tuple(args.size) if args.size else real[0].labels.shape
    t = time.perf_counter()
    fake = []
    if args.synthetic:
        fake = read_dataset(args.synthetic, require_labels=True).pairs
    else:
        synth = Synthesizer(args.bundle, device="cpu")
        for i in range(args.n):
            p = synth.sample(SynthesisParams(size=size, seed=args.seed + i))
            fake.append(Pair.from_arrays(f"synthetic_{i}", p.image, p.labels))
    seconds = None if args.synthetic else (time.perf_counter() - t) / args.n
    half_a, half_b = half_split(real, args.seed)
    ta, tb, ts = tables_of(half_a), tables_of(half_b), tables_of(fake)
    r2r, s2r = halves_distances(ta, tb, ts)
    out = {
        "data": str(args.data),
        "bundle": str(args.bundle or args.synthetic),
        "canvas": list(size),
        "real_frames": [len(half_a), len(half_b)],
        "synthetic_frames": len(fake),
        "cells": {"real": int(len(ta["label"]) + len(tb["label"])), "synthetic": len(ts["label"])},
        "seconds_per_synthetic_frame": None if seconds is None else round(seconds, 2),
        "real_to_real": r2r,
        "synthetic_to_real": s2r,
    }
    if args.figure:
        realism_figure(
            real,
            fake,
            args.figure,
            title=f"{args.data.name}: real vs synthetic ({(args.bundle or args.synthetic).name})",
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
