"""GPU figures for docs/performance.md, in one command (needs CUDA; says so and exits without):
pairs per second (2D 256² and 1024², 3D 32×256²), training steps per second and peak GPU memory,
fp32 vs bf16. Each case runs in its own process (accelerate's mixed-precision state is
per process). Prints one JSON object.

    python benchmarks/bench_gpu.py [--pairs 8] [--train-steps 200] [--bundle BUNDLE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def synth_case(size: list[int], precision: str, pairs: int, bundle: str | None) -> dict:
    import torch

    from cellsynth.synthesize import SynthesisParams, Synthesizer

    synth = Synthesizer(bundle, device="cuda")
    dtype = torch.bfloat16 if precision == "bf16" else None
    cells = 20 if len(size) == 2 and size[-1] <= 256 else 60

    def run(seed: int) -> None:
        p = SynthesisParams(size=tuple(size), cells=cells, seed=seed)
        if dtype is None:
            synth.sample(p)
        else:
            with torch.autocast("cuda", dtype=dtype):
                synth.sample(p)

    run(999)  # warm-up (cuDNN autotuning, allocations)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for seed in range(pairs):
        run(seed)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {
        "pairs_per_second": round(pairs / dt, 3),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


def train_case(precision: str, steps: int) -> dict:
    import tempfile

    import torch

    from cellsynth.learn import LearnSettings, learn
    from cellsynth.samples import sample_dataset

    s = LearnSettings(
        minutes=None,
        mask_steps=steps,
        texture_steps=steps,
        device="cuda",
        mixed_precision=precision if precision != "fp32" else "no",
        checkpoint_minutes=1e9,
    )
    with tempfile.TemporaryDirectory() as tmp:
        job = learn(sample_dataset().pairs, f"{tmp}/b", s)
        first = next(job)
        torch.cuda.reset_peak_memory_stats()
        t0, n0, last = time.perf_counter(), first.step, first
        for p in job:
            if not p.done:
                last = p
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return {
        "train_steps_per_second": round((last.step - n0) / dt, 2),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # child: one JSON case
    args = ap.parse_args()
    import torch

    if args.case:
        kind, precision, *size = args.case.split(":")
        if kind == "train":
            res = train_case(precision, args.train_steps)
        else:
            n = max(1, args.pairs // 4) if len(size) == 3 or int(size[-1]) > 256 else args.pairs
            res = synth_case([int(v) for v in size], precision, n, args.bundle)
        print(json.dumps(res))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA GPU: GPU figures not measured"}))
        return 1
    out: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    cases = {
        "2d_256": "synth:{p}:256:256",
        "2d_1024": "synth:{p}:1024:1024",
        "3d_32x256": "synth:{p}:32:256:256",
        "train": "train:{p}",
    }
    for name, case in cases.items():
        for precision in ("fp32", "bf16"):
            cmd = [sys.executable, __file__, "--case", case.format(p=precision)]
            cmd += ["--pairs", str(args.pairs), "--train-steps", str(args.train_steps)]
            if args.bundle:
                cmd += ["--bundle", args.bundle]
            done = subprocess.run(cmd, capture_output=True, text=True)
            key = f"{name}_{precision}"
            if done.returncode != 0:
                out[key] = {"error": done.stderr.strip().splitlines()[-1:]}
            else:
                out[key] = json.loads(done.stdout.strip().splitlines()[-1])
            print(key, out[key], file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
