"""Operator-only commands: /cache-check, /pause and /resume.

Operators are the application's owner (or its team) and ADMIN_USER_IDS; a server's own admins are
not (bot/discord_bot/permissions.py). `default_permissions` only hides the commands in Discord's
client; the check here is what actually keeps everyone else out.
"""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot.permissions import operators_only
from bot.model.cache_report import CLASSIFIER, CacheReport, inspect_cache
from bot.translations import Text, tr

# The cache report's row labels (CacheReport.rows, shared with the command line) in the reader's language.
ROW_LABELS = {
    "Cache root": Text("Cache root"),
    "Safety model": Text("Safety model"),
    "Model": Text("Model"),
    "Model folder": Text("Model folder"),
    "Cached": Text("Cached"),
    "Complete": Text("Complete"),
    "Files": Text("Files"),
    "Size": Text("Size"),
    "Revisions": Text("Revisions"),
    "Free disk": Text("Free disk"),
    "Problem": Text("Problem"),
}


def report_embed(title: Text, report: CacheReport, locale: object | None = None) -> discord.Embed:
    verdict = Text("complete") if report.complete else Text("NOT complete")
    embed = discord.Embed(
        title=tr(locale, "{title}: {verdict}", title=title, verdict=verdict),
        colour=discord.Colour.green() if report.complete else discord.Colour.red(),
    )
    for label, value in report.rows()[:25]:
        name = ROW_LABELS[label].render(locale) if label in ROW_LABELS else label
        embed.add_field(name=name, value=value[:1024], inline=label not in ("Cache root", "Model folder", "Problem"))
    return embed


class Admin(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot

    @app_commands.command(name="cache-check")
    @app_commands.default_permissions(administrator=True)
    @operators_only()
    async def cache_check(self, interaction: discord.Interaction) -> None:
        """Report on the model in the Hugging Face cache (operators)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        settings = self.bot.settings
        # Scanning a 33 GB cache touches many files: never on the event loop.
        report = await asyncio.to_thread(inspect_cache, settings.model_id, settings.model_revision)
        locale = interaction.locale
        embeds = [report_embed(Text("Model cache"), report, locale)]
        if settings.safety_model:
            report = await asyncio.to_thread(inspect_cache, settings.safety_model, "main", kind=CLASSIFIER)
            embeds.append(report_embed(Text("Safety model cache"), report, locale))
        await interaction.followup.send(embeds=embeds, ephemeral=True)

    @app_commands.command(name="pause")
    @app_commands.default_permissions(administrator=True)
    @operators_only()
    async def pause(self, interaction: discord.Interaction) -> None:
        """Stop starting queued jobs; the running one finishes (operators)."""
        await self.bot.runner.set_paused(True)
        await interaction.response.send_message(
            tr(interaction.locale, "⏸️ Queue paused. `/resume` starts it again."), ephemeral=True
        )

    @app_commands.command(name="resume")
    @app_commands.default_permissions(administrator=True)
    @operators_only()
    async def resume(self, interaction: discord.Interaction) -> None:
        """Start running queued jobs again (operators)."""
        await self.bot.runner.set_paused(False)
        await interaction.response.send_message(tr(interaction.locale, "▶️ Queue resumed."), ephemeral=True)


async def setup(bot) -> None:
    await bot.add_cog(Admin(bot))
