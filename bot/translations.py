"""User-facing texts in the reader's language.

Texts are written in English in the code and looked up in gettext catalogues: one `.po` file a language in
`bot/locales/`, named by Discord's locale tag (`zh-CN.po`), read with Babel. A third language is a new file and
no code. A missing or broken translation falls back to the English text, never to an error.
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from babel.messages.pofile import read_po

log = logging.getLogger(__name__)

LOCALE_DIR = Path(__file__).with_name("locales")
ENGLISH = "en-US"


class Text:
    """A text to show later, in a language not known yet: its English template and the values for its
    `{placeholders}`. Values may be Texts themselves (a reason inside a sentence)."""

    __slots__ = ("message", "values")

    def __init__(self, message: str, /, **values: Any) -> None:
        self.message = message
        self.values = values

    def render(self, locale: object | None = None) -> str:
        return catalogues().render(self.message, locale, self.values)

    def __str__(self) -> str:
        return self.render(None)

    def __repr__(self) -> str:
        return f"Text({self.message!r}, **{self.values!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Text) and (self.message, self.values) == (other.message, other.values)

    def __hash__(self) -> int:
        return hash(self.message)

    def to_json(self) -> str:
        """The Text as JSON a store can keep and render later in any language: its English template and
        its values (Texts inside as objects of their own, anything else not a number as its English text)."""
        return json.dumps(self._data(), ensure_ascii=False)

    @classmethod
    def from_json(cls, stored: str) -> Text:
        """A Text kept by `to_json`. Anything else (a plain sentence kept before it was a Text) comes back
        as a Text of that sentence with no values: shown as it is, or translated where it is a known text."""
        try:
            data = json.loads(stored)
        except ValueError:
            return cls(stored)
        return cls._of_data(data) if _is_text_data(data) else cls(stored)

    def _data(self) -> dict[str, Any]:
        values = {
            name: value._data() if isinstance(value, Text) else value if _is_number(value) else str(value)
            for name, value in self.values.items()
        }
        return {"text": self.message, "values": values}

    @classmethod
    def _of_data(cls, data: dict[str, Any]) -> Text:
        values = data.get("values") or {}
        return cls(data["text"], **{name: cls._of_data(v) if _is_text_data(v) else v for name, v in values.items()})


def tr(locale: object | None, message: str, /, **values: Any) -> str:
    """`message` in the language of `locale` (a Discord locale or its tag), with `values` filled in."""
    return catalogues().render(message, locale, values)


def localise(value: object, locale: object | None) -> str:
    """`value` for a reader of `locale`: a Text, or an error carrying a Text as its message
    (`InvalidRequest(Text(...))`, whose `str()` stays English for the log), rendered; anything else as `str()`."""
    if isinstance(value, BaseException) and len(value.args) == 1 and isinstance(value.args[0], Text):
        value = value.args[0]
    if isinstance(value, Text):
        return value.render(locale)
    return str(value)


def message_of(error: BaseException) -> Text | str:
    """An error's message as a value for a Text's placeholder: its Text where it carries one (so it is
    rendered in the reader's language), else its English `str()`."""
    if len(error.args) == 1 and isinstance(error.args[0], Text):
        return error.args[0]
    return str(error)


class Catalogues:
    """Every catalogue in a folder, by locale tag."""

    def __init__(self, directory: Path = LOCALE_DIR) -> None:
        self.languages: dict[str, dict[str, str]] = {}
        for path in sorted(directory.glob("*.po")):
            with path.open("rb") as file:
                catalogue = read_po(file, locale=None)
            self.languages[path.stem] = {
                message.id: message.string
                for message in catalogue
                # Plural entries (tuples) are not used: every text is one sentence with {placeholders}.
                if isinstance(message.id, str)
                and isinstance(message.string, str)
                and message.id
                and message.string
                and not message.fuzzy
            }

    def lookup(self, message: str, locale: object | None) -> str | None:
        """The translation of `message` for `locale`, or None where there is none."""
        tag = _tag(locale)
        return self.languages.get(tag, {}).get(message) if tag else None

    def render(self, message: str, locale: object | None, values: Mapping[str, Any]) -> str:
        filled = {name: value.render(locale) if isinstance(value, Text) else value for name, value in values.items()}
        translated = self.lookup(message, locale)
        if translated is not None:
            try:
                return translated.format(**filled)
            except (KeyError, IndexError, ValueError, AttributeError):
                log.warning("the %s translation of %r is broken; showing the English text", _tag(locale), message)
        return message.format(**filled) if filled else message


@cache
def catalogues() -> Catalogues:
    return Catalogues()


def placeholders(template: str) -> set[str]:
    """The `{names}` a template expects, so a test can hold a translation to the same ones."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text_data(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("text"), str) and isinstance(data.get("values", {}), dict)


def _tag(locale: object | None) -> str | None:
    if locale is None:
        return None
    tag = str(getattr(locale, "value", locale))
    return None if tag.startswith("en") else tag
