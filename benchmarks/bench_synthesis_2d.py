"""2D synthesis speed: seconds per pair, mask samples/s, texture UNet GFLOP/s vs matmul, training
steps/s, peak memory. Prints one JSON object.

    python benchmarks/bench_synthesis_2d.py [--bundle BUNDLE] [--pairs 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def unet_flops(model, inp, t) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(inp, t)
    return float(fc.get_total_flops())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--cells", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--train-steps", type=int, default=20)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cellsynth.synthesize import SynthesisParams, Synthesizer

    synth = Synthesizer(args.bundle, device="cpu")
    b = synth.bundle
    out: dict = {
        "threads": torch.get_num_threads(),
        "bundle": str(b.path),
        "texture_steps": b.texture_cfg.sampling_steps,
        "mask_steps": b.mask_cfg.sampling_steps,
    }

    # --- whole pairs
    synth.sample(SynthesisParams(size=(256, 256), cells=args.cells, seed=999))  # warm-up
    times, placed, parts = [], [], []
    for i in range(args.pairs):
        t = time.perf_counter()
        p = synth.sample(SynthesisParams(size=(256, 256), cells=args.cells, seed=i))
        times.append(time.perf_counter() - t)
        placed.append(p.params["cells_placed"])
        parts.append(p.params["timing"])
    out["seconds_per_pair_256"] = float(np.median(times))
    out["cells_per_pair"] = float(np.mean(placed))
    out["seconds_split"] = {k: float(np.median([d[k] for d in parts])) for k in parts[0]}

    # --- masks
    from cellsynth.device import seeded

    rng, gen = seeded(0)
    t = time.perf_counter()
    masks = synth.cell_masks(256, rng, gen)
    out["mask_samples_per_second"] = len(masks) / (time.perf_counter() - t)

    # --- texture UNet efficiency
    unet = b.texture_unet
    inp = torch.randn(1, b.texture_cfg.in_channels + b.texture_cfg.cond_channels, 256, 256)
    tt = torch.tensor([500])
    flops = unet_flops(unet, inp, tt)
    with torch.inference_mode():
        unet(inp, tt)
        t = time.perf_counter()
        reps = 5
        for _ in range(reps):
            unet(inp, tt)
        dt = (time.perf_counter() - t) / reps
    mm = matmul_gflops()
    out["texture_unet_gflop_per_forward_256"] = flops / 1e9
    out["texture_unet_seconds_per_forward_256"] = dt
    out["texture_unet_gflops"] = flops / dt / 1e9
    out["matmul_gflops"] = mm
    out["texture_unet_fraction_of_matmul"] = flops / dt / 1e9 / mm

    # --- training speed (default settings, built-in data)
    import tempfile

    from cellsynth.learn import LearnSettings, learn
    from cellsynth.samples import sample_dataset

    with tempfile.TemporaryDirectory() as tmp:
        s = LearnSettings(
            minutes=None,
            mask_steps=args.train_steps,
            texture_steps=args.train_steps,
            device="cpu",
            checkpoint_minutes=1e9,
        )
        if hasattr(s, "preview"):
            s.preview = False  # the sample grid at the final save is not training
        gen_ = learn(sample_dataset().pairs, f"{tmp}/b", s)
        first = next(gen_)
        t0, n0 = time.perf_counter(), first.step
        last = first
        for p in gen_:
            if not p.done:
                last = p
        out["train_steps_per_second"] = (last.step - n0) / (time.perf_counter() - t0)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
