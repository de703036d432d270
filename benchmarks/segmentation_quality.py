"""Does synthetic data help Cellpose? Real only / synthetic only / both at several p_real.

    python benchmarks/segmentation_quality.py DATA --bundle BUNDLE [--test t31 t39]
        [--n-synthetic 16] [--epochs 100] [--p-real 0.3 0.6 0.9] [--size 512 512]

Real frames are split into train and test (``--test`` names, default: the last half). Every
model is trained from scratch (no pretrained weights exist offline) with the same settings and
evaluated on the held-out real frames. Prints one JSON object (SEG, AP50 per configuration).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--test", nargs="*", default=None)
    ap.add_argument("--n-synthetic", type=int, default=16)
    ap.add_argument("--size", type=int, nargs=2, default=[512, 512])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--p-real", type=float, nargs="*", default=[0.3, 0.6, 0.9])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--nimg-per-epoch",
        type=int,
        default=8,
        help="training crops per epoch for every configuration (the same budget for all)",
    )
    ap.add_argument(
        "--only",
        nargs="*",
        choices=["real", "synthetic", "both"],
        default=None,
        help="run only these configurations (e.g. split a study over processes)",
    )
    ap.add_argument(
        "--no-synthetic-only",
        action="store_true",
        help="skip the model trained on synthetic data alone",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="also write the JSON here, updated after every configuration",
    )
    args = ap.parse_args()

    from cellsynth.io import Pair, read_dataset
    from cellsynth.segment import FinetuneSettings, evaluate_model, finetune, load_model
    from cellsynth.synthesize import SynthesisParams, Synthesizer

    pairs = read_dataset(args.data, require_labels=True).pairs
    test_names = args.test or [p.name for p in pairs[len(pairs) // 2 :]]
    train = [p for p in pairs if p.name not in test_names]
    test = [p for p in pairs if p.name in test_names]
    synth = Synthesizer(args.bundle, device="cpu")
    t0 = time.perf_counter()
    fake = []
    for i in range(args.n_synthetic):
        s = synth.sample(SynthesisParams(size=tuple(args.size), seed=args.seed + i))
        fake.append(Pair.from_arrays(f"synthetic_{i:03d}", s.image, s.labels))
    synth_seconds = time.perf_counter() - t0

    configs = [("real", train, [], 1.0)]
    if not args.no_synthetic_only:
        configs.append(("synthetic", [], fake, 0.0))
    configs += [(f"both p_real={p}", train, fake, p) for p in args.p_real]
    if args.only:
        configs = [c for c in configs if c[0].split()[0] in args.only]
    results = {}
    report = {
        "data": str(args.data),
        "bundle": str(args.bundle),
        "train_frames": [p.name for p in train],
        "test_frames": [p.name for p in test],
        "n_synthetic": args.n_synthetic,
        "synthetic_size": args.size,
        "synthesis_seconds": round(synth_seconds, 1),
        "epochs": args.epochs,
        "nimg_per_epoch": args.nimg_per_epoch,
        "results": results,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, real, syn, p_real in configs:
            t = time.perf_counter()
            out = Path(tmp) / name.replace(" ", "_").replace("=", "")
            settings = FinetuneSettings(
                epochs=args.epochs,
                p_real=p_real,
                device="cpu",
                seed=args.seed,
                nimg_per_epoch=args.nimg_per_epoch,
            )
            for _ in finetune(real, syn, out, settings):
                pass
            model = load_model(out, "cpu")
            s = evaluate_model(model, test).summary()
            results[name] = {
                "SEG": s["SEG"],
                "AP50": s["AP50"],
                "bPQ": s["bPQ"],
                "train_seconds": round(time.perf_counter() - t, 1),
            }
            print(name, results[name], file=sys.stderr)
            if args.out:
                args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
