"""/settings: a server's own rules for the bot, set by its admins (Manage Server or Administrator).

Each subcommand reads the server's settings, changes one thing, checks the whole and saves it in the
job store, or refuses with what to change and saves nothing. The rules are applied at /imagine
(bot/discord_bot/guild_rules.py) and where results are posted (bot/discord_bot/delivery.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot.permissions import guild_admins_only
from bot.generation import MAX_COUNT, InvalidRequest
from bot.guild_settings import (
    MAX_DAILY_IMAGES,
    MAX_WORD_CHARS,
    EnhanceDefault,
    GuildSettings,
    NsfwPolicy,
)
from bot.translations import Text, localise, tr

log = logging.getLogger(__name__)

# Channels /imagine can answer in; a thread counts as the channel it belongs to.
ALLOWED_CHANNEL_TYPES = (
    discord.ChannelType.text,
    discord.ChannelType.news,
    discord.ChannelType.voice,
    discord.ChannelType.stage_voice,
    discord.ChannelType.forum,
)


class PostableChannel(app_commands.Transformer):
    """A channel option offering only the channels /imagine can answer in; the value is checked again
    against the server's channels, since a client can send any id."""

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.channel

    @property
    def channel_types(self) -> list[discord.ChannelType]:
        return list(ALLOWED_CHANNEL_TYPES)

    async def transform(self, interaction: discord.Interaction, value: app_commands.AppCommandChannel):
        return value


ChannelOption = app_commands.Transform[app_commands.AppCommandChannel, PostableChannel]
POLICY_TEXT = {
    NsfwPolicy.BLOCK: Text("block: flagged images are withheld outside age-restricted channels"),
    NsfwPolicy.SPOILER: Text("spoiler: flagged images are posted as spoilers with a content note"),
    NsfwPolicy.ALLOW: Text("allow: flagged images are posted"),
}
# The same words as the choices of /settings enhance, in the reader's language.
ENHANCE_TEXT = {
    EnhanceDefault.ON: Text("on"),
    EnhanceDefault.OFF: Text("off"),
    EnhanceDefault.FORBIDDEN: Text("forbidden"),
}


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class ServerSettings(commands.GroupCog, group_name="settings"):
    """This server's rules for the bot (server admins)"""

    def __init__(self, bot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="show")
    @guild_admins_only()
    async def show(self, interaction: discord.Interaction) -> None:
        """Show this server's settings."""
        settings = await self._load(interaction)
        await interaction.response.send_message(embed=settings_embed(settings, interaction.locale), ephemeral=True)

    @app_commands.command(name="channels")
    @app_commands.describe(
        add="Allow /imagine in this channel (and its threads)",
        remove="Stop allowing this channel",
        clear="Allow /imagine in every channel again",
    )
    @guild_admins_only()
    async def channels(
        self,
        interaction: discord.Interaction,
        add: ChannelOption | None = None,
        remove: ChannelOption | None = None,
        clear: bool | None = None,
    ) -> None:
        """Choose the channels where /imagine works (none chosen: every channel)."""
        _one_of(add=add, remove=remove, clear=clear)
        settings = await self._load(interaction)
        allowed = list(settings.allowed_channels)
        if add is not None:
            channel = self._channel_here(interaction, add.id)
            if channel.id not in allowed:
                allowed.append(channel.id)
            done = Text("/imagine now works in {channels}.", channels=_channel_list(allowed))
        elif remove is not None:
            if remove.id not in allowed:
                raise InvalidRequest(
                    Text(
                        "<#{channel}> is not in the list; it holds {channels}.",
                        channel=remove.id,
                        channels=_channel_list(allowed),
                    )
                )
            allowed.remove(remove.id)
            done = Text("/imagine now works in {channels}.", channels=_channel_list(allowed))
        else:
            if not clear:
                raise InvalidRequest(Text("To allow every channel again, use `clear:True`."))
            allowed = []
            done = Text("/imagine now works in every channel.")
        await self._save(interaction, replace(settings, allowed_channels=tuple(allowed)), done)

    @app_commands.command(name="nsfw")
    @app_commands.describe(policy="What happens to flagged images outside age-restricted channels")
    @guild_admins_only()
    async def nsfw(self, interaction: discord.Interaction, policy: Literal["block", "spoiler", "allow"]) -> None:
        """Choose what happens to images the safety check flags, outside age-restricted channels."""
        try:
            chosen = NsfwPolicy(policy)
        except ValueError:
            raise InvalidRequest(Text("The policy must be `block`, `spoiler` or `allow`.")) from None
        settings = await self._load(interaction)
        done = Text(
            "NSFW policy: {policy}. Age-restricted channels always show images as they are.",
            policy=POLICY_TEXT[chosen],
        )
        await self._save(interaction, replace(settings, nsfw_policy=chosen), done)

    @app_commands.command(name="words")
    @app_commands.describe(
        add="A word or phrase to refuse in prompts and negative prompts",
        remove="A word or phrase to allow again",
    )
    @guild_admins_only()
    async def words(
        self,
        interaction: discord.Interaction,
        add: app_commands.Range[str, 1, MAX_WORD_CHARS] | None = None,
        remove: app_commands.Range[str, 1, MAX_WORD_CHARS] | None = None,
    ) -> None:
        """Block words or phrases in prompts (matched whole, in any case)."""
        _one_of(add=add, remove=remove)
        settings = await self._load(interaction)
        words = list(settings.blocked_words)
        if add is not None:
            word = " ".join(add.split())
            if not word:
                raise InvalidRequest(Text("The word to block is empty; give a word or phrase."))
            if len(word) > MAX_WORD_CHARS:
                raise InvalidRequest(
                    Text("A blocked word or phrase can be at most {most} characters long.", most=MAX_WORD_CHARS)
                )
            if word.casefold() in (known.casefold() for known in words):
                raise InvalidRequest(Text('"{word}" is already blocked.', word=word))
            words.append(word)
            done = Text('"{word}" is now blocked in prompts ({count} blocked in all).', word=word, count=len(words))
        else:
            assert remove is not None
            wanted = " ".join(remove.split()).casefold()
            match = next((known for known in words if known.casefold() == wanted), None)
            if match is None:
                raise InvalidRequest(Text('"{word}" is not blocked; `/settings show` lists what is.', word=remove))
            words.remove(match)
            done = Text('"{word}" is no longer blocked ({count} blocked in all).', word=match, count=len(words))
        await self._save(interaction, replace(settings, blocked_words=tuple(words)), done)

    @app_commands.command(name="limits")
    @app_commands.describe(
        daily=f"Images each member may make a day (UTC), 0 for no limit (0-{MAX_DAILY_IMAGES})",
        max_count=f"The most images one job may ask for (1-{MAX_COUNT})",
    )
    @guild_admins_only()
    async def limits(
        self,
        interaction: discord.Interaction,
        daily: app_commands.Range[int, 0, MAX_DAILY_IMAGES] | None = None,
        max_count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
    ) -> None:
        """Limit how many images members make a day, and how many one job may ask for."""
        if daily is None and max_count is None:
            raise InvalidRequest(Text("Give `daily`, `max_count` or both."))
        settings = await self._load(interaction)
        changed = replace(
            settings,
            daily_limit=settings.daily_limit if daily is None else daily,
            max_count=settings.max_count if max_count is None else max_count,
        )
        done = Text(
            "Limits: {daily}; at most {count} image(s) a job.",
            daily=_daily_text(changed.daily_limit),
            count=changed.max_count,
        )
        await self._save(interaction, changed, done)

    @app_commands.command(name="role")
    @app_commands.describe(required="Only members with this role may use /imagine", clear="Let everyone use /imagine")
    @guild_admins_only()
    async def role(
        self, interaction: discord.Interaction, required: discord.Role | None = None, clear: bool | None = None
    ) -> None:
        """Require a role for /imagine, or let everyone use it."""
        _one_of(required=required, clear=clear)
        settings = await self._load(interaction)
        if required is not None:
            guild = interaction.guild
            role = guild.get_role(required.id) if guild is not None else None
            if role is None:
                raise InvalidRequest(Text("I cannot see that role in this server; pick one of this server's roles."))
            if role.is_default():
                raise InvalidRequest(Text("Everyone has @everyone; to let everyone use /imagine, use `clear:True`."))
            changed = replace(settings, required_role=role.id)
            done = Text("/imagine now needs the <@&{role}> role.", role=role.id)
        else:
            if not clear:
                raise InvalidRequest(Text("To let everyone use /imagine, use `clear:True`."))
            changed, done = replace(settings, required_role=None), Text("Everyone may use /imagine again.")
        await self._save(interaction, changed, done)

    @app_commands.command(name="enhance")
    @app_commands.describe(default="Whether prompts are enhanced unless the member says otherwise")
    @guild_admins_only()
    async def enhance(self, interaction: discord.Interaction, default: Literal["on", "off", "forbidden"]) -> None:
        """Choose whether the prompt enhancer is on, off or forbidden in this server."""
        try:
            chosen = EnhanceDefault(default)
        except ValueError:
            raise InvalidRequest(Text("The enhancer setting must be `on`, `off` or `forbidden`.")) from None
        settings = await self._load(interaction)
        done = Text("Prompt enhancer: {setting}.", setting=ENHANCE_TEXT[chosen])
        await self._save(interaction, replace(settings, enhance_default=chosen), done)

    # ----- helpers -------------------------------------------------------------------------------

    async def _load(self, interaction: discord.Interaction) -> GuildSettings:
        assert interaction.guild_id is not None  # guild_admins_only refuses DMs
        return await asyncio.to_thread(self.bot.store.guild_settings, interaction.guild_id)

    async def _save(self, interaction: discord.Interaction, settings: GuildSettings, done: Text) -> None:
        try:
            saved = await asyncio.to_thread(self.bot.store.save_guild_settings, settings)
        except ValueError as error:
            # guild_settings' errors carry a Text: the reason reads in the admin's language.
            reason = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], Text) else str(error)
            raise InvalidRequest(Text("{reason} Nothing was changed.", reason=reason)) from None
        log.info("guild %s: settings changed by %s: %s", saved.guild_id, interaction.user.id, done)
        locale = interaction.locale
        await interaction.response.send_message(
            f"✅ {localise(done, locale)}", embed=settings_embed(saved, locale), ephemeral=True
        )

    @staticmethod
    def _channel_here(interaction: discord.Interaction, channel_id: int) -> discord.abc.GuildChannel:
        guild = interaction.guild
        channel = guild.get_channel(channel_id) if guild is not None else None
        if channel is None:
            thread = guild.get_thread(channel_id) if guild is not None else None
            if thread is not None and thread.parent_id is not None:
                raise InvalidRequest(
                    Text(
                        "<#{channel}> is a thread: allow <#{parent}>, the channel it is in; its threads are included.",
                        channel=channel_id,
                        parent=thread.parent_id,
                    )
                )
            raise InvalidRequest(Text("I cannot see that channel in this server; pick one of this server's channels."))
        if channel.type not in ALLOWED_CHANNEL_TYPES:
            raise InvalidRequest(
                Text("<#{channel}> is not a channel /imagine can answer in; pick a text channel.", channel=channel_id)
            )
        return channel


def settings_embed(settings: GuildSettings, locale: object | None = None) -> discord.Embed:
    def text(message: str | Text) -> str:
        return localise(message, locale)

    embed = discord.Embed(title=tr(locale, "Settings of this server"), colour=discord.Colour.blurple())
    embed.add_field(name=tr(locale, "Channels"), value=text(_channel_list(settings.allowed_channels)), inline=False)
    embed.add_field(name=tr(locale, "NSFW policy"), value=text(POLICY_TEXT[settings.nsfw_policy]), inline=False)
    words = ", ".join(f"`{word}`" for word in settings.blocked_words) or tr(locale, "none")
    embed.add_field(name=tr(locale, "Blocked words"), value=words[:1024], inline=False)
    embed.add_field(name=tr(locale, "Daily limit"), value=text(_daily_text(settings.daily_limit)))
    embed.add_field(name=tr(locale, "Images a job"), value=tr(locale, "at most {count}", count=settings.max_count))
    role = f"<@&{settings.required_role}>" if settings.required_role else tr(locale, "none: everyone may use /imagine")
    embed.add_field(name=tr(locale, "Required role"), value=role)
    embed.add_field(name=tr(locale, "Prompt enhancer"), value=text(ENHANCE_TEXT[settings.enhance_default]))
    return embed


def _channel_list(channel_ids) -> str | Text:
    return ", ".join(f"<#{channel_id}>" for channel_id in channel_ids) or Text("every channel")


def _daily_text(limit: int) -> Text:
    return Text("{count} images per member per day (UTC)", count=limit) if limit else Text("no daily limit")


def _one_of(**options: object) -> None:
    given = [name for name, value in options.items() if value is not None]
    if len(given) != 1:
        names = ", ".join(f"`{name}`" for name in options)
        raise InvalidRequest(Text("Give exactly one of {names}.", names=names))


async def setup(bot) -> None:
    await bot.add_cog(ServerSettings(bot))
