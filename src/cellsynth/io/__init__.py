"""Read and write microscopy images, instance label images, dataset folders and CTC folders.

Three layouts are understood, all read lazily (arrays load on first access): dataset folders
(``images/`` + ``labels/``, optional ``dataset.json``), Cell Tracking Challenge folders and single
files; :mod:`cellsynth.io.layouts` describes them. Label images are integer instance maps
(0 = background) of up to uint32. Every check of a label image lives in :func:`validate_labels`;
every problem raises :class:`CellsynthInputError` naming the file. Writers never overwrite an
existing file and appear atomically (temporary file, then a hard link that fails if the name was
taken meanwhile).

The modules, lowest first:

* :mod:`~cellsynth.io.atomic` — :func:`atomic_path`, :func:`write_json`;
* :mod:`~cellsynth.io.tiff` — one image file: :func:`read_array` (axes, voxel size),
  :func:`as_grayscale`, :func:`write_tiff`;
* :mod:`~cellsynth.io.validate` — :func:`validate_labels`, shape checks, ``dataset.json``;
* :mod:`~cellsynth.io.names` — what file names say (labels?, frame, CTC slice, pairing);
* :mod:`~cellsynth.io.pairs` — :class:`Pair` and :class:`Dataset`, loaded on first access;
* :mod:`~cellsynth.io.layouts` — :func:`read_dataset`: which layout a path holds;
* :mod:`~cellsynth.io.writer` — :class:`DatasetWriter`.
"""

from cellsynth.errors import CellsynthInputError
from cellsynth.io.atomic import _umask as _umask  # bundle and training set file modes with it
from cellsynth.io.atomic import atomic_path, write_json
from cellsynth.io.layouts import read_dataset, read_pairs
from cellsynth.io.names import (
    LABEL_DIR_NAMES,
    ctc_slice,
    frame_key,
    is_label_name,
    pair_files,
)
from cellsynth.io.pairs import Dataset, Pair, count_cells, labelled_slices
from cellsynth.io.tiff import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    ImageData,
    as_grayscale,
    read_array,
    read_display_image,
    write_tiff,
)
from cellsynth.io.validate import (
    MAX_LABEL_DTYPE,
    check_dataset_meta,
    check_same_shape,
    require_3d,
    validate_labels,
)
from cellsynth.io.writer import DatasetWriter

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_DIR_NAMES",
    "MAX_LABEL_DTYPE",
    "TIFF_SUFFIXES",
    "CellsynthInputError",
    "Dataset",
    "DatasetWriter",
    "ImageData",
    "Pair",
    "as_grayscale",
    "atomic_path",
    "check_dataset_meta",
    "check_same_shape",
    "count_cells",
    "ctc_slice",
    "frame_key",
    "is_label_name",
    "labelled_slices",
    "pair_files",
    "read_array",
    "read_dataset",
    "read_display_image",
    "read_pairs",
    "require_3d",
    "validate_labels",
    "write_json",
    "write_tiff",
]
