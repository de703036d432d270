"""``cellsynth demo``: the whole 2D cascade on the built-in bundle and data, in about a minute."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cellsynth.bundle import GeneratorBundle
from cellsynth.io import count_cells, read_dataset, write_json
from cellsynth.report import realism_figure, realism_summary
from cellsynth.samples import sample_dataset
from cellsynth.synthesize import SynthesisParams, synthesize

log = logging.getLogger(__name__)


def _fresh(path: Path) -> Path:
    """``path`` if it does not exist, else ``path-2``, ``path-3`` ...: never reuse a folder."""
    if not path.exists():
        return path
    i = 2
    while path.with_name(f"{path.name}-{i}").exists():
        i += 1
    return path.with_name(f"{path.name}-{i}")


def run_demo(
    output: str | Path = "cellsynth-demo",
    *,
    n: int = 6,
    size: tuple[int, int] = (360, 360),
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    out = _fresh(Path(output))
    bundle = GeneratorBundle.load(None)
    params = SynthesisParams(size=size, seed=seed)
    for i, total, name in synthesize(out, n, params, bundle=bundle, device=device):
        log.info("synthesized %s (%s/%s)", name, i, total)
    synthetic = read_dataset(out, require_labels=True).pairs
    real = sample_dataset().pairs
    summary = realism_summary(real, synthetic, seed=seed, two_sample=True)
    texture = summary["texture"]
    figure = realism_figure(
        real,
        synthetic,
        out / "realism.png",
        title="cellsynth demo: built-in bundle, real (DSB 2018 nuclei) vs synthetic",
    )
    write_json(out / "realism.json", summary)
    return {
        "output": str(out),
        "figure": str(figure),
        "summary": {
            "n": n,
            "size": list(size),
            "seed": seed,
            "cells": sum(count_cells(p.labels) for p in synthetic),
            "realism_w1_synthetic_to_real": summary["synthetic_to_real"].get("mean", {}).get("w1"),
            "realism_w1_real_to_real": summary.get("real_to_real", {}).get("mean", {}).get("w1"),
            # scale-free look, synthetic / real (1 = same; the target is within 1.5x)
            "look_ratio_synthetic_to_real": {
                k: round(v["ratio"], 3) for k, v in texture["synthetic_vs_real"].items()
            },
            "real_vs_synthetic_classifier_accuracy": texture.get("two_sample", {})
            .get("real_vs_synthetic", {})
            .get("accuracy"),
        },
    }
