"""Cell shapes of a bundle's synthetic populations against real cells (morphology W1).

    python benchmarks/shapes_2d.py DATA --bundle builtin -n 12 --size 360 360
    python benchmarks/shapes_2d.py DATA --bundle builtin --ablation   # the December 2026 changes

Draws the populations (labels only: painting does not change a cell's shape) of ``n`` synthetic
frames and prints one JSON object: per morphology feature the Wasserstein-1 distance in units of
the real feature's standard deviation, synthetic vs each real half (mean of the two), next to
real half vs real half (docs/metrics.md). ``--ablation`` adds rows with each December 2026
change to cell shapes undone in turn: cells kept half inside the canvas (no edge cut: the
bundle's ``cells.edge_cut`` ignored), slivers
of cut cells down to 9 px (no minimum cut area), 8 DDIM mask steps, other smoothing (the
bundle's ``cells.mask_smooth`` now, else 1.25 px; 0.6 px before).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

FEATURES = ["area", "perimeter", "eccentricity", "solidity", "equivalent_diameter"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--bundle", default="builtin", help="'builtin' for the built-in bundle")
    ap.add_argument("-n", type=int, default=12)
    ap.add_argument("--size", type=int, nargs=2, default=(360, 360))
    ap.add_argument("--ablation", action="store_true")
    args = ap.parse_args()

    import torch

    import cellsynth.synthesize as synth_mod
    from cellsynth.device import seeded
    from cellsynth.diffusion.core import make_sampler, make_train_scheduler
    from cellsynth.io import Pair, read_pairs
    from cellsynth.metrics.morphology import realism_distances
    from cellsynth.population import place_cells
    from cellsynth.report import half_split, tables_of

    torch.set_num_threads(1)
    real = read_pairs([args.data], require_labels=True)
    a, b = half_split(real)
    ta, tb = tables_of(a), tables_of(b)

    @contextlib.contextmanager
    def variant(edge_cut="bundle", min_cut=True, sampler=None, smooth=None):
        synth = synth_mod.Synthesizer(None if args.bundle == "builtin" else args.bundle, "cpu")
        if not min_cut:
            synth.bundle.meta["cells"].pop("min_cut_area", None)
        if sampler is not None:
            kind, steps = sampler
            synth.mask_sampler = make_sampler(make_train_scheduler(synth.bundle.mask_cfg), kind)
            synth.bundle.mask_cfg.sampling_steps = steps
        if smooth is not None:  # None: the bundle's own (cells.mask_smooth, else 1.25)
            synth.bundle.meta["cells"]["mask_smooth"] = smooth
        old = synth_mod.place_cells
        if edge_cut != "bundle":  # None: half of each cell inside, as before December 2026
            synth_mod.place_cells = lambda *a, **k: place_cells(*a, **{**k, "edge_cut": edge_cut})
        try:
            yield synth
        finally:
            synth_mod.place_cells = old

    def measure(**kw):
        t0 = time.perf_counter()
        with variant(**kw) as synth:
            pairs = []
            for seed in range(args.n):
                params = synth_mod.SynthesisParams(size=tuple(args.size), seed=seed)
                rng, gen = seeded(seed)
                pop = synth.population(params, rng, gen)
                dummy = np.zeros(pop.labels.shape, np.float32)
                pairs.append(Pair.from_arrays(f"s{seed}", dummy, pop.labels))
        t = tables_of(pairs)
        sa, sb = realism_distances(ta, t, FEATURES), realism_distances(tb, t, FEATURES)
        row = {f: round((sa[f]["w1"] + sb[f]["w1"]) / 2, 3) for f in FEATURES}
        row["cells"] = len(t["label"])
        row["touching_border"] = round(float(np.mean(t["touches_border"])), 3)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        return row

    r2r = realism_distances(ta, tb, FEATURES)
    out = {
        "data": str(args.data),
        "bundle": args.bundle,
        "n_synthetic": args.n,
        "size": list(args.size),
        "real_half_vs_half": {f: round(r2r[f]["w1"], 3) for f in FEATURES},
        "real_touching_border": round(float(np.mean(tables_of(real)["touches_border"])), 3),
        "synthetic_vs_real": {"current": measure()},
    }
    if args.ablation:
        rows = out["synthetic_vs_real"]
        rows["no edge cut"] = measure(edge_cut=None)
        rows["no minimum cut area"] = measure(min_cut=False)
        rows["DDIM 8 mask steps"] = measure(sampler=("ddim", 8))
        for smooth in (0.6, 1.0, 1.5):
            rows[f"{smooth} px smoothing"] = measure(smooth=smooth)
        rows["all four undone (before December 2026)"] = measure(
            edge_cut=None, min_cut=False, sampler=("ddim", 8), smooth=0.6
        )
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
