"""/history and /info: a user's recent jobs and one job's full parameters, from the job store."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot.job_messages import info_embed, quote
from bot.discord_bot.permissions import may_see_job, no_such_job
from bot.generation import InvalidRequest
from bot.translations import Text, tr

HISTORY_LENGTH = 10
# A job's state in the reader's language (the stored value is the English word).
JOB_STATES = {
    "queued": Text("queued"),
    "running": Text("running"),
    "done": Text("done"),
    "delivered": Text("delivered"),
    "failed": Text("failed"),
    "cancelled": Text("cancelled"),
    "undeliverable": Text("undeliverable"),
}


class History(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot

    @app_commands.command(name="history")
    async def history(self, interaction: discord.Interaction) -> None:
        """Your recent images, with prompts and seeds."""
        records = await asyncio.to_thread(self.bot.store.recent_for_user, interaction.user.id, HISTORY_LENGTH)
        locale = interaction.locale
        if not records:
            await interaction.response.send_message(tr(locale, "You have no jobs yet. Try `/imagine`."), ephemeral=True)
            return
        embed = discord.Embed(title=tr(locale, "Your recent jobs"), colour=discord.Colour.blurple())
        for record in records:
            seeds = ", ".join(str(seed) for seed in (record.seeds or [record.seed]))
            embed.add_field(
                name=tr(
                    locale,
                    "Job {job} · {state} · {width}x{height}",
                    job=record.id,
                    state=JOB_STATES.get(record.state.value, record.state.value),
                    width=record.width,
                    height=record.height,
                ),
                value=quote(record.prompt, 200)
                + "\n"
                + tr(locale, "seed {seeds} · steps {steps}", seeds=seeds, steps=record.steps),
                inline=False,
            )
        embed.set_footer(
            text=tr(locale, "/info job:<number> shows every parameter; --seed N in a prompt makes one again")
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="info")
    @app_commands.describe(job="The job number (shown under each image and in /history)")
    async def info(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        """Every parameter of one job."""
        record = await asyncio.to_thread(self.bot.store.get, job)
        # A job of another server (or someone else's DM) is answered exactly as one that does not exist.
        if record is None or not await may_see_job(interaction, record):
            raise InvalidRequest(no_such_job(job))
        embed = info_embed(record, self.bot.settings.model_id, interaction.locale)
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot) -> None:
    await bot.add_cog(History(bot))
