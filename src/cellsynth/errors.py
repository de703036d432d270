"""The one exception for bad user input.

Every message names the file (or folder) and the problem in one sentence, so the CLI can print
it without a traceback and the napari widgets can show it as a notification.
"""

from __future__ import annotations

from pathlib import Path


class CellsynthInputError(ValueError):
    """Bad input from the user: a file, folder, array or parameter cellsynth cannot use."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)
