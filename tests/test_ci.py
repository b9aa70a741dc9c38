"""CI runs exactly the README's test command, and that command type-checks the application."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    (command,) = [line for line in lines if line.startswith("python -m pip install -e")]
    return command


def test_ci_runs_the_readme_test_command_with_the_type_checker():
    command = readme_test_command()
    assert "python -m mypy bot cogs" in command and "python -m ruff check ." in command
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines
    (extra,) = re.findall(r"^test = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert '"mypy' in extra
