"""The ``cellsynth`` command line: the same core functions the napari widgets call.

Bad input ends with one line on stderr naming the file and the problem, and exit code 2;
``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellsynth import __version__
from cellsynth.errors import CellsynthInputError

log = logging.getLogger("cellsynth")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return "×".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else str(v)
    return "-" if v is None else str(v)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: Any = None) -> None:
    """A plain aligned text table (no dependency), for humans; JSON is printed separately."""
    out = out or sys.stdout
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), file=out)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- sub-commands


def cmd_info(args: argparse.Namespace) -> int:
    from cellsynth.io import read_dataset

    if args.path is None:
        from cellsynth.samples import sample_dataset_path

        args.path = sample_dataset_path()
        log.info("no PATH given: describing the built-in sample data set")
    ds = read_dataset(args.path)
    rows = [p.describe() for p in ds.pairs]
    print(f"{ds.root}  ({ds.kind}, {len(rows)} item{'s' if len(rows) != 1 else ''})")
    cols = ["name", "shape", "axes", "dtype", "labels_dtype", "cells", "voxel_size"]
    if any(r.get("annotated_slices") for r in rows):
        cols.append("annotated_slices")
    print_table(rows, [c for c in cols if any(c in r for r in rows)])
    total = sum(r.get("cells", 0) for r in rows)
    summary = {
        "path": str(ds.root),
        "kind": ds.kind,
        "n_items": len(rows),
        "n_labelled": sum("cells" in r for r in rows),
        "n_cells": total,
        "items": rows,
    }
    if args.json:
        from cellsynth.io import write_json

        write_json(args.json, summary)
    print(json.dumps(_json_safe({k: v for k, v in summary.items() if k != "items"})))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cellsynth.io import read_dataset, write_json
    from cellsynth.metrics import evaluate_datasets

    pred = read_dataset(args.pred, labels_only=True)
    ref = read_dataset(args.gt, labels_only=True)
    for ds, what in ((pred, "PRED"), (ref, "GT")):
        if not ds.labelled():
            raise CellsynthInputError(f"{what} holds no label images", ds.root)
    ev = evaluate_datasets(pred, ref)
    print_table(
        ev.rows(), ["name", "n_reference", "n_predicted", "SEG", "AP50", "AP75", "AP90", "bPQ"]
    )
    if ev.unmatched_predictions:
        log.warning(
            "predictions without a reference frame (ignored): %s",
            ", ".join(ev.unmatched_predictions[:10]),
        )
    if ev.unmatched_references:
        log.warning(
            "reference frames without a prediction (not scored): %s",
            ", ".join(ev.unmatched_references[:10]),
        )
    summary = ev.summary()
    if args.json:
        write_json(args.json, _json_safe({"summary": summary, "frames": ev.rows()}))
    print(json.dumps(_json_safe(summary)))
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellsynth",
        description="Learn cells from a few annotated microscopy images, synthesize annotated "
        "2D/3D data and fine-tune Cellpose.",
    )
    parser.add_argument("--version", action="version", version=f"cellsynth {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "info",
        help="describe what cellsynth reads from a file or folder",
        description="Read a TIFF/PNG file, a dataset folder (images/ + labels/) or a Cell "
        "Tracking Challenge folder and list shapes, dtypes, cell counts and voxel size. The last "
        "line of output is a JSON summary.",
    )
    p.add_argument("path", type=Path, nargs="?",
                   help="file or folder (default: the built-in CC0 nuclei data set)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the full report here")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "evaluate",
        help="score predicted labels against reference labels (SEG, AP, bPQ)",
        description="Compare predicted instance labels with reference labels. PRED and GT are "
        "each a TIFF, a dataset folder or a CTC folder; frames are paired by name, then by frame "
        "number (t013.tif <-> man_seg013.tif). Prints a per-image table and, as the last line, "
        "a JSON object with SEG, AP50, AP75, AP90, bPQ, n_images, n_reference.",
    )
    p.add_argument("pred", type=Path, help="predicted labels (file or folder)")
    p.add_argument("gt", type=Path, help="reference labels (file or folder)")
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="also write summary and per-image rows here"
    )
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CellsynthInputError as exc:
        if args.debug:
            raise
        print(f"cellsynth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cellsynth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
