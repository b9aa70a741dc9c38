"""Who may do what (CONTRACT.md, "Who may do what").

- Operators: the application's owner, or its team's admins and developers, as Discord reports them
  (discord.py's `Bot.is_owner`), and the user ids in ADMIN_USER_IDS. They alone use /cache-check,
  /pause and /resume, and may act on any job.
- Guild admins: Manage Server or Administrator in the guild where they act. They may cancel and
  delete jobs of that guild and change its /settings, nothing more.
- A job belongs to its guild (or DM): its requester, anyone in that guild and operators may see it.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.discord_bot.error_tree import NotAllowed
from bot.jobs.store import JobRecord
from bot.translations import Text

log = logging.getLogger(__name__)


async def is_operator(interaction: discord.Interaction) -> bool:
    client = interaction.client
    if interaction.user.id in client.settings.admin_user_ids:  # type: ignore[attr-defined]
        return True
    try:
        return await client.is_owner(interaction.user)  # type: ignore[attr-defined]
    except discord.HTTPException as error:
        # Without Discord's answer nobody is the owner; ADMIN_USER_IDS still works.
        log.warning("could not read the application's owner from Discord: %s", error)
        return False


def is_guild_admin(interaction: discord.Interaction, guild_id: int | None = None) -> bool:
    """Manage Server or Administrator here; with `guild_id`, only when acting in that guild."""
    if interaction.guild_id is None or (guild_id is not None and interaction.guild_id != guild_id):
        return False
    permissions = interaction.permissions
    return permissions.administrator or permissions.manage_guild


def no_such_job(job_id: int) -> Text:
    """The answer for a job that does not exist, and for one the asker may not see: the same text."""
    return Text("There is no job {job} (old jobs are removed after a while).", job=job_id)


async def may_see_job(interaction: discord.Interaction, record: JobRecord) -> bool:
    if interaction.user.id == record.user_id:
        return True
    if record.guild_id is not None and interaction.guild_id == record.guild_id:
        return True
    return await is_operator(interaction)


async def require_job_manager(interaction: discord.Interaction, record: JobRecord, what: str | Text) -> None:
    """The requester, an admin of the job's guild or an operator; NotAllowed for anyone else.
    `what` is a Text (`Text("cancel it")`) so that the refusal reads whole in the asker's language."""
    if interaction.user.id == record.user_id or is_guild_admin(interaction, record.guild_id):
        return
    if await is_operator(interaction):
        return
    raise NotAllowed(
        Text(
            "Only the person who asked for job {job}, an admin of the server it was made in, "
            "or the bot's operator can {what}.",
            job=record.id,
            what=what,
        )
    )


def operators_only():
    """For /cache-check, /pause and /resume; `default_permissions` only hides them in the client."""

    async def predicate(interaction: discord.Interaction) -> bool:
        if not await is_operator(interaction):
            raise NotAllowed(Text("This command is for the bot's operators only."))
        return True

    return app_commands.check(predicate)


def guild_admins_only():
    """For /settings: Manage Server or Administrator, in the server being set up."""

    async def predicate(interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            raise NotAllowed(Text("Server settings are changed in the server: run /settings there."))
        if not is_guild_admin(interaction):
            raise NotAllowed(Text("Only members with the Manage Server or Administrator permission can use /settings."))
        return True

    return app_commands.check(predicate)
