"""SEG against the training budget: the same rows of several ``cellsynth experiment`` runs that
differ in epochs (and training seed), one line per row and seed.

    python benchmarks/plot_budget.py experiments/results/gowt1_lowdata_brightness*/results.json \
        -o docs/images/results_gowt1_budget.png

Rows are matched by name; a run's convergence ladder (``results.json`` → ``convergence``) adds
its rungs to the baseline row's line. Error bars: 95 % bootstrap intervals of SEG over the test
cells. Prints a JSON table of what it plotted (row → seed → epochs → SEG).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from cellsynth.experiment import bootstrap_mean, cell_jaccards


def budget_table(runs: list[dict]) -> dict[str, dict[int, dict[int, list[float]]]]:
    """row → training seed → epochs → [SEG, low, high] over every run given."""
    table: dict[str, dict[int, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        seed = int(run["config"]["training"].get("seed") or 0)
        for name, rec in run["rows"].items():
            j = cell_jaccards(rec)
            seg = list(bootstrap_mean(j)) if j.size else [rec["SEG"]] * 3
            table[name][seed][int(rec["epochs"])] = seg
        conv = run.get("convergence")
        if conv:
            for rung in conv["ladder"]:
                table[conv["row"]][seed].setdefault(int(rung["epochs"]), [rung["SEG"]] * 3)
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = budget_table([json.loads(p.read_text()) for p in args.results])
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "os^Dv"
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (row, seeds) in enumerate(sorted(table.items())):
        for k, (seed, points) in enumerate(sorted(seeds.items())):
            e = sorted(points)
            y = [points[x][0] for x in e]
            err = [
                [points[x][0] - points[x][1] for x in e],
                [points[x][2] - points[x][0] for x in e],
            ]
            ax.errorbar(
                e, y, yerr=err, fmt=markers[k % len(markers)] + ("-" if k == 0 else "--"),
                color=colours[i % len(colours)], capsize=3, label=f"{row} (seed {seed})",
            )  # fmt: skip
    ax.set_xscale("log", base=2)
    budgets = sorted({e for seeds in table.values() for p in seeds.values() for e in p})
    ax.set_xticks(budgets, [str(e) for e in budgets])
    ax.minorticks_off()
    ax.set_xlabel("training budget (epochs × 8 crops)")
    ax.set_ylabel("SEG on held-out frames")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Cellpose from scratch: SEG against the budget (bars: 95 % over test cells)")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    out = {
        row: {seed: {e: round(v[0], 4) for e, v in sorted(p.items())} for seed, p in s.items()}
        for row, s in table.items()
    }
    print(json.dumps({"output": str(args.output), "SEG": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
