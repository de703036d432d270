"""The data that ship with cellsynth, so everything works without data of one's own."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from cellsynth.io import Dataset, read_dataset

SAMPLE_NAME = "dsb_4327d2759187"  # the image with most nuclei (31) of the shipped set


def sample_dataset_path() -> Path:
    """Folder of the built-in CC0 nuclei data set (12 images of 360×360, see its README)."""
    return Path(str(files("cellsynth") / "data" / "dsb2018_nuclei"))


def sample_dataset() -> Dataset:
    return read_dataset(sample_dataset_path(), require_labels=True)


def sample_pair_paths() -> tuple[Path, Path]:
    root = sample_dataset_path()
    return root / "images" / f"{SAMPLE_NAME}.tif", root / "labels" / f"{SAMPLE_NAME}.tif"
