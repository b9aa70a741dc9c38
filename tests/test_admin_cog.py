"""Admin-only commands: /cache-check, /pause, /resume; the bot itself checks who is an admin."""

from __future__ import annotations

import pytest

from conftest import ADMIN_ID, HUB_CACHE, TINY_REPO_ID
from test_generation_cog import reply_text


@pytest.mark.parametrize("command", ["cache-check", "pause", "resume"])
async def test_members_are_refused_and_nothing_happens(start_bot, discord_api, command):
    running = await start_bot()
    member = discord_api.make_user("member")
    message = await reply_text(discord_api, await discord_api.invoke(command, {}, user=member))
    assert message.ephemeral
    assert message.content == "This command is for the bot's admins only."
    assert running.runner.queue.paused is False
    # Discord's client hides admin commands from members; the bot checks anyway.
    _, definition = discord_api.command(command)
    assert str(definition["default_member_permissions"]) == "8"


async def test_cache_check_for_an_admin_by_id(start_bot, discord_api):
    await start_bot()
    admin = discord_api.make_user("owner", id=ADMIN_ID)
    interaction = await discord_api.invoke("cache-check", {}, user=admin)
    message = await reply_text(discord_api, interaction)
    assert interaction.ack_delay < 3
    assert message.ephemeral
    embed = message.embeds[0]
    assert embed["title"] == "Model cache: complete"
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert fields["Model"] == f"{TINY_REPO_ID} @ main"
    assert fields["Cache root"] == f"{HUB_CACHE} (exists)"
    assert fields["Complete"] == "complete" and fields["Cached"] == "yes"
    assert int(fields["Files"]) > 10


async def test_cache_check_for_a_guild_administrator(start_bot, discord_api):
    await start_bot(ADMIN_USER_IDS="")
    boss = discord_api.make_user("boss", admin=True)  # has the Administrator permission
    message = await reply_text(discord_api, await discord_api.invoke("cache-check", {}, user=boss))
    assert message.embeds[0]["title"] == "Model cache: complete"
