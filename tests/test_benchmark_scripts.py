"""The benchmark and helper scripts still match the package: every name they import from
cellsynth exists (they import inside main(), so a rename would only show when someone runs them;
bench_finetune.py once imported a constant that had moved), and each prints --help."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))


def _fallback_nodes(tree: ast.AST) -> set[int]:
    """Imports in ``except ImportError:`` handlers: fallbacks for older versions."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                for sub in ast.walk(handler):
                    ids.add(id(sub))
    return ids


def _cellsynth_imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    skip = _fallback_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cellsynth"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.startswith("cellsynth")]
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_imports_exist(script):
    missing = []
    for module, name in _cellsynth_imports(script):
        mod = importlib.import_module(module)
        if name and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{script.name} imports names that do not exist: {missing}"


def test_a_missing_name_is_caught(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def main():\n    from cellsynth.segment import NO_SUCH_NAME\n")
    with pytest.raises(AssertionError, match="NO_SUCH_NAME"):
        test_script_imports_exist(bad)


@pytest.mark.parametrize(
    "script",
    [p for p in SCRIPTS if "argparse" in p.read_text()],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_script_help(script):
    res = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage" in res.stdout.lower()


def test_budget_plot_joins_runs_and_a_ladder_by_row_seed_and_epochs():
    spec = importlib.util.spec_from_file_location("plot_budget", ROOT / "benchmarks/plot_budget.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def run(seed, epochs, seg, ladder=None):
        rec = {"SEG": seg, "epochs": epochs, "cell_jaccards": {"f": [seg, seg]}}
        out = {"config": {"training": {"seed": seed}}, "rows": {"real": rec, "both": rec}}
        return out | ({"convergence": {"row": "real", "ladder": ladder}} if ladder else {})

    ladder = [{"epochs": 100, "SEG": 0.5}, {"epochs": 200, "SEG": 0.6}]
    table = mod.budget_table([run(0, 200, 0.7), run(0, 400, 0.8, ladder), run(1, 100, 0.4)])
    assert {e: v[0] for e, v in table["real"][0].items()} == {100: 0.5, 200: 0.7, 400: 0.8}
    assert {e: v[0] for e, v in table["both"][0].items()} == {200: 0.7, 400: 0.8}
    assert table["real"][1][100][0] == 0.4
