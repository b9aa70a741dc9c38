"""Operator-only commands: /cache-check, /pause, /resume; the bot itself checks who is an operator."""

from __future__ import annotations

import pytest

from conftest import ADMIN_ID, HUB_CACHE, TINY_REPO_ID
from test_generation_cog import reply_text


@pytest.mark.parametrize("command", ["cache-check", "pause", "resume"])
async def test_members_and_guild_admins_are_refused_and_nothing_happens(start_bot, discord_api, command):
    running = await start_bot()
    member = discord_api.make_user("member")
    boss = discord_api.make_user("boss", admin=True)  # Administrator in the guild: not an operator
    for user in (member, boss):
        message = await reply_text(discord_api, await discord_api.invoke(command, {}, user=user))
        assert message.ephemeral
        assert message.content == "This command is for the bot's operators only."
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


async def test_the_applications_owner_is_an_operator(start_bot, discord_api):
    running = await start_bot(ADMIN_USER_IDS="")
    owner = discord_api.owner  # as GET /oauth2/applications/@me reports it
    message = await reply_text(discord_api, await discord_api.invoke("cache-check", {}, user=owner, permissions=0))
    assert message.embeds[0]["title"] == "Model cache: complete"
    message = await reply_text(discord_api, await discord_api.invoke("pause", {}, user=owner, permissions=0))
    assert message.content.startswith("⏸️ Queue paused") and running.runner.queue.paused


async def test_team_admins_and_developers_are_operators_read_only_members_are_not(start_bot, discord_api):
    lead, dev, reader = (discord_api.make_user(name) for name in ("lead", "dev", "reader"))
    discord_api.team = [(lead, "admin"), (dev, "developer"), (reader, "read_only")]
    running = await start_bot(ADMIN_USER_IDS="")
    for user in (lead, dev):
        message = await reply_text(discord_api, await discord_api.invoke("pause", {}, user=user))
        assert message.content.startswith("⏸️ Queue paused")
    refused = await reply_text(discord_api, await discord_api.invoke("resume", {}, user=reader))
    assert refused.content == "This command is for the bot's operators only."
    # With a team, the application's own owner field is a placeholder, not a person.
    refused = await reply_text(discord_api, await discord_api.invoke("resume", {}, user=discord_api.owner))
    assert refused.content == "This command is for the bot's operators only."
    assert running.runner.queue.paused
