"""README.md's two commands stay true: CI runs exactly the test command it shows."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_cmd = next(c for c in _commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == test_cmd


def test_readme_main_command_installs_and_runs_cellsynth():
    first = _commands()[0]
    assert "pip install" in first
    assert "cellsynth " in first
