"""One writer per folder: a second writer is refused with the owner's name; a dead one frees it."""

import subprocess
import sys

import pytest

from cellsynth.errors import CellsynthInputError
from cellsynth.locks import folder_lock


def test_second_writer_is_refused_and_lock_is_released(tmp_path):
    with folder_lock(tmp_path, "bundle folder"):
        with pytest.raises(CellsynthInputError, match="another cellsynth run") as err:
            with folder_lock(tmp_path, "bundle folder"):
                pass
        assert str(tmp_path) in str(err.value)
        assert "pid" in str(err.value)
    with folder_lock(tmp_path):  # free again
        pass


def test_lock_of_a_killed_process_is_not_stale(tmp_path):
    code = (
        "import os, sys; from cellsynth.locks import folder_lock\n"
        f"with folder_lock({str(tmp_path)!r}):\n    os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with folder_lock(tmp_path):
        pass
