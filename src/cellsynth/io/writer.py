"""Adding image/label pairs to a dataset folder: :class:`DatasetWriter`."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError
from cellsynth.io.atomic import write_json
from cellsynth.io.tiff import write_tiff
from cellsynth.io.validate import check_same_shape, read_dataset_json, validate_labels


class DatasetWriter:
    """Add image/label pairs to a dataset folder without ever overwriting a file.

    ``dataset.json`` records the voxel size, the origin (``real``/``synthetic``) and one record
    per sample (generator bundle, seed, parameters, curation status ...).

    Several writers (threads or processes) may add to one folder: every write holds the folder's
    lock (:func:`cellsynth.locks.folder_lock`) and merges its records into the ``dataset.json``
    on disk (read, merge, write), so no record is lost. A writer of synthetic pairs
    (``origin="synthetic..."``) refuses a folder of real data (:func:`check_synthetic_target`).
    Nothing is created before the first pair: a run that fails early leaves no empty folders.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        voxel_size: Sequence[float] | None = None,
        origin: str = "real",
        meta: dict[str, Any] | None = None,
    ) -> None:
        from cellsynth.outputs import check_synthetic_target, is_synthetic_origin

        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise CellsynthInputError("exists and is not a folder", self.root)
        if is_synthetic_origin(origin):
            check_synthetic_target(self.root)
        self._defaults: dict[str, Any] = {
            "format": "cellsynth-dataset/1",
            "origin": origin,
            "voxel_size": list(voxel_size) if voxel_size is not None else None,
        }
        self._extra = dict(meta or {})
        self._base: dict[str, Any] = {}  # dataset.json as last read: what differs is ours
        self._depth = 0
        self.meta: dict[str, Any] = {}
        self.meta = self._merged()

    def _merged(self) -> dict[str, Any]:
        """dataset.json as on disk, with this writer's changes since it last read it on top
        (new or edited sample records; new or edited top-level keys, objects merged by key)."""
        disk = read_dataset_json(self.root) if self.root.is_dir() else {}
        meta = dict(disk) if disk else dict(self._defaults)
        meta.update(self._extra)
        meta["samples"] = dict(meta.get("samples") or {})
        base_samples = self._base.get("samples", {})
        for key, value in self.meta.items():
            if key == "samples" or value == self._base.get(key):
                continue
            if isinstance(value, dict) and isinstance(meta.get(key), dict):
                meta[key] = {**meta[key], **value}
            else:
                meta[key] = value
        for name, rec in self.meta.get("samples", {}).items():
            if rec != base_samples.get(name):
                meta["samples"][name] = rec
        self._base = copy.deepcopy(meta)
        return meta

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Hold the folder's lock, with :attr:`meta` fresh from disk; write it back at the end.

        Waits up to a minute for another writer of the same folder (a write takes seconds).
        """
        from cellsynth.locks import folder_lock

        if self._depth:
            self._depth += 1
            try:
                yield self.meta
            finally:
                self._depth -= 1
            return
        with folder_lock(self.root, "dataset folder", wait=60.0):
            self._depth = 1
            try:
                self.meta = self._merged()
                yield self.meta
                write_json(self.root / "dataset.json", self.meta)
                self._base = copy.deepcopy(self.meta)
            finally:
                self._depth = 0

    def reload(self) -> dict[str, Any]:
        """Re-read dataset.json (other writers' records appear), keeping this writer's changes."""
        self.meta = self._merged()
        return self.meta

    def exists(self, name: str) -> bool:
        return any((self.root / d / f"{name}.tif").exists() for d in ("images", "labels"))

    def free_name(self, prefix: str, start: int = 0) -> str:
        """The first ``{prefix}{i:04d}`` (i >= start) not used in this dataset (files or
        records)."""
        i = start
        samples = self.meta.get("samples", {})
        while self.exists(f"{prefix}{i:04d}") or f"{prefix}{i:04d}" in samples:
            i += 1
        return f"{prefix}{i:04d}"

    def add(
        self,
        name: str,
        image: np.ndarray | None,
        labels: np.ndarray | None,
        *,
        voxel_size: Sequence[float] | None = None,
        record: dict[str, Any] | None = None,
    ) -> tuple[Path | None, Path | None]:
        """Write one pair as ``images/NAME.tif`` and ``labels/NAME.tif`` and record it."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise CellsynthInputError(f"invalid sample name {name!r}", self.root)
        if image is not None and labels is not None:
            check_same_shape(np.asarray(image), np.asarray(labels), name)
        if labels is not None:
            labels = validate_labels(labels, name, allow_binary=False)
        with self.transaction() as meta:
            if self.exists(name) or name in meta["samples"]:
                raise CellsynthInputError(
                    f"sample {name!r} already exists; cellsynth never overwrites files", self.root
                )
            vs = voxel_size if voxel_size is not None else meta.get("voxel_size")
            img_path = lab_path = None
            try:
                if labels is not None:
                    lab_path = write_tiff(
                        self.root / "labels" / f"{name}.tif", labels, voxel_size=vs
                    )
                if image is not None:
                    img_path = write_tiff(
                        self.root / "images" / f"{name}.tif", image, voxel_size=vs
                    )
            except BaseException:
                for written in (lab_path, img_path):  # this run's own half-written pair
                    if written is not None:
                        written.unlink(missing_ok=True)
                raise
            rec = dict(record or {})
            if voxel_size is not None:
                rec["voxel_size"] = list(voxel_size)
            meta["samples"][name] = rec
        return img_path, lab_path

    def save(self) -> None:
        """Write this writer's changes to :attr:`meta` into dataset.json (read-merge-write under
        the folder's lock: other writers' records are kept)."""
        with self.transaction():
            pass
