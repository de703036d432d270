"""Copy a 2D bundle learnt by an older cellsynth, recording what ``learn`` records today.

    python scripts/upgrade_bundle.py OLD_BUNDLE DATA... -o NEW_BUNDLE

* ``cells.mean_intensities``: the mean intensity of every training cell, which
  ``synthesize --brightness data`` draws from (bundles from before session 3 lack it);
* ``cells.touching_fraction``, ``cells.min_cut_area`` and ``cells.edge_cut``: the fraction of
  training cells that touch another; the 5th percentile of the areas of the cells the image
  border cuts (no synthetic frame shows a smaller sliver of a cell cut by its edge); how often a
  synthetic cell may overhang the canvas edge so that frames show the training frames' share of
  cut cells;
* ``cells.cluster_prob`` and ``cells.cluster_band``: the clustering of the placement fitted to
  the training frames' nearest-neighbour distances (``population.fit_clustering``; before: 0.3
  and 0.5);
* ``cells.mask_smooth``: the smoothing of the sampled masks' outlines, fitted so that their
  solidity matches the training cells' (``masks.fit_smoothing``; before: 1.25 model pixels);
* ``optical_blur``: the Gaussian blur synthesis puts on the painted image (``sigma``) and the
  softening of the cells' boundaries (``edge_sigma``), fitted so that the synthetic cells'
  boundary gradients and inner grain are distributed like the training cells'
  (``Synthesizer.fit_blur``; before: none);
* ``exemplars.safetensors``: the training cells the texture starts from (exemplar-guided
  texture, ``cellsynth.exemplars``), for a bundle that has none (2D bundles from before
  December 2026, 3D bundles from before December 3, 2026); for a 3D bundle the slice
  correlation ``texture3d.rho`` is then calibrated again, painting as synthesis now paints;
* ``shape_prior.z_equators`` (3D): the heights at which the training cells are widest, where
  synthesis places its cells' equators (before: anywhere in the stack);
* the mask model samples with UniPC in 12 steps (``mask_config.sampler``), which gives cells as
  elongated as 50 DDIM steps; 8 DDIM steps made them rounder than the training cells
  (docs/synthesis.md, "Cell shapes").

Give the same training data the bundle was learnt on: the
values are computed with the atlas code ``learn`` uses. The old bundle is not modified.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from cellsynth import exemplars
from cellsynth.atlas import build_atlas
from cellsynth.bundle import GeneratorBundle
from cellsynth.errors import CellsynthInputError
from cellsynth.io import labelled_slices, read_pairs, write_json
from cellsynth.learn import exemplar_sources, layout_record, training_solidity
from cellsynth.masks import fit_bundle_smoothing, mask_config
from cellsynth.synthesize import Synthesizer


def recalibrated_rho(folder: Path, pairs: list, meta: dict) -> dict:
    """The slice correlation rho of a 3D bundle calibrated as ``learn --3d`` does."""
    from cellsynth.learn3d import fit_rho
    from cellsynth.settings import Learn3DSettings

    recorded = meta.get("settings_3d") or {}
    grid = tuple(recorded.get("rho_grid") or Learn3DSettings.rho_grid)
    side = int(recorded.get("calibration_side") or Learn3DSettings.calibration_side)
    seed = int(meta.get("settings", {}).get("seed", 0))
    texture3d = fit_rho(GeneratorBundle.load(folder, device="cpu"), pairs, grid, side, seed)
    return texture3d if texture3d.get("rho") is not None else meta.get("texture3d") or {}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("data", type=Path, nargs="+")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    meta = json.loads((args.bundle / "bundle.json").read_text())
    pairs = read_pairs(args.data, require_labels=True)
    names = meta["training_data"]["names"]
    pairs = [p for p in pairs if p.name in names]
    if sorted(p.name for p in pairs) != sorted(names):
        raise CellsynthInputError(f"the bundle was learnt on {names}; give that data")
    atlas = build_atlas(pairs, crop_size=int(meta["cells"]["crop_size"]))
    if args.output.exists():
        raise CellsynthInputError("exists; choose a new folder", args.output)
    shutil.copytree(args.bundle, args.output, ignore=shutil.ignore_patterns("training_state"))
    slices = [lab for p in pairs for _, _, lab in labelled_slices(p)]
    new = mask_config()
    meta["cells"]["mean_intensities"] = atlas.mean_intensities()
    record = layout_record(atlas, slices)
    meta["cells"].update(record)
    meta["mask_config"]["sampler"] = new.sampler
    meta["mask_config"]["sampling_steps"] = new.sampling_steps
    meta["derived_from"] = str(args.bundle)
    if atlas.ndim == 3 and "z_equators" not in meta.get("shape_prior", {}):
        from cellsynth.learn3d import z_equators

        eq = z_equators(pairs, meta["voxel_size"])
        meta.setdefault("shape_prior", {})["z_equators"] = record["z_equators"] = eq
    write_json(args.output / "bundle.json", meta)
    if atlas.ndim == 2:  # with the new sampler settings in place; the blur with the smoothing
        bundle = GeneratorBundle.load(args.output)
        smooth = fit_bundle_smoothing(bundle, training_solidity(atlas))
        meta["cells"]["mask_smooth"] = record["mask_smooth"] = smooth
        bundle.meta["cells"]["mask_smooth"] = smooth
        images = [img for p in pairs for _, img, _ in labelled_slices(p)]
        fit = Synthesizer(bundle, device="cpu").fit_blur(images, slices)
        meta["optical_blur"] = record["optical_blur"] = fit
        write_json(args.output / "bundle.json", meta)
    if not (args.output / exemplars.FILE).exists():
        cells = exemplars.collect(*exemplar_sources(pairs))
        exemplars.save(cells, args.output / exemplars.FILE)
        meta["exemplar_strength"] = exemplars.DEFAULT_STRENGTH
        record["exemplars"] = len(cells)
        write_json(args.output / "bundle.json", meta)
        if atlas.ndim == 3:
            record["texture3d"] = meta["texture3d"] = recalibrated_rho(args.output, pairs, meta)
            write_json(args.output / "bundle.json", meta)
    print(json.dumps({"bundle": str(args.output), **record}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
