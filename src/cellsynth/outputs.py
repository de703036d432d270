"""The output policy: where cellsynth may write synthetic pairs, and what it may read as synthetic.

Every command and widget that writes synthetic or curated pairs asks :func:`check_synthetic_target`
first, and every place that takes a folder as *synthetic* input asks :func:`check_synthetic_source`,
so a user's real annotations are never mixed with, hidden by or mistaken for generated data.
"""

from __future__ import annotations

import json
from pathlib import Path

from cellsynth.errors import CellsynthInputError

_IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


def dataset_origin(folder: str | Path) -> str | None:
    """The ``origin`` recorded in ``folder/dataset.json`` (``None`` when there is none)."""
    meta_path = Path(folder) / "dataset.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CellsynthInputError(f"is not valid JSON ({exc})", meta_path) from exc
    if not isinstance(meta, dict):
        raise CellsynthInputError("must hold a JSON object", meta_path)
    origin = meta.get("origin")
    return str(origin) if origin is not None else None


def is_synthetic_origin(origin: str | None) -> bool:
    return origin is not None and origin.startswith("synthetic")


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(
        p.suffix.lower() in _IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file()
    )


def check_synthetic_target(folder: str | Path) -> Path:
    """Refuse to write synthetic pairs into a folder that holds real (or foreign) data.

    Allowed: a folder that does not exist, an empty folder, or a cellsynth dataset whose
    ``dataset.json`` says its origin is synthetic. Refused, with a message saying where to write
    instead: a file, a folder with ``masks/`` (writing ``labels/`` would hide them), a folder whose
    ``dataset.json`` says ``origin: real``, or images/labels without a synthetic ``dataset.json``.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise CellsynthInputError(
            "exists and is not a folder; choose a new folder for synthetic pairs", folder
        )
    origin = dataset_origin(folder)
    hint = f"write synthetic pairs to a new folder instead, e.g. {folder.name}-synthetic beside it"
    if (folder / "masks").is_dir():
        raise CellsynthInputError(
            f"holds annotations in masks/; adding labels/ would hide them — {hint}", folder
        )
    if origin is not None and not is_synthetic_origin(origin):
        raise CellsynthInputError(
            f"is a data set of origin {origin!r} (dataset.json); cellsynth never mixes synthetic "
            f"pairs into it — {hint}",
            folder,
        )
    if origin is None and (
        _has_files(folder / "images") or _has_files(folder / "labels") or _has_files(folder)
    ):
        raise CellsynthInputError(
            f"already holds images that cellsynth did not synthesize — {hint}", folder
        )
    return folder


def check_synthetic_source(folder: str | Path) -> Path:
    """Refuse a real annotated data set where synthetic pairs are expected (curation input)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CellsynthInputError("no such folder", folder)
    origin = dataset_origin(folder)
    if not is_synthetic_origin(origin):
        said = f"origin {origin!r}" if origin else "no cellsynth dataset.json"
        raise CellsynthInputError(
            f"is not a synthetic data set ({said}); pick a folder written by cellsynth synthesize",
            folder,
        )
    return folder
