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
from bot.translations import Text, localise, tr

log = logging.getLogger(__name__)


class NotAllowed(app_commands.CheckFailure):
    """The user may not do this (admin only, or not their job). Its message is a Text, like every error users see."""


# Errors whose message is written for the user.
USER_FACING = (GenerationError, QueueRefusal, NotAllowed)


def user_message(error: BaseException, locale: object | None = None) -> tuple[str, bool]:
    """The text to show in `locale` and whether the error was expected. User-facing errors carry a Text
    (`InvalidRequest(Text(...))`), rendered here in the reader's language."""
    if isinstance(error, (app_commands.CommandInvokeError, app_commands.TransformerError)) and error.__cause__:
        error = error.__cause__
    if isinstance(error, USER_FACING):
        return localise(error, locale), True
    if isinstance(error, app_commands.CheckFailure):
        return tr(locale, "You are not allowed to use this command."), True
    return "", False


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    text, expected = user_message(error, interaction.locale)
    if not expected:
        error_id = secrets.token_hex(4)
        log.error("error %s in %s", error_id, _describe(interaction), exc_info=error)
        text = tr(
            interaction.locale,
            "Something went wrong on our side (error id `{error_id}`). The bot is still running; try again.",
            error_id=error_id,
        )
    await send_private(interaction, text)


# Set in Interaction.extras while the answer is a public "thinking" message that no followup replaced yet.
_PUBLIC_THINKING = "zimage-public-thinking"


def answer_privately_from_now_on(interaction: discord.Interaction) -> None:
    """Call after a public defer: an error from here on removes the public "thinking" message and is
    told privately, rather than (as the first followup would) becoming the public message itself."""
    interaction.extras[_PUBLIC_THINKING] = True


async def send_private(interaction: discord.Interaction, text: str | Text) -> None:
    """Answer ephemerally through whichever route is still open: response, followup, or nothing."""
    text = localise(text, interaction.locale)
    try:
        if interaction.extras.pop(_PUBLIC_THINKING, False):
            try:
                await interaction.delete_original_response()
            except discord.HTTPException as error:
                log.warning("could not remove the public message of user %s: %s", interaction.user.id, error)
            await interaction.followup.send(text, ephemeral=True)
        elif interaction.response.is_done():
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
