"""discord.py's Translator over the project's catalogues: command, option and choice texts in each user's language.

Command and option names stay English (they are what people type and what the docs say).
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.app_commands import TranslationContextLocation

from bot.translations import catalogues

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
        return catalogues().lookup(string.message, locale)
