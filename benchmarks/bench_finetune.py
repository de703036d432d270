"""Overhead of `cellsynth finetune` over plain Cellpose `train_seg`, and inference speed.

    python benchmarks/bench_finetune.py [--epochs 4]

Both train the same from-scratch CPnet on the same built-in images with the same settings in
the same process. Prints JSON: seconds per epoch of each, their ratio (goal <= 1.05), and
segmentation seconds per 512x512 image.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()

    from cellpose import models, train

    from cellsynth.samples import sample_dataset
    from cellsynth.segment import FinetuneSettings, finetune, load_model, segment

    try:
        from cellsynth.segmenters.cellpose3 import CHANNELS
    except ImportError:  # before the segmenter seam (to compare with older commits)
        from cellsynth.segment import CHANNELS

    pairs = sample_dataset().pairs
    imgs = [p.image.astype(np.float32) for p in pairs]
    labs = [p.labels.astype(np.int32) for p in pairs]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up (imports, first allocations)
        for _ in finetune(
            pairs[:2], [], Path(tmp) / "warm", FinetuneSettings(epochs=1, device="cpu")
        ):
            pass
        t = time.perf_counter()
        for _ in finetune(
            pairs,
            [],
            Path(tmp) / "ours",
            FinetuneSettings(epochs=args.epochs, device="cpu", nimg_per_epoch=16),
        ):
            pass
        ours = (time.perf_counter() - t) / args.epochs
        net = models.CellposeModel(
            gpu=False, pretrained_model=False, model_type=None, diam_mean=30.0, nchan=2
        ).net
        t = time.perf_counter()
        train.train_seg(
            net,
            train_data=imgs,
            train_labels=labs,
            channels=CHANNELS,
            n_epochs=args.epochs,
            learning_rate=0.005,
            weight_decay=1e-5,
            batch_size=8,
            nimg_per_epoch=16,
            save_path=tmp,
            model_name="plain",
            min_train_masks=1,
        )
        plain = (time.perf_counter() - t) / args.epochs
        model = load_model(Path(tmp) / "ours", "cpu")
        img = np.tile(pairs[0].image, (2, 2))[:512, :512]
        segment(model, img)
        t = time.perf_counter()
        for _ in range(3):
            segment(model, img)
        infer = (time.perf_counter() - t) / 3
    out.update(
        seconds_per_epoch_cellsynth=ours,
        seconds_per_epoch_train_seg=plain,
        ratio=ours / plain,
        inference_seconds_512=infer,
        epochs=args.epochs,
        images_per_epoch=16,
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
