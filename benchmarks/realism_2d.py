"""The texture-aware realism report of a 2D bundle against real data (cellsynth.report.
texture_realism): scale-free ratios synthetic / real next to real half B / half A, W1 of per-cell
texture features, the Fréchet distance of Cellpose style vectors and a classifier two-sample test.

    python benchmarks/realism_2d.py DATA --bundle BUNDLE -o SYNTH_FOLDER [-n 12] [--size H W]
        [--cellpose-model MODEL] [--touching F] [--density-factor D] [--cluster-prob P]
        [--exemplar-strength X]
    python benchmarks/realism_2d.py DATA --synthetic SYNTH_FOLDER [--cellpose-model MODEL]

With --bundle, n pairs are drawn at the real frames' size into a new folder (-o) first; with
--synthetic an existing synthetic folder is measured. MODEL is a Cellpose model trained on the
real data (cellsynth finetune), without it the style distance is left out. Prints JSON.
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
    src.add_argument("--bundle", type=Path, help="'builtin' for the built-in bundle")
    src.add_argument("--synthetic", type=Path, help="an existing synthetic dataset folder")
    ap.add_argument("-o", "--output", type=Path, help="with --bundle: the new synthetic folder")
    ap.add_argument("-n", type=int, default=12)
    ap.add_argument("--size", type=int, nargs=2, default=None)
    ap.add_argument("--cellpose-model", type=Path, default=None)
    ap.add_argument("--touching", type=float, default=None)
    ap.add_argument("--density-factor", type=float, default=1.0)
    ap.add_argument("--cluster-prob", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exemplar-strength", type=float, default=None)
    args = ap.parse_args()

    from cellsynth.io import read_dataset
    from cellsynth.report import texture_realism
    from cellsynth.segment import load_model
    from cellsynth.synthesize import SynthesisParams, synthesize

    real = read_dataset(args.data, require_labels=True).pairs
    t = time.perf_counter()
    if args.bundle is not None:
        if args.output is None:
            ap.error("--bundle needs -o SYNTH_FOLDER")
        size = tuple(args.size) if args.size else real[0].labels.shape
        params = SynthesisParams(
            size=size,
            seed=args.seed,
            touching=args.touching,
            density_factor=args.density_factor,
            cluster_prob=args.cluster_prob,
            exemplar_strength=args.exemplar_strength,
        )
        bundle = None if str(args.bundle) == "builtin" else args.bundle
        for _ in synthesize(args.output, args.n, params, bundle=bundle, device="cpu"):
            pass
    synth_seconds = time.perf_counter() - t
    fake = read_dataset(args.output or args.synthetic, require_labels=True).pairs
    model = load_model(args.cellpose_model, device="cpu") if args.cellpose_model else None
    t = time.perf_counter()
    report = texture_realism(real, fake, seed=args.seed, cellpose_model=model)
    out = {
        "data": str(args.data),
        "synthetic": str(args.output or args.synthetic),
        "bundle": str(args.bundle) if args.bundle else None,
        "n_real": len(real),
        "n_synthetic": len(fake),
        "cellpose_model": str(args.cellpose_model) if args.cellpose_model else None,
        "seconds": {
            "synthesis": round(synth_seconds, 1),
            "report": round(time.perf_counter() - t, 1),
        },
        **report,
    }
    json.dump(out, sys.stdout, indent=1, default=float)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
