"""An experiment's results: ``results.json`` and ``results.md``, and paired bootstrap intervals
of the SEG differences between rows (over the same test cells)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.experiment.config import section_defaults
from cellsynth.io import atomic_path, write_json


def paired_difference(
    a: dict[str, Any], b: dict[str, Any], *, n_boot: int = 4000, seed: int = 0
) -> dict[str, float] | None:
    """SEG(a) − SEG(b) over the same reference cells, with a 95 % bootstrap interval.

    Cells are resampled with replacement (paired: each cell's Jaccard in both rows). None when
    a row has no per-cell scores or the rows were scored on different cells.
    """
    ja, jb = a.get("cell_jaccards"), b.get("cell_jaccards")
    if not ja or not jb or set(ja) != set(jb):
        return None
    x, y = cell_jaccards(a), cell_jaccards(b)
    if x.shape != y.shape or x.size == 0:
        return None
    d = x - y
    mean, lo, hi = bootstrap_mean(d, n_boot=n_boot, seed=seed)
    return {"difference": mean, "low": lo, "high": hi, "cells": d.size}


def cell_jaccards(rec: dict[str, Any]) -> np.ndarray:
    """A row's per-cell Jaccard indices (the cells SEG averages), frames in name order."""
    cells = rec.get("cell_jaccards") or {}
    return np.concatenate(
        [np.asarray(cells[k], dtype=float) for k in sorted(cells)] or [np.zeros(0)]
    )


def bootstrap_mean(
    x: np.ndarray, *, n_boot: int = 4000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``x`` and its 95 % bootstrap interval (``x`` resampled with replacement)."""
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)


def nan_to_none(obj: Any) -> Any:
    """``obj`` for JSON: NaN and infinities as null, numpy scalars as Python numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_results(out: Path, res: dict[str, Any]) -> None:
    """``out/results.json`` and ``out/results.md`` (rows side by side)."""
    write_json(out / "results.json", nan_to_none(res))
    with atomic_path(out / "results.md", overwrite=True) as tmp:
        tmp.write_text(results_markdown(res))


def _f(v: Any, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _budget_lines(res: dict[str, Any], training: dict[str, Any]) -> list[str]:
    """The budget per row, and the convergence ladder that chose it."""
    conv = res.get("convergence")
    crops = training["nimg_per_epoch"]
    if not conv:
        return [f"Budget per row: {training['epochs']} epochs × {crops} crops (from scratch)."]
    lr = conv["learning_rate"]
    tol = f"{conv['tolerance']:g}"
    if conv["converged"]:
        state = f"converged: doubling the budget moves its held-out SEG by less than {tol}"
    elif conv.get("peaked"):
        state = (
            f"past its peak: doubling the budget lowers its held-out SEG by more than {tol}, "
            "so the rows train at the lower budget"
        )
    else:
        state = (
            f"**not converged** by the ladder's maximum: doubling still moves its held-out "
            f"SEG by {tol} or more"
        )
    lines = [
        f"Budget per row: {conv['epochs']} epochs × {crops} crops (from scratch)"
        + ("" if lr is None else f", learning rate {lr:g}")
        + f", chosen by the convergence ladder on row {conv['row']!r} ({state}).",
    ]
    if conv.get("sweep"):
        lines += ["", "Learning-rate sweep (row " + repr(conv["row"]) + "):", ""]
        lines += ["| learning rate | epochs | SEG | AP50 | train min |"]
        lines += ["| --- | --- | --- | --- | --- |"]
        lines += [
            f"| {r['learning_rate']:g} | {r['epochs']} | {_f(r['SEG'])} | {_f(r['AP50'])} | "
            f"{r['train_minutes']:.1f} |"
            for r in conv["sweep"]
        ]
    lines += ["", "Budget ladder (row " + repr(conv["row"]) + "):", ""]
    lines += ["| epochs | SEG | ΔSEG | AP50 | final loss | train min |"]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    prev = None
    for r in conv["ladder"]:
        delta = "–" if prev is None or r["SEG"] is None else f"{r['SEG'] - prev:+.3f}"
        lines.append(
            f"| {r['epochs']} | {_f(r['SEG'])} | {delta} | {_f(r['AP50'])} | "
            f"{_f(r.get('final_loss'), 4)} | {r['train_minutes']:.1f} |"
        )
        prev = r["SEG"]
    return lines


def _evaluation_lines(evaluation: dict[str, Any]) -> list[str]:
    t = evaluation.get("stitch_threshold")
    if t is None:
        return []
    return [
        "",
        f"Scored: each test stack segmented slice by slice in 2D, nuclei of consecutive "
        f"slices joined where they overlap by IoU >= {t:g} (not Cellpose's 3D mode).",
    ]


def _baseline_name(rows: list[dict[str, Any]]) -> str:
    """The row the others are compared with: 'real', else the first of real frames only."""
    names = [r["name"] for r in rows]
    if "real" in names:
        return "real"
    return next((r["name"] for r in rows if r["real"] and not r["synthetic"]), "real")


def results_markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    training = section_defaults("training") | {
        k: v for k, v in cfg["training"].items() if v is not None
    }
    backend = cfg["training"].get("backend")
    lines = [
        f"# {cfg['name']}: {backend or 'Cellpose'} trained on real / synthetic / both",
        "",
        f"Data `{cfg['data']}`; train {', '.join(cfg['train'])}; test {', '.join(cfg['test'])}.",
        f"Bundle: `{cfg['bundle']}`."
        if cfg.get("bundle")
        else "Bundle: learnt on "
        + ", ".join((cfg.get("learn") or {}).get("frames") or cfg["train"])
        + " (`OUT/bundle`).",
        *_budget_lines(res, training),
        *_evaluation_lines(cfg.get("evaluation") or {}),
        "",
        "| row | real frames | synthetic | p_real | SEG | AP50 | bPQ | train min | epochs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in cfg["rows"]:
        rec = res["rows"].get(r["name"])
        syn = f"{r['synthetic']}{' (curated)' if r['curated'] else ''}"
        if r.get("rho") is not None:
            syn += f" rho {r['rho']:g}"
        real = ", ".join(r["real"]) or "–"
        if rec is None:
            lines.append(f"| {r['name']} | {real} | {syn} | {r['p_real']:g} | not run | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {real} | {syn} | {r['p_real']:g} | {_f(rec['SEG'])} | "
            f"{_f(rec['AP50'])} | {_f(rec['bPQ'])} | {rec['train_seconds'] / 60:.1f} | "
            f"{rec['epochs']} |"
        )
    starts = [r for r in cfg["rows"] if r.get("start_from")]
    if starts:
        lines.append("")
        lines += [
            f"Row '{r['name']}' starts from the model of row '{r['start_from']}' (pretrained "
            "on its data), then trains on its own real frames and synthetic pairs for the same "
            "epochs at the same learning rate."
            for r in starts
        ]
    conv = res.get("convergence")
    base_name = conv["row"] if conv else _baseline_name(cfg["rows"])
    base = res["rows"].get(base_name)
    diffs = []
    for name, rec in res["rows"].items():
        if base is not None and name != base_name:
            d = paired_difference(rec, base)
            if d is not None:
                diffs.append(
                    f"| {name} | {d['difference']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] | "
                    f"{d['cells']} |"
                )
    if diffs:
        lines += [
            "",
            f"SEG difference to the {base_name!r} row over the same test cells "
            "(95 % paired bootstrap):",
            "",
            f"| row | SEG − SEG({base_name}) | 95 % interval | cells |",
            "| --- | --- | --- | --- |",
            *diffs,
        ]
    machines = {json.dumps(rec.get("machine", {}), sort_keys=True) for rec in res["rows"].values()}
    if machines:
        lines += ["", "Machine(s):"]
        lines += [f"- `{m}`" for m in sorted(machines)]
    return "\n".join(lines) + "\n"
