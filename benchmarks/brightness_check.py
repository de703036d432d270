"""Per-cell brightness: W1 of the cells' mean intensity to the real cells, painted vs matched.

    python benchmarks/brightness_check.py DATA --bundle BUNDLE [-n 4] [--size 512 512]

Each synthetic frame is painted once (``--brightness model``) and then matched to the training
cells' brightness (what ``--brightness data`` does), so both variants have the same cells.
W1 is divided by the real cells' standard deviation. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=2, default=[512, 512])
    args = ap.parse_args()

    from scipy.stats import wasserstein_distance

    from cellsynth.atlas import cell_table
    from cellsynth.io import read_dataset
    from cellsynth.synthesize import SynthesisParams, Synthesizer

    real = read_dataset(args.data, require_labels=True).pairs
    rm = np.concatenate([cell_table(p.labels, p.image)["mean_intensity"] for p in real])
    synth = Synthesizer(args.bundle, device="cpu")
    if synth.bundle.cell_intensities is None:
        print("the bundle records no cell intensities", file=sys.stderr)
        return 2
    painted, matched = [], []
    for seed in range(args.n):
        prm = SynthesisParams(size=tuple(args.size), seed=seed, brightness="model")
        pair = synth.sample(prm)
        img, _ = synth.brightness(pair.image, pair.labels, replace(prm, brightness="data"))
        painted += list(cell_table(pair.labels, pair.image)["mean_intensity"])
        matched += list(cell_table(pair.labels, img)["mean_intensity"])
    sd = float(np.std(rm))

    def pct(v):
        return [round(float(np.percentile(v, q)), 1) for q in (10, 50, 90)]

    print(
        json.dumps(
            {
                "real_cells": len(rm),
                "synthetic_cells": len(painted),
                "W1_over_std_painted": round(wasserstein_distance(painted, rm) / sd, 3),
                "W1_over_std_matched": round(wasserstein_distance(matched, rm) / sd, 3),
                "p10_p50_p90": {"real": pct(rm), "painted": pct(painted), "matched": pct(matched)},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
