"""A server's /settings applied to a request for pictures, before anything is queued.

Every refusal is private and says what to do: which channels are allowed, which role is needed, which
word matched, how many images are left and when the count resets. The rule on minors holds
everywhere, DMs included.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import replace

import discord

from bot.discord_bot.error_tree import NotAllowed
from bot.generation import GenerationRequest, InvalidRequest
from bot.jobs.store import JobStore
from bot.moderation import asks_for_sexual_minors, blocked_word_in
from bot.translations import Text

MINORS_REFUSAL = Text("This bot never makes sexual content involving minors. Nothing was queued.")


def next_utc_midnight(now: dt.datetime | None = None) -> dt.datetime:
    now = now or dt.datetime.now(dt.timezone.utc)
    return dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)


async def check_imagine_allowed(
    interaction: discord.Interaction, request: GenerationRequest, store: JobStore, *, clamp: bool = False
) -> GenerationRequest:
    """The request as this server allows it, or NotAllowed / InvalidRequest saying what to do.

    `clamp` (for buttons, which have no count to change) lowers the count to what the server allows
    instead of refusing.
    """
    if asks_for_sexual_minors(request.prompt):
        raise InvalidRequest(MINORS_REFUSAL)
    guild_id = interaction.guild_id
    if guild_id is None:
        return request
    settings = await asyncio.to_thread(store.guild_settings, guild_id)

    if settings.allowed_channels:
        channel = interaction.channel
        here = {interaction.channel_id, getattr(channel, "parent_id", None)}  # a thread counts as its channel
        if not here & set(settings.allowed_channels):
            where = ", ".join(f"<#{channel_id}>" for channel_id in settings.allowed_channels)
            raise NotAllowed(Text("In this server /imagine works in {channels}; try it there.", channels=where))

    if settings.required_role is not None:
        member = interaction.user
        if not isinstance(member, discord.Member) or member.get_role(settings.required_role) is None:
            raise NotAllowed(
                Text(
                    "In this server /imagine needs the <@&{role}> role; ask a moderator for it.",
                    role=settings.required_role,
                )
            )

    word = blocked_word_in([request.prompt, request.negative_prompt], settings.blocked_words)
    if word is not None:
        raise InvalidRequest(Text('This server blocks "{word}" in prompts; take it out and try again.', word=word))

    if request.count > settings.max_count:
        if not clamp:
            raise InvalidRequest(
                Text(
                    "This server allows at most {count} image(s) a job; ask for {count} or fewer with `count`.",
                    count=settings.max_count,
                )
            )
        request = replace(request, count=settings.max_count)

    if settings.daily_limit:
        reset = next_utc_midnight()
        since = (reset - dt.timedelta(days=1)).timestamp()
        used = await asyncio.to_thread(store.images_since, guild_id, interaction.user.id, since)
        left = max(0, settings.daily_limit - used)
        when = Text("<t:{time}:R> (midnight UTC, <t:{time}:t> your time)", time=int(reset.timestamp()))
        if left == 0:
            raise NotAllowed(
                Text(
                    "You have made your {limit} images for today in this server. The count resets {when}.",
                    limit=settings.daily_limit,
                    when=when,
                )
            )
        if request.count > left:
            if not clamp:
                raise NotAllowed(
                    Text(
                        "You have {left} of your {limit} images for today left in this server: ask "
                        "for {left} or fewer with `count`. The count resets {when}.",
                        left=left,
                        limit=settings.daily_limit,
                        when=when,
                    )
                )
            request = replace(request, count=left)
    return request
