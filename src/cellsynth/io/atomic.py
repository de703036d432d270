"""Files that appear atomically and never replace user data (:func:`atomic_path`, JSON).

Every file cellsynth writes goes through :func:`atomic_path`: a temporary file beside the target,
then a hard link that fails if the name was taken meanwhile (or a replace, for cellsynth's own
files written with ``overwrite=True``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it becomes ``path`` atomically.

    Without ``overwrite`` the final step is a hard link, which fails if the name exists, so an
    existing file is never replaced even by a concurrent writer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise CellsynthInputError("already exists; cellsynth never overwrites files", path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise CellsynthInputError(
                    "already exists; cellsynth never overwrites files", path
                ) from exc
            except OSError:  # file systems without hard links
                if path.exists():
                    raise CellsynthInputError(
                        "already exists; cellsynth never overwrites files", path
                    ) from None
                os.rename(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any, *, overwrite: bool = True) -> Path:
    """Write a JSON file atomically; ``overwrite`` (default) replaces a JSON file of cellsynth's
    own, ``overwrite=False`` refuses any existing file (a user-named report)."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
