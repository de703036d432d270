"""Plots of one or more ``cellsynth experiment`` results: SEG per row, vs p_real, vs N synthetic.

    python benchmarks/plot_experiment.py OUT1/results.json [OUT2/results.json ...] -o fig.png

Reads only what the experiment wrote (rows missing from a results file are left out) and prints
a JSON summary of what it plotted. Error bars: 95 % bootstrap intervals of SEG over the test
cells (the per-cell Jaccard indices each row records).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cellsynth.experiment import bootstrap_mean, cell_jaccards, paired_difference


def seg_interval(rec: dict) -> tuple[float, float, float]:
    """SEG and its 95 % bootstrap interval over the row's reference cells."""
    j = cell_jaccards(rec)
    return bootstrap_mean(j) if j.size else (rec["SEG"], rec["SEG"], rec["SEG"])


def _plot(ax, pts, label):
    pts = sorted(pts)
    x = [p[0] for p in pts]
    y = [p[1][0] for p in pts]
    err = [[p[1][0] - p[1][1] for p in pts], [p[1][2] - p[1][0] for p in pts]]
    ax.errorbar(x, y, yerr=err, fmt="o-", capsize=4, label=label)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(p.read_text()) for p in args.results]
    fig, axes = plt.subplots(2, 2, figsize=(15, 9))
    axes = axes.ravel()
    paired_labels, paired = [], []
    summary = {}
    lo = 1.0  # the lowest interval bound of any row: where the bar chart's axis starts
    for run in runs:
        name = run["config"]["name"]
        rows = {r["name"]: r for r in run["config"]["rows"]}
        done = {n: rec for n, rec in run["rows"].items() if n in rows}
        ci = {n: seg_interval(rec) for n, rec in done.items()}
        # the real frames of the baseline row "real" (all training frames if there is none)
        base = set(rows["real"]["real"] if "real" in rows else run["config"]["train"])
        summary[name] = {n: [round(v, 4) for v in ci[n]] for n in done}
        lo = min([lo] + [v[1] for v in ci.values()])
        # SEG per row
        ax = axes[0]
        names = list(done)
        x = [f"{name}: {n}" for n in names]
        ax.barh(
            x,
            [ci[n][0] for n in names],
            xerr=[[ci[n][0] - ci[n][1] for n in names], [ci[n][2] - ci[n][0] for n in names]],
            capsize=3,
        )
        # SEG − SEG(real only) over the same test cells: the comparison the intervals are for
        for n in names:
            d = paired_difference(done[n], done["real"]) if "real" in done and n != "real" else None
            if d is not None:
                paired_labels.append(f"{name}: {n}")
                paired.append(d)
        # SEG vs p_real (full synthetic set, not curated), with real only at 1 and synthetic at 0
        n_full = max((rows[n]["synthetic"] for n in done), default=0)
        pts = [
            (rows[n]["p_real"] if rows[n]["synthetic"] else 1.0, ci[n])
            for n in done
            if not rows[n]["curated"]
            and rows[n]["rho"] is None
            and rows[n]["synthetic"] in (0, n_full)
            and set(rows[n]["real"]) in (set(), base)
        ]
        if len(pts) > 1:
            _plot(axes[1], pts, name)
        # SEG vs number of synthetic pairs at p_real 0.6 (0 = real only)
        pts = [
            (rows[n]["synthetic"], ci[n])
            for n in done
            if not rows[n]["curated"]
            and rows[n]["rho"] is None
            and set(rows[n]["real"]) == base
            and (rows[n]["synthetic"] == 0 or abs(rows[n]["p_real"] - 0.6) < 1e-9)
        ]
        if len(pts) > 1:
            _plot(axes[2], pts, name)
    axes[0].set_xlabel("SEG on held-out frames")
    axes[0].set_xlim(max(0.0, lo - 0.1), 1)
    axes[1].set_xlabel("p_real (0 = synthetic only, 1 = real only)")
    axes[1].set_ylabel("SEG")
    axes[2].set_xlabel("synthetic pairs (p_real 0.6; 0 = real only)")
    axes[2].set_ylabel("SEG")
    ax = axes[3]
    y = range(len(paired))
    ax.errorbar(
        [d["difference"] for d in paired],
        list(y),
        xerr=[
            [d["difference"] - d["low"] for d in paired],
            [d["high"] - d["difference"] for d in paired],
        ],
        fmt="o",
        capsize=4,
    )
    ax.set_yticks(list(y), paired_labels)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("SEG − SEG(real only), paired over the same test cells")
    ax.grid(alpha=0.3)
    summary["paired_vs_real"] = {
        k: [round(d["difference"], 4), round(d["low"], 4), round(d["high"], 4)]
        for k, d in zip(paired_labels, paired, strict=True)
    }
    for ax in axes[1:3]:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle("Cellpose SEG on held-out frames; bars: 95 % bootstrap intervals over test cells")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(json.dumps({"output": str(args.output), "SEG": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
