"""Rules that keep the project pleasant: headless core, manifest found by npe2."""

from __future__ import annotations

import ast
import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

import cellsynth

PKG = Path(cellsynth.__file__).parent
ROOT = Path(__file__).resolve().parents[1]
GUI_MODULES = (
    "napari",
    "qtpy",
    "magicgui",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "superqt",
    "vispy",
)


def _core_files():
    return [p for p in PKG.rglob("*.py") if "_widgets" not in p.parts]


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.name)
def test_core_module_never_imports_napari_or_qt(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for n in names:
            assert n.split(".")[0] not in GUI_MODULES, f"{path.name} imports {n}"
            assert not n.startswith("cellsynth._widgets"), f"{path.name} imports {n}"


def test_importing_the_core_loads_no_gui_toolkit():
    code = (
        "import sys, cellsynth, cellsynth.io, cellsynth.atlas, cellsynth.metrics, cellsynth.cli, "
        "cellsynth.samples\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {GUI_MODULES!r}]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_manifest_ships_inside_the_package_and_matches_the_top_level_one():
    assert (PKG / "napari.yaml").is_file()
    top = ROOT / "napari.yaml"
    if top.exists():
        assert filecmp.cmp(top, PKG / "napari.yaml", shallow=False)


def test_npe2_validates_the_manifest_with_imports():
    proc = subprocess.run(
        ["npe2", "validate", "cellsynth", "--imports"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


def test_sample_data_ships_with_a_licence_note():
    from cellsynth.samples import sample_dataset_path

    readme = (sample_dataset_path() / "README.md").read_text()
    assert "CC0" in readme
