"""discord.py's Translator over the project's catalogues: command, option and choice texts in each user's language.

Command and option names stay English (they are what people type and what the docs say).
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.app_commands import TranslationContextLocation

from bot.translations import Text, catalogues

ENGLISH_ONLY = (
    TranslationContextLocation.command_name,
    TranslationContextLocation.group_name,
    TranslationContextLocation.parameter_name,
)


class CatalogueTranslator(app_commands.Translator):
    async def translate(
        self, string: app_commands.locale_str, locale: discord.Locale, context: app_commands.TranslationContextTypes
    ) -> str | None:
        if context.location in ENGLISH_ONLY:
            return None
        # A text made at run time (a size choice) carries its Text: `locale_str(english, text=Text(...))`.
        text = string.extras.get("text")
        if isinstance(text, Text):
            return text.render(locale) if catalogues().lookup(text.message, locale) is not None else None
        return catalogues().lookup(string.message, locale)
