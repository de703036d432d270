"""Copy a bundle learnt before cellsynth recorded per-cell brightness, adding it.

    python scripts/add_cell_intensities.py OLD_BUNDLE DATA... -o NEW_BUNDLE

``cellsynth learn`` now stores the mean intensity of every training cell in ``bundle.json``
(``cells.mean_intensities``), which ``synthesize --brightness data`` draws from. For an older
bundle, give the same training data it was learnt on: the values are computed with the same
atlas code ``learn`` uses. The old bundle is not modified.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from cellsynth.atlas import build_atlas
from cellsynth.errors import CellsynthInputError
from cellsynth.io import read_pairs, write_json


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
    values = atlas.mean_intensities()
    if args.output.exists():
        raise CellsynthInputError("exists; choose a new folder", args.output)
    shutil.copytree(args.bundle, args.output, ignore=shutil.ignore_patterns("training_state"))
    meta["cells"]["mean_intensities"] = values
    meta["derived_from"] = str(args.bundle)
    write_json(args.output / "bundle.json", meta)
    print(json.dumps({"bundle": str(args.output), "cells": len(values)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
