"""The layers of `bot/`: the model side knows nothing of jobs or Discord, the job side nothing of Discord,
and the plain data at the top nothing of any side. Read from the imports, so a shortcut fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BOT = Path(__file__).resolve().parents[1] / "bot"
SHARED = (
    "generation",
    "image_size",
    "prompt_flags",
    "image_files",
    "image_input",
    "settings",
    "guild_settings",
    "moderation",
)
FORBIDDEN = {
    "model": ("bot.jobs", "bot.discord_bot", "cogs", "discord"),
    "jobs": ("bot.discord_bot", "cogs", "discord"),
    **{name: ("bot.model", "bot.jobs", "bot.discord_bot", "cogs", "discord") for name in SHARED},
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files_of(part: str) -> list[Path]:
    folder = BOT / part
    return sorted(folder.glob("*.py")) if folder.is_dir() else [BOT / f"{part}.py"]


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(part: str) -> None:
    files = files_of(part)
    assert files and all(path.exists() for path in files), part
    offending = [
        f"{path.relative_to(BOT.parent)} imports {name}"
        for path in files
        for name in imported_modules(path)
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[part])
    ]
    assert offending == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import discord\nfrom bot.jobs.store import JobStore\n")
    assert imported_modules(module) == {"discord", "bot.jobs.store"}
