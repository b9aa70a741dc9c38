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


def report_embed(title: str, report: CacheReport) -> discord.Embed:
    embed = discord.Embed(
        title=f"{title}: " + ("complete" if report.complete else "NOT complete"),
        colour=discord.Colour.green() if report.complete else discord.Colour.red(),
    )
    for label, value in report.rows()[:25]:
        embed.add_field(name=label, value=value[:1024], inline=label not in ("Cache root", "Model folder", "Problem"))
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
        embeds = [report_embed("Model cache", report)]
        if settings.safety_model:
            report = await asyncio.to_thread(inspect_cache, settings.safety_model, "main", kind=CLASSIFIER)
            embeds.append(report_embed("Safety model cache", report))
        await interaction.followup.send(embeds=embeds, ephemeral=True)

    @app_commands.command(name="pause")
    @app_commands.default_permissions(administrator=True)
    @operators_only()
    async def pause(self, interaction: discord.Interaction) -> None:
        """Stop starting queued jobs; the running one finishes (operators)."""
        await self.bot.runner.set_paused(True)
        await interaction.response.send_message("⏸️ Queue paused. `/resume` starts it again.", ephemeral=True)

    @app_commands.command(name="resume")
    @app_commands.default_permissions(administrator=True)
    @operators_only()
    async def resume(self, interaction: discord.Interaction) -> None:
        """Start running queued jobs again (operators)."""
        await self.bot.runner.set_paused(False)
        await interaction.response.send_message("▶️ Queue resumed.", ephemeral=True)


async def setup(bot) -> None:
    await bot.add_cog(Admin(bot))
