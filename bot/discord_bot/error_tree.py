"""One place that turns any error in a command or button into a short, private message.

Known errors (bad input, a full queue, a missing permission) are told to the user as they are.
Anything else is logged with its traceback under a short id, and the user gets that id, never a
traceback. The bot keeps serving either way.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import discord
from discord import app_commands

from bot.generation import GenerationError
from bot.jobs.queue import QueueRefusal

log = logging.getLogger(__name__)


class NotAllowed(app_commands.CheckFailure):
    """The user may not do this (admin only, or not their job)."""


# Errors whose message is written for the user.
USER_FACING = (GenerationError, QueueRefusal, NotAllowed)


def user_message(error: BaseException) -> tuple[str, bool]:
    """The text to show and whether the error was expected."""
    if isinstance(error, (app_commands.CommandInvokeError, app_commands.TransformerError)) and error.__cause__:
        error = error.__cause__
    if isinstance(error, USER_FACING):
        return str(error), True
    if isinstance(error, app_commands.CheckFailure):
        return "You are not allowed to use this command.", True
    return "", False


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    text, expected = user_message(error)
    if not expected:
        error_id = secrets.token_hex(4)
        log.error("error %s in %s", error_id, _describe(interaction), exc_info=error)
        text = f"Something went wrong on our side (error id `{error_id}`). The bot is still running; try again."
    await send_private(interaction, text)


async def send_private(interaction: discord.Interaction, text: str) -> None:
    """Answer ephemerally through whichever route is still open: response, followup, or nothing."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as error:
        log.warning("could not tell user %s about an error: %s", interaction.user.id, error)


def _describe(interaction: discord.Interaction) -> str:
    if interaction.command is not None:
        return f"/{interaction.command.qualified_name} (user {interaction.user.id})"
    data: dict[str, Any] = dict(interaction.data or {})
    custom_id = data.get("custom_id", "?")
    return f"component {custom_id} (user {interaction.user.id})"


class ZImageCommandTree(app_commands.CommandTree):
    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await report_error(interaction, error)
