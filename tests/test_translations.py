"""The catalogues: lookups, fallbacks to English, and that every marked text has its translations."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bot.translations import LOCALE_DIR, Catalogues, Text, placeholders, tr

ROOT = Path(__file__).resolve().parents[1]
# Calls whose first argument is a user-facing English text that the catalogues must translate.
MARKERS = {"tr": 1, "Text": 0, "locale_str": 0}


# Fewer marked texts than this means the scan (or the code) lost them: the test must not pass on nothing.
FLOOR = 200


def marker_arguments(root: Path = ROOT) -> list[tuple[str, ast.expr]]:
    """The text argument of every marker call in bot/ and cogs/, with where it is. A `locale_str` made at
    run time carries its Text (`locale_str(english, text=Text(...))`): the Text is the marker then."""
    found = []
    for path in sorted([*root.glob("bot/**/*.py"), *root.glob("cogs/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            index = MARKERS.get(name or "")
            if index is None or len(node.args) <= index:
                continue
            if name == "locale_str" and any(keyword.arg == "text" for keyword in node.keywords):
                continue
            found.append((f"{path.relative_to(root)}:{node.lineno}", node.args[index]))
    return found


def marked_texts() -> dict[str, str]:
    """Every text passed to a marker in bot/ and cogs/, with where it was found."""
    found: dict[str, str] = {}
    for where, argument in marker_arguments():
        assert isinstance(argument, ast.Constant) and isinstance(argument.value, str), (
            f"{where}: a translated text must be a plain string literal (use {{placeholders}}, not an f-string)"
        )
        found.setdefault(argument.value, where)
    return found


def not_literal(root: Path = ROOT) -> list[str]:
    return [
        f"{where}: {ast.unparse(argument)}"
        for where, argument in marker_arguments(root)
        if not (isinstance(argument, ast.Constant) and isinstance(argument.value, str))
    ]


def test_markers_get_plain_literals_never_f_strings_or_expressions() -> None:
    # An f-string's text differs with every value, so no catalogue could hold its translation.
    assert not_literal() == []


def test_the_scan_finds_the_bots_texts() -> None:
    texts = marked_texts()
    assert len(texts) >= FLOOR, f"only {len(texts)} marked texts"
    # Texts from each side of the bot: the job side, the Discord side, the cogs, the shared modules.
    places = {where.split(":")[0] for where in texts.values()}
    assert {
        "bot/jobs/runner.py",
        "bot/discord_bot/delivery.py",
        "cogs/server_settings.py",
        "bot/generation.py",
    } <= places


def test_the_check_finds_f_strings_and_expressions(tmp_path: Path) -> None:
    (tmp_path / "cogs").mkdir()
    (tmp_path / "cogs" / "x.py").write_text(
        'tr(locale, f"Job {job} failed")\nText(message)\ntr(locale, "Job {job} failed", job=1)\n'
        "locale_str(label.render(None), text=label)\n",
        encoding="utf-8",
    )
    assert not_literal(tmp_path) == ["cogs/x.py:1: f'Job {job} failed'", "cogs/x.py:2: message"]


def languages() -> list[str]:
    return sorted(path.stem for path in LOCALE_DIR.glob("*.po"))


def test_there_is_a_chinese_catalogue() -> None:
    assert "zh-CN" in languages()


@pytest.mark.parametrize("language", languages())
def test_every_marked_text_is_translated_with_the_same_placeholders(language: str) -> None:
    catalogue = Catalogues().languages[language]
    missing = [f"{where}: {text!r}" for text, where in marked_texts().items() if text not in catalogue]
    assert missing == [], f"{len(missing)} text(s) without a {language} translation"
    broken = [text for text in marked_texts() if placeholders(catalogue[text]) != placeholders(text)]
    assert broken == []


def test_lookup_fallbacks(tmp_path: Path) -> None:
    (tmp_path / "zh-CN.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        'msgid "Job {job} is queued."\nmsgstr "任务 {job} 已排队。"\n\n'
        'msgid "Broken {job}."\nmsgstr "坏的 {jobb}。"\n\n'
        'msgid "Untranslated."\nmsgstr ""\n',
        encoding="utf-8",
    )
    catalogues = Catalogues(tmp_path)
    assert catalogues.render("Job {job} is queued.", "zh-CN", {"job": 7}) == "任务 7 已排队。"
    assert catalogues.render("Job {job} is queued.", "en-US", {"job": 7}) == "Job 7 is queued."
    assert catalogues.render("Job {job} is queued.", "fr", {"job": 7}) == "Job 7 is queued."
    assert catalogues.render("Job {job} is queued.", None, {"job": 7}) == "Job 7 is queued."
    # A broken or missing translation is English, never an error.
    assert catalogues.render("Broken {job}.", "zh-CN", {"job": 7}) == "Broken 7."
    assert catalogues.render("Untranslated.", "zh-CN", {}) == "Untranslated."


def test_a_text_renders_nested_texts_in_the_same_language() -> None:
    text = Text("{a} and {b}", a=Text("x"), b=3)
    assert text.render(None) == "x and 3"
    assert str(text) == "x and 3"
    assert tr(None, "{n} left", n=2) == "2 left"
