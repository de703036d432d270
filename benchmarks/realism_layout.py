"""Layout of synthetic populations against real data: touching fraction, nearest-neighbour
distances, density (cellsynth.metrics.layout_summary), at several clustering probabilities.

    python benchmarks/realism_layout.py DATA [--bundle BUNDLE] [-n 8] [--cluster-prob 0 0.3 1]
        [--density-factor 1]

Only masks and placement run (no texture), so it takes seconds per frame on a CPU. The canvas
is the real frames' size. Prints one JSON object: the real layout and one synthetic layout per
clustering probability.
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
    ap.add_argument("--bundle", type=Path, default=None, help="default: the built-in bundle")
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--cluster-prob", type=float, nargs="+", default=[0.0, 0.3, 1.0])
    ap.add_argument("--density-factor", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from cellsynth.device import seeded
    from cellsynth.io import read_dataset
    from cellsynth.metrics import layout_summary
    from cellsynth.synthesize import SynthesisParams, Synthesizer

    real = [p.labels for p in read_dataset(args.data, require_labels=True).pairs]
    size = real[0].shape
    synth = Synthesizer(args.bundle, device="cpu")
    keep = ("n_cells", "touching_fraction", "nn_ratio_quartiles", "cells_per_median_area")

    def short(s: dict) -> dict:
        return {k: s[k] for k in keep if k in s}

    out = {"data": str(args.data), "canvas": list(size), "real": short(layout_summary(real))}
    for cp in args.cluster_prob:
        t = time.perf_counter()
        labs = []
        for i in range(args.n):
            params = SynthesisParams(
                size=size,
                cluster_prob=cp,
                seed=args.seed + i,
                density_factor=args.density_factor,
            )
            labs.append(synth.population(params, *seeded(params.seed)).labels)
        out[f"synthetic_cluster_{cp:g}"] = {
            **short(layout_summary(labs)),
            "seconds_per_frame": round((time.perf_counter() - t) / args.n, 2),
        }
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
