"""The command-line parser: every sub-command, found from the parser itself, has a working
``--help`` that names it, and ``python -m cellsynth`` and the ``cellsynth`` script reach it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from cellsynth.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


SUBCOMMANDS = sorted(_subcommands())


def test_the_parser_has_every_pipeline_command():
    assert {"info", "learn", "synthesize", "finetune", "segment", "evaluate", "demo"} <= set(
        SUBCOMMANDS
    )


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_help_exits_0_and_names_it(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cellsynth {command} ")
    assert "options:" in out


def test_the_top_level_help_lists_every_subcommand_with_a_summary(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = {
        line.split()[0]: line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("    ") and line.split()
    }
    for command in SUBCOMMANDS:
        assert len(listed[command].split()) > 1, f"{command} has no summary line"


def test_python_m_cellsynth_runs_the_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "cellsynth", "learn", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: cellsynth learn ")


def test_the_console_script_is_cli_main():
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "cellsynth"]
    assert script.value == "cellsynth.cli:main"
    assert script.load() is main
