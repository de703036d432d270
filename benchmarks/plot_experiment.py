"""Plots of one or more ``cellsynth experiment`` results: SEG per row, vs p_real, vs N synthetic.

    python benchmarks/plot_experiment.py OUT1/results.json [OUT2/results.json ...] -o fig.png

Reads only what the experiment wrote (rows missing from a results file are left out) and prints
a JSON summary of what it plotted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(p.read_text()) for p in args.results]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    summary = {}
    for run in runs:
        name = run["config"]["name"]
        rows = {r["name"]: r for r in run["config"]["rows"]}
        done = {n: rec for n, rec in run["rows"].items() if n in rows}
        summary[name] = {n: round(rec["SEG"], 4) for n, rec in done.items()}
        # SEG per row
        ax = axes[0]
        names = list(done)
        x = [f"{name}: {n}" for n in names]
        ax.barh(x, [done[n]["SEG"] for n in names])
        # SEG vs p_real (full synthetic set, not curated), with real only at 1 and synthetic at 0
        n_full = max((rows[n]["synthetic"] for n in done), default=0)
        pts = sorted(
            (rows[n]["p_real"] if rows[n]["synthetic"] else 1.0, done[n]["SEG"])
            for n in done
            if not rows[n]["curated"]
            and rows[n]["rho"] is None
            and rows[n]["synthetic"] in (0, n_full)
            and set(rows[n]["real"]) in (set(), set(run["config"]["train"]))
        )
        if len(pts) > 1:
            axes[1].plot(*zip(*pts, strict=True), "o-", label=name)
        # SEG vs number of synthetic pairs at p_real 0.6 (0 = real only)
        pts = sorted(
            (rows[n]["synthetic"], done[n]["SEG"])
            for n in done
            if not rows[n]["curated"]
            and rows[n]["rho"] is None
            and rows[n]["real"]
            and (rows[n]["synthetic"] == 0 or abs(rows[n]["p_real"] - 0.6) < 1e-9)
        )
        if len(pts) > 1:
            axes[2].plot(*zip(*pts, strict=True), "o-", label=name)
    axes[0].set_xlabel("SEG on held-out frames")
    axes[0].set_xlim(0, 1)
    axes[1].set_xlabel("p_real (0 = synthetic only, 1 = real only)")
    axes[1].set_ylabel("SEG")
    axes[2].set_xlabel("synthetic pairs (p_real 0.6; 0 = real only)")
    axes[2].set_ylabel("SEG")
    for ax in axes[1:]:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(json.dumps({"output": str(args.output), "SEG": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
