"""napari sample data: the built-in CC0 nuclei image(s) with their labels."""

from __future__ import annotations

from cellsynth._widgets._layers import dataset_layers
from cellsynth.io import read_dataset
from cellsynth.samples import sample_dataset_path, sample_pair_paths


def make_sample_nuclei() -> list:
    image_path, _ = sample_pair_paths()
    return dataset_layers(read_dataset(image_path))


def make_sample_nuclei_set() -> list:
    return dataset_layers(read_dataset(sample_dataset_path()))
