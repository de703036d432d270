"""Synthesis beside busy processes: seconds per 256² pair, quiet and beside N busy 1-thread torch
processes, with 2 threads, 1 thread and cellsynth's own choice (``device.choose_threads``).
Prints one JSON object.

    python benchmarks/bench_threads.py [--pairs 2] [--busy 2] [--bundle BUNDLE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BUSY = "import torch; torch.set_num_threads(1); a = torch.randn(256, 256)\nwhile True: a @ a"


def seconds_per_pair(synth, threads: int, pairs: int) -> float:
    import torch

    from cellsynth.synthesize import SynthesisParams

    torch.set_num_threads(threads)
    t = time.perf_counter()
    for seed in range(pairs):
        synth.sample(SynthesisParams(size=(256, 256), cells=20, seed=seed))
    return (time.perf_counter() - t) / pairs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--busy", type=int, default=2, help="busy 1-thread torch processes")
    ap.add_argument("--bundle", default=None)
    args = ap.parse_args()
    os.environ.pop("OMP_NUM_THREADS", None)  # let choose_threads look at the machine

    from cellsynth.device import available_cores, busy_cores, choose_threads
    from cellsynth.synthesize import SynthesisParams, Synthesizer

    synth = Synthesizer(args.bundle, device="cpu")
    synth.sample(SynthesisParams(size=(256, 256), cells=20, seed=99))  # warm-up
    cores = available_cores()
    out: dict = {"cores": cores, "pairs": args.pairs, "busy_processes": args.busy}
    out["quiet_busy_cores"] = round(busy_cores(), 2)
    auto_quiet = choose_threads()
    out["quiet"] = {
        f"{n}_threads": round(seconds_per_pair(synth, n, args.pairs), 2) for n in sorted({1, cores})
    }
    out["quiet"]["auto"] = {
        "threads": auto_quiet,
        "s_per_pair": round(seconds_per_pair(synth, auto_quiet, args.pairs), 2),
    }
    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
    try:
        time.sleep(1.0)
        out["busy_cores_seen"] = round(busy_cores(), 2)
        auto_busy = choose_threads()
        out["beside_busy"] = {
            f"{n}_threads": round(seconds_per_pair(synth, n, args.pairs), 2)
            for n in sorted({1, cores})
        }
        out["beside_busy"]["auto"] = {
            "threads": auto_busy,
            "s_per_pair": round(seconds_per_pair(synth, auto_busy, args.pairs), 2),
        }
    finally:
        for p in procs:
            p.kill()
            p.wait()
    out["slowdown_auto"] = round(
        out["beside_busy"]["auto"]["s_per_pair"] / out["quiet"]["auto"]["s_per_pair"], 2
    )
    out["slowdown_vs_best_quiet"] = round(
        out["beside_busy"]["auto"]["s_per_pair"]
        / min(v for k, v in out["quiet"].items() if k != "auto"),
        2,
    )
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
