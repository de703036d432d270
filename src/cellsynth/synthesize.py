"""The 2D synthesis cascade: masks -> population -> texture, and writing dataset folders.

:class:`Synthesizer` draws one fully annotated pair at a time; :func:`synthesize` yields progress
while it writes ``n`` pairs to a dataset folder, recording the bundle, the seed and every
parameter of each sample in ``dataset.json``. The same seed gives the same pair.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth.bundle import GeneratorBundle
from cellsynth.device import seeded, select_device
from cellsynth.errors import CellsynthInputError
from cellsynth.io import DatasetWriter
from cellsynth.masks import draw_sides, resize_mask, sample_masks, sides_for_areas
from cellsynth.population import cells_for_canvas, place_cells
from cellsynth.texture import paint

log = logging.getLogger(__name__)


@dataclass
class SynthesisParams:
    size: tuple[int, ...] = (256, 256)
    cells: int | None = None  # None: drawn from the training data's density
    cluster_prob: float = 0.3
    steps: int | None = None  # texture DDIM steps (None: the bundle's default)
    mask_steps: int | None = None
    seed: int = 0
    size_factor: float = 1.0  # scale the cell sizes drawn from the training data

    def validate(self) -> None:
        if len(self.size) != 2:
            raise CellsynthInputError(
                f"--size needs H W for 2D (got {list(self.size)}); 3D stacks need the 3D models"
            )
        if any(s < 16 for s in self.size):
            raise CellsynthInputError(f"canvas size {list(self.size)} is too small (min 16)")
        if self.cells is not None and self.cells < 0:
            raise CellsynthInputError(f"--cells must be >= 0, got {self.cells}")
        if not 0.0 <= self.cluster_prob <= 1.0:
            raise CellsynthInputError(
                f"--cluster-prob must be between 0 and 1, got {self.cluster_prob}"
            )
        if self.steps is not None and self.steps < 1:
            raise CellsynthInputError(f"--steps must be >= 1, got {self.steps}")


@dataclass
class SyntheticPair:
    image: np.ndarray
    labels: np.ndarray
    table: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)


class Synthesizer:
    """Draw synthetic image/label pairs from a :class:`GeneratorBundle`."""

    def __init__(
        self, bundle: GeneratorBundle | str | Path | None = None, device: str | Any = "auto"
    ) -> None:
        self.device = select_device(device)
        if not isinstance(bundle, GeneratorBundle):
            bundle = GeneratorBundle.load(bundle, device=self.device)
        self.bundle = bundle.to(self.device)
        self.mask_sampler = bundle.mask_sampler()
        self.texture_sampler = bundle.texture_sampler()

    def cell_masks(
        self,
        n: int,
        rng: np.random.Generator,
        gen: torch.Generator,
        steps: int | None = None,
        size_factor: float = 1.0,
    ) -> list[np.ndarray]:
        """``n`` single-cell masks at sizes drawn from the training data."""
        if n == 0:
            return []
        b = self.bundle
        norm = sample_masks(
            b.mask_unet,
            self.mask_sampler,
            n,
            size=b.mask_cfg.sample_size,
            steps=steps or b.mask_cfg.sampling_steps,
            generator=gen,
            device=self.device,
        )
        if b.areas is not None:
            sides = sides_for_areas(norm, b.areas, len(norm), rng, size_factor)
        else:  # bundles written before cell areas were recorded
            sides = draw_sides(b.scales, b.crop_size, len(norm), rng, size_factor)
        return [resize_mask(m, int(s)) for m, s in zip(norm, sides, strict=True)]

    def sample(self, params: SynthesisParams) -> SyntheticPair:
        params.validate()
        b = self.bundle
        rng, gen = seeded(params.seed)
        n = (
            params.cells
            if params.cells is not None
            else cells_for_canvas(b.density, params.size, rng)
        )
        t0 = time.perf_counter()
        masks = self.cell_masks(n, rng, gen, params.mask_steps, params.size_factor)
        t1 = time.perf_counter()
        pop = place_cells(masks, params.size, cluster_prob=params.cluster_prob, rng=rng)
        t2 = time.perf_counter()
        image = paint(
            b.texture_unet,
            self.texture_sampler,
            pop.labels,
            b.intensity,
            cfg=b.texture_cfg,
            steps=params.steps or b.texture_cfg.sampling_steps,
            generator=gen,
            device=self.device,
        )
        t3 = time.perf_counter()
        log.debug("masks %.2fs, population %.2fs, texture %.2fs", t1 - t0, t2 - t1, t3 - t2)
        info = asdict(params)
        info.update(
            size=list(params.size),
            cells_requested=n,
            cells_placed=pop.n_cells,
            bundle=str(b.path) if b.path else None,
            timing={"masks": t1 - t0, "population": t2 - t1, "texture": t3 - t2},
        )
        return SyntheticPair(image=image, labels=pop.labels, table=pop.table, params=info)


def synthesize(
    out: str | Path,
    n: int,
    params: SynthesisParams,
    *,
    bundle: GeneratorBundle | str | Path | None = None,
    device: str = "auto",
    prefix: str = "synth_",
) -> Iterator[tuple[int, int, str]]:
    """Write ``n`` pairs (seeds ``seed, seed+1, ...``) to a dataset folder; yields (i, n, name)."""
    params.validate()
    if n < 1:
        raise CellsynthInputError(f"-n must be >= 1, got {n}")
    synth = Synthesizer(bundle, device=device)
    b = synth.bundle
    writer = DatasetWriter(
        out,
        voxel_size=b.voxel_size,
        origin="synthetic",
        meta={"bundle": str(b.path) if b.path else None},
    )
    for i in range(n):
        p = SynthesisParams(**{**asdict(params), "seed": params.seed + i})
        pair = synth.sample(p)
        name = writer.free_name(prefix)
        record = {
            "origin": "synthetic",
            "bundle": str(b.path) if b.path else None,
            **pair.params,
            "status": "unreviewed",
        }
        writer.add(name, pair.image, pair.labels, record=record)
        yield i + 1, n, name
