"""Recognise what a path holds and read it as a :class:`~cellsynth.io.pairs.Dataset`.

* **Dataset folder**: ``images/NAME.tif`` + ``labels/NAME.tif`` (``masks/`` is accepted too),
  with an optional ``dataset.json`` (voxel size, origin, per-sample records). Images and labels
  are paired by name, then by the frame number in the name (``t01.tif`` <-> ``man_seg01.tif``).
* **Cell Tracking Challenge folder**: ``01/t000.tif``, ``01_GT/SEG/man_seg000.tif``,
  ``01_GT/SEG/man_seg_000_012.tif`` (slice 12 of 3D frame 0 annotated on its own),
  ``01_ST/SEG/``, ``01_RES/mask000.tif``. The folder given may be the challenge folder (holding
  ``01``, ``02`` ...), one sequence folder, or a ``SEG``/``RES`` folder of labels alone.
* **Single files**: a TIFF (2D, 3D ZYX, time series) or PNG. An image file inside ``images/``
  picks up its labels from the sibling ``labels/`` or ``masks/`` folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cellsynth.errors import CellsynthInputError
from cellsynth.io.names import (
    ctc_frame,
    ctc_slice,
    frame_key,
    group_slices,
    is_label_name,
    list_images,
    name_stem,
    pair_files,
)
from cellsynth.io.pairs import Dataset, Pair
from cellsynth.io.tiff import IMAGE_SUFFIXES
from cellsynth.io.validate import read_dataset_json

_CTC_SEQ = re.compile(r"^\d{2,}$")


def read_dataset(
    path: str | Path,
    *,
    require_labels: bool = False,
    require_images: bool = False,
    labels_only: bool = False,
) -> Dataset:
    """Recognise and read ``path`` (file, dataset folder, CTC folder, folder of files).

    Arrays are loaded lazily; ``require_labels``/``require_images`` raise at once when some
    pair lacks its labels/image, naming the files. With ``labels_only`` (predictions to score)
    a single file or a plain folder of files is taken as label images whatever their names.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CellsynthInputError("no such file or folder", path)
    if labels_only and (
        path.is_file()
        or not ((path / "images").is_dir() or _ctc_sequences(path) or _ctc_sequence_self(path))
    ):
        ds = _read_labels_only(path)
    elif path.is_file():
        ds = _read_single_file(path)
    elif (path / "images").is_dir():  # a dataset folder, with or without its labels/
        ds = _read_dataset_folder(path)
    elif _ctc_sequences(path) or _ctc_sequence_self(path):
        ds = _read_ctc(path)
    else:
        ds = _read_flat_folder(path)
    if not ds.pairs:
        raise CellsynthInputError(
            "holds no images or label images cellsynth can read (.tif, .tiff, .png)", path
        )
    if require_labels:
        missing = [p for p in ds.pairs if not p.has_labels]
        if missing:
            raise CellsynthInputError(
                f"{len(missing)} image(s) have no labels, e.g. {missing[0].image_path}; expected "
                "labels/ (or masks/) beside images/ with the same names",
                path,
            )
    if require_images:
        missing = [p for p in ds.pairs if not p.has_image]
        if missing:
            raise CellsynthInputError(
                f"{len(missing)} label image(s) have no image, e.g. {missing[0].labels_path}",
                path,
            )
    return ds


def read_pairs(paths: Iterable[str | Path], **kwargs: Any) -> list[Pair]:
    """Read several paths and concatenate their pairs."""
    out: list[Pair] = []
    for p in paths:
        out.extend(read_dataset(p, **kwargs).pairs)
    return out


def _find_label_dir(root: Path) -> Path | None:
    for name in ("labels", "masks"):
        if (root / name).is_dir():
            return root / name
    return None


def _read_dataset_folder(root: Path) -> Dataset:
    meta = read_dataset_json(root)
    label_dir = _find_label_dir(root)
    voxel = tuple(meta["voxel_size"]) if meta.get("voxel_size") else None
    pairs = []
    labels = list_images(label_dir) if label_dir is not None else []
    for img, lab in pair_files(list_images(root / "images"), labels):
        name = name_stem(img if img is not None else lab)  # type: ignore[arg-type]
        rec = meta.get("samples", {}).get(name, {})
        vs = tuple(rec["voxel_size"]) if rec.get("voxel_size") else voxel
        pairs.append(
            Pair(name=name, image_path=img, labels_path=lab, voxel_size=vs, key=frame_key(name))
        )
    return Dataset(root=root, kind="dataset", pairs=pairs, meta=meta)


def _ctc_sequences(root: Path) -> list[str]:
    return sorted(
        d.name for d in root.iterdir() if d.is_dir() and _CTC_SEQ.match(d.name) and list_images(d)
    )


def _ctc_sequence_self(root: Path) -> bool:
    return bool(_CTC_SEQ.match(root.name)) and (
        (root.parent / f"{root.name}_GT").is_dir() or (root.parent / f"{root.name}_ST").is_dir()
    )


def _ctc_label_files(
    seq_root: Path, seq: str
) -> tuple[dict[int, Path], dict[int, dict[int, Path]], str]:
    """Dense and slice-wise label files of one sequence, GT preferred over ST."""
    for source in ("GT", "ST"):
        seg = seq_root / f"{seq}_{source}" / "SEG"
        if seg.is_dir():
            whole, sparse = group_slices(list_images(seg))
            dense: dict[int, Path] = {}
            for p in whole:
                t = ctc_frame(name_stem(p))
                if t is not None:
                    dense[t] = p
            return dense, sparse, source
    return {}, {}, ""


def _read_ctc(path: Path) -> Dataset:
    if _ctc_sequence_self(path):
        parent, seqs = path.parent, [path.name]
    else:
        parent, seqs = path, _ctc_sequences(path)
    pairs: list[Pair] = []
    sources = {}
    for seq in seqs:
        dense, sparse, source = _ctc_label_files(parent, seq)
        sources[seq] = source
        for img in list_images(parent / seq):
            t = frame_key(name_stem(img))
            name = f"{seq}_{name_stem(img)}" if len(seqs) > 1 else name_stem(img)
            pairs.append(
                Pair(
                    name=name,
                    image_path=img,
                    labels_path=dense.get(t) if isinstance(t, int) else None,
                    slice_paths=dict(sparse.get(t, {}))
                    if isinstance(t, int) and t not in dense
                    else {},
                    key=t if len(seqs) == 1 else f"{seq}_{t}",
                )
            )
    return Dataset(root=path, kind="ctc", pairs=pairs, meta={"label_source": sources})


def _slice_pairs(sparse: dict[int, dict[int, Path]]) -> list[Pair]:
    """One pair per 3D frame annotated on single slices (CTC ``man_seg_TTT_ZZZ`` files)."""
    return [
        Pair(name=f"man_seg{t:03d}", slice_paths=slices, key=t)
        for t, slices in sorted(sparse.items())
    ]


def _read_flat_folder(root: Path) -> Dataset:
    files = list_images(root)
    labels = [p for p in files if is_label_name(p)]
    images = [p for p in files if p not in labels]
    # CTC label folders (SEG/, RES/): several slice files may make one 3D frame
    dense_labels, sparse = group_slices(labels)
    pairs = []
    for img, lab in pair_files(images, dense_labels):
        name = name_stem(img if img is not None else lab)  # type: ignore[arg-type]
        pairs.append(Pair(name=name, image_path=img, labels_path=lab, key=frame_key(name)))
    pairs += _slice_pairs(sparse)
    return Dataset(root=root, kind="folder", pairs=pairs, meta=read_dataset_json(root))


def _read_labels_only(path: Path) -> Dataset:
    files = [path] if path.is_file() else list_images(path)
    files = [p for p in files if is_label_name(p)] or files  # a folder of images + masks
    for p in files:
        _check_suffix(p)
    whole, sparse = group_slices(files)
    pairs = [Pair(name=name_stem(p), labels_path=p, key=frame_key(name_stem(p))) for p in whole]
    pairs += _slice_pairs(sparse)
    return Dataset(root=path, kind="file" if path.is_file() else "folder", pairs=pairs)


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise CellsynthInputError(
            f"unsupported file type {path.suffix!r} (cellsynth reads .tif, .tiff and .png)", path
        )


def _read_single_file(path: Path) -> Dataset:
    _check_suffix(path)
    stem = name_stem(path)
    if is_label_name(path):
        tz = ctc_slice(stem)
        if tz is not None:
            pair = Pair(name=stem, slice_paths={tz[1]: path}, key=tz[0])
        else:
            pair = Pair(name=stem, labels_path=path, key=frame_key(stem))
        return Dataset(root=path, kind="file", pairs=[pair])
    labels = None
    if path.parent.name == "images":
        label_dir = _find_label_dir(path.parent.parent)
        if label_dir is not None:
            for img, lab in pair_files(list_images(path.parent), list_images(label_dir)):
                if img == path:
                    labels = lab
                    break
    pair = Pair(name=stem, image_path=path, labels_path=labels, key=frame_key(stem))
    return Dataset(root=path, kind="file", pairs=[pair])
