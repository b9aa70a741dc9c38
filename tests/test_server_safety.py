"""Safe in any server, through the real bot and the Discord double with two guilds: who may see and act on
which job, /settings and its bad inputs, the server's rules at /imagine, and the minors rule."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest

from bot.guild_settings import GuildSettings
from bot.jobs.store import JobState, JobStore
from conftest import ADMIN_ID
from discord_double import MANAGE_GUILD, MEMBER_PERMISSIONS
from test_generation_cog import delivered, imagine, reply_text

MANAGER = MEMBER_PERMISSIONS | MANAGE_GUILD  # Manage Server, not Administrator


@dataclasses.dataclass
class World:
    api: object
    running: object
    guild2: str
    general2: str
    art: str  # a second channel of the first guild
    art_thread: str
    artists: str  # a role of the first guild
    foreign_role: str  # a role of the second guild
    alice: object  # member of the first guild
    bob: object  # member of the first guild
    carol: object  # member of the second guild
    operator: object  # ADMIN_USER_IDS

    @property
    def store(self) -> JobStore:
        return self.running.bot.store


@pytest.fixture
async def world(start_bot, discord_api):
    # Everything the bot must know of is there before it connects (GUILD_CREATE carries it).
    guild2 = discord_api.add_guild("Other Guild")
    general2 = next(c["id"] for c in discord_api.channels.values() if c.get("guild_id") == guild2)
    art = discord_api.add_channel("art")
    art_thread = discord_api.add_thread(art, "art thread")
    artists, foreign_role = discord_api.add_role("artists"), discord_api.add_role("x", guild_id=guild2)

    async def start(**overrides):
        # Commands synced globally, as in production: usable in both guilds and in DMs.
        return await start_bot(DEV_GUILD_ID="", **overrides)

    running = await start()
    users = [discord_api.make_user(name) for name in ("alice", "bob", "carol")]
    operator = discord_api.make_user("operator", id=ADMIN_ID)
    world = World(discord_api, running, guild2, general2, art, art_thread, artists, foreign_role, *users, operator)
    world.restart = start  # type: ignore[attr-defined]
    return world


async def answer(world: World, name: str, options: dict | None = None, **kwargs):
    return await reply_text(world.api, await world.api.invoke(name, options or {}, **kwargs))


async def make(api, prompt: str, user=None, *, channel=None, roles=None, guild=True, **options):
    """/imagine by `user` in `channel` (or a DM), with these roles."""
    return await api.invoke(
        "imagine", {"prompt": prompt, **options}, user=user, channel=channel, roles=roles, guild=guild
    )


# ----- job isolation ------------------------------------------------------------------------------


async def test_info_answers_the_requester_the_jobs_guild_and_operators_only(world):
    api = world.api
    await delivered(api, await imagine(api, "a secret garden", world.alice, seed=3))
    dm_job = await make(api, "a private sketch", world.alice, guild=False)
    await delivered(api, dm_job)
    nothing = await answer(world, "info", {"job": 99}, user=world.bob)
    assert nothing.ephemeral and nothing.content == "There is no job 99 (old jobs are removed after a while)."

    shown = [
        await answer(world, "info", {"job": 1}, user=world.bob),  # anyone in the job's guild
        await answer(world, "info", {"job": 1}, user=world.alice, guild=False),  # its requester, anywhere
        await answer(world, "info", {"job": 1}, user=world.operator, channel=world.general2),  # an operator
        await answer(world, "info", {"job": 2}, user=world.alice, guild=False),
    ]
    assert [message.embeds[0]["title"] for message in shown] == ["Job 1", "Job 1", "Job 1", "Job 2"]

    hidden = [
        await answer(world, "info", {"job": 1}, user=world.carol, channel=world.general2),  # another guild
        await answer(world, "info", {"job": 1}, user=world.carol, guild=False),
        await answer(world, "info", {"job": 2}, user=world.bob),  # someone else's DM
        await answer(world, "info", {"job": 2}, user=api.make_user("admin", admin=True)),
    ]
    for job_id, message in zip((1, 1, 2, 2), hidden, strict=True):
        # Exactly what a job that does not exist gets: nothing says the job is there.
        assert message.ephemeral and message.embeds == []
        assert message.content == f"There is no job {job_id} (old jobs are removed after a while)."

    # /history lists only the caller's own jobs.
    assert (await answer(world, "history", user=world.carol, channel=world.general2)).content.startswith(
        "You have no jobs yet"
    )
    fields = (await answer(world, "history", user=world.alice)).embeds[0]["fields"]
    assert [field["name"].split(" · ")[0] for field in fields] == ["Job 2", "Job 1"]


async def test_cancel_by_requester_guild_admin_of_the_jobs_guild_or_operator(world):
    api, store = world.api, world.store
    await answer(world, "pause", user=world.operator)
    for index in range(3):
        await imagine(api, f"queued {index}", world.alice)
        await api.wait_for(lambda count=index + 1: len(world.running.runner.queue) == count)

    refusals = [
        await answer(world, "cancel", {"job": 1}, user=world.bob),  # a member of the same guild
        await answer(world, "cancel", {"job": 1}, user=world.carol, channel=world.general2),
        # An admin of another guild is no admin here.
        await answer(world, "cancel", {"job": 1}, user=world.carol, channel=world.general2, permissions=MANAGER),
        await answer(world, "cancel", {"job": 1}, user=api.make_user("boss", admin=True), channel=world.general2),
    ]
    for message in refusals:
        assert message.ephemeral
        assert message.content == (
            "Only the person who asked for job 1, an admin of the server it was made in, "
            "or the bot's operator can cancel it."
        )
    assert store.get(1).state is JobState.QUEUED and len(world.running.runner.queue) == 3

    manager = api.make_user("manager")
    done = await answer(world, "cancel", {"job": 1}, user=manager, permissions=MANAGER)
    assert done.content == "Job 1: cancelled before it started."
    done = await answer(world, "cancel", {"job": 2}, user=world.operator, guild=False)
    assert done.content == "Job 2: cancelled before it started."
    done = await answer(world, "cancel", {"job": 3}, user=world.alice, channel=world.art)
    assert done.content == "Job 3: cancelled before it started."
    assert [store.get(job_id).state for job_id in (1, 2, 3)] == [JobState.CANCELLED] * 3


async def test_buttons_follow_the_same_rules_and_act_only_on_their_messages_job(world):
    api = world.api
    first = await delivered(api, await imagine(api, "a blue bottle", world.alice, seed=1))
    second = await delivered(api, await imagine(api, "a red bottle", world.bob, seed=2))

    refused = await reply_text(api, await api.click(first, "zimage:delete:1", user=world.bob))
    assert refused.ephemeral and refused.content.startswith("Only the person who asked for job 1")
    assert not first.deleted
    # A modified client sends the Delete of Bob's job from Alice's message: ignored, nothing deleted.
    forged = await api.click(first, "zimage:delete:2", user=world.bob, forged=True)
    info = await reply_text(api, await api.click(first, "zimage:info:1", user=world.bob))
    assert info.embeds[0]["title"] == "Job 1"
    assert forged.acked_at is None and not first.deleted and not second.deleted
    manager = api.make_user("manager")
    deleted = await reply_text(api, await api.click(first, "zimage:delete:1", user=manager, permissions=MANAGER))
    assert deleted.content == "🗑️ Deleted."
    await api.wait_for(lambda: first.deleted)


# ----- /settings ----------------------------------------------------------------------------------


async def test_settings_are_for_guild_admins_in_their_guild(world):
    _, definition = world.api.command("settings")
    assert str(definition["default_member_permissions"]) == str(MANAGE_GUILD)  # hidden from members
    assert definition["contexts"] == [0]  # servers only
    refused = await answer(world, "settings nsfw", {"policy": "allow"}, user=world.bob)
    assert refused.ephemeral
    assert refused.content == "Only members with the Manage Server or Administrator permission can use /settings."
    refused = await answer(world, "settings show", user=world.operator, guild=False)
    assert refused.content == "Server settings are changed in the server: run /settings there."
    assert world.store.guild_settings(int(world.api.guild_id)) == GuildSettings(int(world.api.guild_id))


async def test_every_settings_subcommand_its_bad_input_and_a_restart(world):
    api = world.api
    guild1 = int(api.guild_id)
    admin = api.make_user("admin", admin=True)

    async def settings(sub: str, *, unchecked: bool = False, **options):
        return await answer(world, f"settings {sub}", options, user=admin, permissions=MANAGER, unchecked=unchecked)

    async def refused(sub: str, expected: str, **options):
        before = world.store.guild_settings(guild1)
        message = await settings(sub, unchecked=True, **options)
        assert message.ephemeral and expected in message.content, message.content
        assert world.store.guild_settings(guild1) == before  # nothing half-saved
        return message

    shown = await settings("show")
    fields = {field["name"]: field["value"] for field in shown.embeds[0]["fields"]}
    assert fields["Channels"] == "every channel" and fields["NSFW policy"].startswith("block")
    assert fields["Daily limit"] == "no daily limit" and fields["Required role"].startswith("none")

    # channels
    done = await settings("channels", add=world.art)
    assert done.content == f"✅ /imagine now works in <#{world.art}>."
    await settings("channels", add=api.channel_id)
    await refused("channels", "I cannot see that channel in this server", add=world.general2)
    await refused("channels", "is a thread: allow", add=world.art_thread)
    await refused("channels", "Give exactly one of `add`, `remove`, `clear`")
    await refused("channels", "Give exactly one of", add=world.art, clear=True)
    await refused("channels", "is not in the list", remove=world.general2)
    await refused("channels", "use `clear:True`", clear=False)
    await settings("channels", remove=api.channel_id)
    assert world.store.guild_settings(guild1).allowed_channels == (int(world.art),)

    # nsfw
    done = await settings("nsfw", policy="spoiler")
    assert done.content.startswith("✅ NSFW policy: spoiler")
    await refused("nsfw", "must be `block`, `spoiler` or `allow`", policy="maybe")

    # words
    assert (await settings("words", add="  Gore ")).content == '✅ "Gore" is now blocked in prompts (1 blocked in all).'
    await settings("words", add="血腥")
    await refused("words", '"gore" is already blocked', add="gore")
    await refused("words", "at most 100 characters", add="x" * 101)
    await refused("words", '"nope" is not blocked', remove="nope")
    await refused("words", "Give exactly one of")
    await settings("words", add="temporary")
    await settings("words", remove="TEMPORARY")

    # limits
    assert (await settings("limits", daily=5, max_count=2)).content == (
        "✅ Limits: 5 images per member per day (UTC); at most 2 image(s) a job."
    )
    await refused("limits", "Give `daily`, `max_count` or both.")
    await refused("limits", "from 0 (unlimited) to 1000", daily=1001)
    await refused("limits", "from 1 to 4", max_count=5)
    await refused("limits", "from 1 to 4", max_count=0)

    # role
    artists = world.artists
    await refused("role", "I cannot see that role in this server", required=world.foreign_role)
    await refused("role", "Everyone has @everyone", required=api.guild_id)
    await refused("role", "Give exactly one of `required`, `clear`")
    assert (await settings("role", required=artists)).content == f"✅ /imagine now needs the <@&{artists}> role."
    await settings("role", clear=True)
    await settings("role", required=artists)

    # enhance
    assert (await settings("enhance", default="forbidden")).content == "✅ Prompt enhancer: forbidden."
    await refused("enhance", "must be `on`, `off` or `forbidden`", default="sometimes")

    expected = GuildSettings(
        guild1,
        allowed_channels=(int(world.art),),
        nsfw_policy="spoiler",
        blocked_words=("Gore", "血腥"),
        daily_limit=5,
        max_count=2,
        required_role=int(artists),
        enhance_default="forbidden",
    ).checked()
    assert world.store.guild_settings(guild1) == expected
    assert world.store.guild_settings(int(world.guild2)) == GuildSettings(int(world.guild2))  # untouched

    # A full word list, and settings that survive a restart.
    full = dataclasses.replace(expected, blocked_words=tuple(f"w{i}" for i in range(100)))
    world.store.save_guild_settings(full)
    await refused("words", "holds at most 100 words", add="one more")
    world.store.save_guild_settings(expected)
    await world.running.stop()
    world.running.bot.store.close()
    world.running = await world.restart()
    assert world.store.guild_settings(guild1) == expected
    shown = await settings("show")
    fields = {field["name"]: field["value"] for field in shown.embeds[0]["fields"]}
    assert fields["Channels"] == f"<#{world.art}>" and fields["Blocked words"] == "`Gore`, `血腥`"
    assert fields["Required role"] == f"<@&{artists}>" and fields["Prompt enhancer"] == "forbidden"


# ----- the server's rules at /imagine ---------------------------------------------------------


async def test_the_servers_rules_are_applied_at_imagine(world):
    api, store = world.api, world.store
    guild1 = int(api.guild_id)
    artists = world.artists
    store.save_guild_settings(
        GuildSettings(
            guild1,
            allowed_channels=(int(world.art),),
            blocked_words=("gore", "血腥"),
            daily_limit=3,
            max_count=2,
            required_role=int(artists),
        )
    )
    member = {"user": world.alice, "roles": [artists]}

    def jobs() -> int:
        return len(store.recent_for_user(int(world.alice.id), 100))

    async def refused(prompt: str, expected: str, **options):
        jobs_before = jobs()
        message = await reply_text(api, await make(api, prompt, **{**member, **options}))
        assert message.ephemeral and expected in message.content, message.content
        assert jobs() == jobs_before  # nothing queued
        return message

    await refused("a cat", f"In this server /imagine works in <#{world.art}>; try it there.")
    await refused("a cat", f"In this server /imagine needs the <@&{artists}> role", channel=world.art, roles=[])
    await refused("GORE everywhere", 'This server blocks "gore" in prompts', channel=world.art)
    await refused("a cat", 'This server blocks "gore"', channel=world.art, negative_prompt="blood and gore")
    await refused("一只血腥的猫", 'This server blocks "血腥"', channel=world.art)
    await refused("a cat", "at most 2 image(s) a job", channel=world.art, count=3)

    # A thread of an allowed channel counts as that channel; gorilla is not gore.
    await delivered(api, await make(api, "a gorilla", channel=world.art_thread, **member))
    await delivered(api, await make(api, "two gorillas", channel=world.art, count=2, **member))
    over = await refused("a third", "You have made your 3 images for today in this server.", channel=world.art)
    reset = int(re.search(r"<t:(\d+):R>", over.content)[1])
    assert reset % 86400 == 0  # midnight UTC, shown in the reader's time zone by Discord
    assert "The count resets" in over.content

    # The other guild has none of these rules.
    await delivered(api, await make(api, "GORE in the other guild", world.carol, channel=world.general2))


async def test_daily_limit_says_how_many_are_left(world):
    api, store = world.api, world.store
    store.save_guild_settings(GuildSettings(int(api.guild_id), daily_limit=2))
    await delivered(api, await imagine(api, "one", world.alice))
    message = await reply_text(api, await imagine(api, "three more", world.alice, count=3))
    assert message.ephemeral
    assert "You have 1 of your 2 images for today left in this server: ask for 1 or fewer" in message.content
    assert re.search(r"resets <t:\d+:R>", message.content)


async def test_requests_sent_at_once_cannot_pass_the_daily_limit_together(world):
    api, store = world.api, world.store
    store.save_guild_settings(GuildSettings(int(api.guild_id), daily_limit=2))
    interactions = await asyncio.gather(*(imagine(api, f"at once {n}", world.alice) for n in range(3)))
    answers = [(await reply_text(api, interaction, timeout=30)).content for interaction in interactions]
    refused = [text for text in answers if text.startswith("You have made your 2 images for today")]
    assert len(refused) == 1, answers
    assert len(store.recent_for_user(int(world.alice.id))) == 2


@pytest.mark.parametrize(
    "prompt",
    ["a sexy 14 year old girl", "nude children on the beach", "一个裸体的小女孩", "性感的未成年人"],
)
async def test_sexual_content_involving_minors_is_refused_everywhere(world, prompt):
    api = world.api
    store = world.store
    store.save_guild_settings(GuildSettings(int(api.guild_id), nsfw_policy="allow").checked())
    for where in ({}, {"guild": False}, {"channel": world.art_thread}):
        message = await reply_text(api, await make(api, prompt, world.alice, **where))
        assert message.ephemeral
        assert message.content == "This bot never makes sexual content involving minors. Nothing was queued."
    assert store.unfinished() == [] and store.recent_for_user(int(world.alice.id)) == []


async def test_buttons_that_queue_jobs_follow_the_servers_rules(world):
    api, store = world.api, world.store
    first = await delivered(api, await make(api, "a brass lamp", world.alice))
    # No safety check in this service: every image is stored as not flagged.
    assert store.get(1).flagged == [False]
    store.save_guild_settings(GuildSettings(int(api.guild_id), max_count=2, required_role=int(world.artists)))
    refused = await reply_text(api, await api.click(first, "zimage:reroll:1", user=world.bob))
    assert refused.ephemeral and f"needs the <@&{world.artists}> role" in refused.content
    # Variations asks for as many images as the server allows a job, rather than being refused.
    click = await api.click(first, "zimage:variations:1", user=world.bob, roles=[world.artists])
    variations = await delivered(api, click)
    assert len(variations.attachments) == 2 and store.get(2).count == 2
    assert store.get(2).flagged == [False, False]


async def test_harmless_prompts_about_children_are_made(world):
    api = world.api
    for prompt in ("a child flying a kite", "孩子们在公园里放风筝"):
        assert (await delivered(api, await make(api, prompt, world.alice))).attachments
