"""The output policy: where cellsynth may write synthetic pairs, and what it may read as synthetic.

Every command and widget that writes synthetic or curated pairs asks :func:`check_synthetic_target`
first, and every place that takes a folder as *synthetic* input asks :func:`check_synthetic_source`,
so a user's real annotations are never mixed with, hidden by or mistaken for generated data.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
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


# --------------------------------------------------------------------------- every output


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(folder: str | Path) -> Path:
    """Refuse, before any work, an output folder that cannot be created or written.

    ``folder`` may not exist yet: its nearest existing parent must be a folder where a file can
    be created (tried with a temporary file, so read-only mounts and permissions both count).
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CellsynthInputError("exists and is not a folder", folder)
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise CellsynthInputError(f"cannot be created: {base} is a file, not a folder", folder)
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        where = "" if base == folder.absolute() else f" (in {base})"
        raise CellsynthInputError(
            f"cannot be written{where}: {exc.strerror or exc}", folder
        ) from None
    return folder


def _same(path: Path, other: Path) -> bool:
    try:
        return path.resolve() == other.resolve()
    except OSError:
        return False


def _same_or_inside(path: Path, other: Path) -> bool:
    try:
        a, b = path.resolve(), other.resolve()
    except OSError:
        return False
    return a == b or b in a.parents


def check_new_file(
    path: str | Path,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
    option: str = "--json",
) -> Path:
    """Refuse an output file that would replace something: an input of the command (always),
    an existing file (unless ``overwrite``), a folder; and one that cannot be written."""
    path = Path(path).expanduser()
    for inp in inputs:
        if _same_or_inside(path, Path(inp).expanduser()):
            raise CellsynthInputError(
                f"{option} names an input of this command; cellsynth never writes over its "
                "inputs — choose another file name",
                path,
            )
    if path.is_dir():
        raise CellsynthInputError(f"{option} names a folder; give a file name", path)
    if path.exists() and not overwrite:
        raise CellsynthInputError(
            f"already exists; cellsynth never overwrites files (add --overwrite to replace "
            f"this {option} file)",
            path,
        )
    check_writable(path.parent)
    return path


def check_new_outputs(main: str | Path, sidecars: Iterable[str | Path], what: str) -> Path:
    """Refuse to start when the main output or any file or folder written beside it exists.

    ``finetune -o MODEL`` writes MODEL, MODEL.safetensors, MODEL.log.json and works in
    .MODEL.training/: none of them may be there before (another run's, or the user's).
    """
    main = Path(main).expanduser()
    for p in (main, *(Path(s) for s in sidecars)):
        if p.exists() or p.is_symlink():
            kind = "folder" if p.is_dir() else "file"
            extra = "" if p == main else f" (written beside {what} {main.name})"
            raise CellsynthInputError(
                f"already exists as a {kind}{extra}; cellsynth never overwrites or deletes "
                "files it did not create — choose another output name",
                p,
            )
    check_writable(main.parent)
    return main


def check_output_folder(
    folder: str | Path, names: Iterable[str], inputs: Iterable[str | Path] = ()
) -> Path:
    """Refuse an output folder that is (or is inside) an input, or already holds a file this run
    would write (``names``), before any work."""
    folder = Path(folder).expanduser()
    for inp in inputs:
        inp = Path(inp).expanduser()
        if _same_or_inside(folder, inp) if inp.is_dir() else _same(folder, inp.parent):
            raise CellsynthInputError(
                f"is an input folder ({inp}); write the results to a new folder", folder
            )
    check_writable(folder)
    taken = [n for n in names if (folder / n).exists()]
    if taken:
        raise CellsynthInputError(
            f"already holds {taken[0]}"
            + (f" and {len(taken) - 1} more of this run's outputs" if len(taken) > 1 else "")
            + "; cellsynth never overwrites files — choose a new folder",
            folder,
        )
    return folder
