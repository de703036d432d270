"""napari reader: TIFF/PNG files, dataset folders and CTC folders, by drag and drop."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellsynth.errors import CellsynthInputError
from cellsynth.io import IMAGE_SUFFIXES, read_dataset

log = logging.getLogger(__name__)


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list] | None:
    """Return a reader when cellsynth recognises ``path``, else None (napari tries others)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    for p in paths:
        p = Path(p)
        if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES:
            return None
        if not p.exists():
            return None
        try:
            read_dataset(p)
        except CellsynthInputError:
            return None
    return read_layers


def read_layers(path: str | list[str]) -> list:
    from cellsynth._widgets._layers import dataset_layers

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers = []
    for p in paths:
        layers.extend(dataset_layers(read_dataset(p)))
    return layers
