"""Score Cellpose models on few-slice 3D stacks segmented slice by slice and stitched, next to
Cellpose's 3D mode: prints JSON (SEG, predicted nuclei, paired SEG differences to the first
model with 95 % bootstrap intervals over the reference nuclei).

    python benchmarks/stitched_3d.py DATA --frames t009 t010 t011 --models M1 M2 ...

Why: CHO stacks have 5 slices 5x coarser than the pixels. Cellpose's ``do_3D`` runs the
network on the YZ and XZ views too (25 planes after resampling), which a model trained on the
annotated XY slices has never seen; the longer it trains, the more those views fragment the
nuclei (docs/results.md, CHO). Stitching the XY segmentations of neighbouring slices
(``stitch_threshold``, Cellpose's own option) uses the network only where it was trained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="a folder of 3D image/label pairs")
    ap.add_argument("--frames", nargs="+", required=True, help="the names of the test stacks")
    ap.add_argument("--models", nargs="+", type=Path, required=True, help="Cellpose 3 models")
    ap.add_argument("--stitch", type=float, default=0.25, help="stitch threshold (IoU)")
    ap.add_argument("--also-3d", action="store_true", help="score do_3D as well (slow)")
    ap.add_argument("--anisotropy", type=float, help="do_3D: z step / pixel (default: the data's)")
    args = ap.parse_args()

    import numpy as np

    from cellsynth.experiment.results import bootstrap_mean
    from cellsynth.io import read_pairs
    from cellsynth.metrics import seg_jaccards
    from cellsynth.segment import anisotropy_of
    from cellsynth.segmenters.cellpose3 import CHANNELS, Cellpose3Segmenter

    pairs = [p for p in read_pairs([args.data], require_labels=True) if p.name in args.frames]
    if sorted(p.name for p in pairs) != sorted(args.frames):
        raise SystemExit(f"{args.data}: not all of {args.frames} found")
    modes = ["stitched", *(["3d"] if args.also_3d else [])]
    out: dict = {"data": str(args.data), "frames": args.frames, "stitch": args.stitch}
    cells: dict[tuple[str, str], np.ndarray] = {}
    for m in args.models:
        seg = Cellpose3Segmenter.load(m, "cpu")
        for mode in modes:
            t0 = time.perf_counter()
            js, n_pred = [], []
            for p in pairs:
                img = p.image.astype(np.float32)
                if mode == "stitched":
                    pred = seg.model.eval(
                        img, channels=CHANNELS, z_axis=0, stitch_threshold=args.stitch
                    )[0]
                else:
                    pred = seg.segment(img, anisotropy=anisotropy_of(p.voxel_size, 3), do_3D=True)
                pred = np.asarray(pred)
                js.append(seg_jaccards(p.labels, pred))
                n_pred.append(int(np.unique(pred[pred > 0]).size))
            j = np.concatenate(js)
            cells[(str(m), mode)] = j
            out.setdefault("models", {}).setdefault(str(m), {})[mode] = {
                "SEG": float(j.mean()),
                "n_reference": int(j.size),
                "n_predicted": n_pred,
                "seconds": round(time.perf_counter() - t0, 1),
            }
    first = str(args.models[0])
    for (m, mode), j in cells.items():
        if m == first:
            continue
        mean, lo, hi = bootstrap_mean(j - cells[(first, mode)])
        out["models"][m][mode]["minus_first"] = {"difference": mean, "low": lo, "high": hi}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
