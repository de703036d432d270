"""One writer per folder: an advisory lock file that names its owner.

A dataset folder, a bundle folder and an experiment folder each take :func:`folder_lock` before
they write. The lock is an ``flock`` on ``FOLDER/.cellsynth.lock``, so the kernel releases it when
its process dies (a crashed or killed run never leaves a stale lock behind); the file records the
owner's pid and host so that a refused run can say who holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from cellsynth.errors import CellsynthInputError

LOCK_NAME = ".cellsynth.lock"


def _owner(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
        return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "folder", *, wait: float = 0.0) -> Iterator[Path]:
    """Hold the write lock of ``folder`` (created if missing) for the ``with`` block.

    Another holder makes this raise :class:`CellsynthInputError` naming the folder and the owner,
    after waiting up to ``wait`` seconds. Re-entrant within one process is *not* supported: take
    the lock once, at the outermost writer.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, no protection
        yield lock_path
        return
    fh = open(lock_path, "a+")  # held for the whole block
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CellsynthInputError(
                        f"this {what} is being written by another cellsynth run "
                        f"({_owner(lock_path)}); wait for it to finish or choose another folder",
                        folder,
                    ) from None
                time.sleep(0.2)
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
            )
        )
        fh.flush()
        try:
            yield lock_path
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()
