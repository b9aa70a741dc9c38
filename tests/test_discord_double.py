"""The Discord API double against the real discord.py client, with a tiny bot defined here."""

from __future__ import annotations

import asyncio
import hashlib
import io

import aiohttp
import discord
import pytest
import pytest_asyncio
import yarl
from discord import app_commands
from discord.ext import commands

from discord_double import SPEC_PATH, DiscordDouble

pytestmark = pytest.mark.asyncio


def picture(prompt: str, count: int) -> bytes:
    """Stand-in image bytes: not valid PNG, but every byte value appears, so mangling shows."""
    return bytes(range(256)) * 64 + hashlib.sha256(f"{prompt}/{count}".encode()).digest()


class AgainView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Again", custom_id="again")
    async def again(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await interaction.response.send_message(f"again for {interaction.user.name}", ephemeral=True)


class TinyBot(commands.Bot):
    def __init__(self, guild_id: str) -> None:
        # guild_ready_timeout: otherwise every start waits 2 s for more guilds.
        super().__init__(
            command_prefix=commands.when_mentioned, intents=discord.Intents.default(), guild_ready_timeout=0.05
        )
        self.guild = discord.Object(int(guild_id))
        self.seen: list[discord.Interaction] = []
        self.errors: list[Exception] = []

        @self.tree.command(description="Draw a tiny picture")
        @app_commands.describe(prompt="What to draw", count="How many", scale="How big", delay="Seconds to stall")
        async def draw(
            interaction: discord.Interaction,
            prompt: str,
            count: app_commands.Range[int, 1, 4] = 1,
            scale: float = 1.0,
            delay: float = 0.0,
        ) -> None:
            self.seen.append(interaction)
            if delay:  # misbehaves on purpose: answers after Discord's 3-second window
                await asyncio.sleep(delay)
                await interaction.response.send_message("too late")
                return
            await interaction.response.defer(thinking=True)
            await interaction.followup.send(
                f"{prompt} x{count} at {scale} for <@{interaction.user.id}>",
                file=discord.File(io.BytesIO(picture(prompt, count)), "picture.png"),
                view=AgainView(),
                allowed_mentions=discord.AllowedMentions.none(),
            )

        @self.tree.error
        async def on_error(_: discord.Interaction, error: app_commands.AppCommandError) -> None:
            self.errors.append(error)

    async def setup_hook(self) -> None:
        self.tree.copy_global_to(guild=self.guild)
        await self.tree.sync(guild=self.guild)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # discord.py sleeps 5 s before every re-IDENTIFY (Discord's identify rate limit); the double has none.
        pass


@pytest_asyncio.fixture
async def discord_api(monkeypatch: pytest.MonkeyPatch):
    async with DiscordDouble() as api:
        monkeypatch.setattr(discord.http.Route, "BASE", api.api_base)
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(api.gateway_url))
        yield api


@pytest_asyncio.fixture
async def bot(discord_api: DiscordDouble):
    bot = TinyBot(discord_api.guild_id)
    running = asyncio.create_task(bot.start(discord_api.valid_token))
    await discord_api.wait_for(lambda: bot.is_ready() or running.done())
    if running.done():
        running.result()  # raises what stopped the client
    yield bot
    await bot.close()
    await running


async def drawn(discord_api: DiscordDouble, **options):
    interaction = await discord_api.invoke("draw", options)
    await discord_api.wait_for(lambda: interaction.original is not None and interaction.original.attachments)
    return interaction


async def test_login_ready_and_guild(discord_api: DiscordDouble, bot: TinyBot) -> None:
    assert str(bot.user.id) == discord_api.bot_user.id
    assert str(bot.application_id) == discord_api.application_id
    guild = bot.get_guild(int(discord_api.guild_id))
    assert guild is not None and not guild.unavailable
    channel = guild.get_channel(int(discord_api.channel_id))
    assert isinstance(channel, discord.TextChannel)
    assert channel.permissions_for(guild.me).send_messages
    assert discord_api.identify_count == 1 and discord_api.intents == discord.Intents.default().value

    stranger = discord.Client(intents=discord.Intents.none())
    with pytest.raises(discord.LoginFailure):
        await stranger.login("not-the-token")
    await stranger.close()


async def test_command_sync_is_recorded(discord_api: DiscordDouble, bot: TinyBot) -> None:
    assert discord_api.sync_count == 1
    (command,) = discord_api.synced_commands[discord_api.guild_id]
    assert command["name"] == "draw"
    assert {o["name"]: o["type"] for o in command["options"]} == {"prompt": 3, "count": 4, "scale": 10, "delay": 10}
    assert await bot.tree.fetch_commands(guild=bot.guild)

    await bot.tree.sync(guild=bot.guild)
    assert discord_api.sync_count == 2
    assert discord_api.synced_commands[discord_api.guild_id][0]["id"] == command["id"]  # ids survive a re-sync


async def test_deferred_followup_delivers_the_file_intact(discord_api: DiscordDouble, bot: TinyBot) -> None:
    interaction = await drawn(discord_api, prompt="a cat", count=2, scale=1.5)

    assert interaction.ack_type == 5 and interaction.ack_delay < 1
    (message,) = discord_api.messages_for(interaction)  # the followup replaced the "thinking" message
    assert message is interaction.original and not message.loading and len(message.history) == 2
    assert message.content == f"a cat x2 at 1.5 for <@{discord_api.default_user.id}>"
    assert message.allowed_mentions == {"parse": []}
    (attachment,) = message.attachments
    assert attachment.filename == "picture.png" and attachment.data == picture("a cat", 2)
    assert message.custom_ids() == ["again"]
    assert bot.seen[-1].namespace.count == 2 and bot.seen[-1].namespace.scale == 1.5

    async with aiohttp.ClientSession() as session:  # Discord accepts one acknowledgement per interaction
        url = f"{discord_api.api_base}/interactions/{interaction.id}/{interaction.token}/callback"
        async with session.post(url, json={"type": 5}) as response:
            assert response.status == 400 and (await response.json())["code"] == 40060


async def test_button_click_is_answered(discord_api: DiscordDouble, bot: TinyBot) -> None:
    command = await drawn(discord_api, prompt="a dog")
    alice = discord_api.make_user("alice")

    click = await discord_api.click(command.original, "again", user=alice)
    await discord_api.wait_for(lambda: click.original is not None)

    assert click.ack_type == 4 and click.original.content == "again for alice" and click.original.ephemeral
    assert click.payload["message"]["id"] == command.original.id
    with pytest.raises(ValueError):
        await discord_api.click(command.original, "no-such-button")


async def test_an_answer_after_three_seconds_is_late(discord_api: DiscordDouble, bot: TinyBot) -> None:
    interaction = await discord_api.invoke("draw", {"prompt": "slow", "delay": 3.5})
    await discord_api.wait_for(lambda: interaction.ack_late, timeout=6)

    assert interaction.acked_at is None and discord_api.messages_for(interaction) == []
    await discord_api.wait_for(lambda: bot.errors)
    assert isinstance(bot.errors[0].original, discord.NotFound) and bot.errors[0].original.code == 10062


async def test_expired_token_is_refused_and_the_channel_still_works(discord_api: DiscordDouble, bot: TinyBot) -> None:
    interaction = await drawn(discord_api, prompt="an owl")
    discord_api.expire_token(interaction)
    client_side = bot.seen[-1]

    with pytest.raises(discord.HTTPException) as refused:
        await client_side.followup.send("finally done")
    assert refused.value.status == 401 and refused.value.code == 50027
    with pytest.raises(discord.HTTPException) as refused:
        await client_side.edit_original_response(content="finally done")
    assert refused.value.code == 50027

    channel = bot.get_channel(int(discord_api.channel_id))
    await channel.send(
        f"<@{client_side.user.id}> your owl",
        allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=[client_side.user]),
    )
    (posted,) = discord_api.channel_messages()
    assert posted.content.endswith("your owl")
    assert posted.allowed_mentions["parse"] == [] and posted.allowed_mentions["users"] == [client_side.user.id]


async def test_a_rate_limited_followup_is_retried(discord_api: DiscordDouble, bot: TinyBot) -> None:
    discord_api.fail_next("POST", r"^/webhooks/", status=429, retry_after=0.2)

    interaction = await drawn(discord_api, prompt="a fox")

    followups = [r for r in discord_api.requests if r.method == "POST" and r.path.startswith("/webhooks/")]
    assert [r.status for r in followups] == [429, 200]
    assert followups[1].at - followups[0].at >= 0.2
    assert interaction.original.attachments[0].data == picture("a fox", 1)


@pytest.mark.parametrize("resumable", [True, False])
async def test_the_client_reconnects_after_a_gateway_drop(
    discord_api: DiscordDouble, bot: TinyBot, resumable: bool
) -> None:
    await discord_api.drop_gateway(resumable=resumable)
    if resumable:
        await discord_api.wait_for(lambda: discord_api.resume_count == 1)
    else:  # the RESUME is refused with INVALID_SESSION, so discord.py IDENTIFYs afresh
        await discord_api.wait_for(lambda: discord_api.identify_count == 2)

    interaction = await drawn(discord_api, prompt="after the drop")
    assert interaction.original.attachments[0].data == picture("after the drop", 1)


async def test_a_body_that_breaks_the_spec_is_a_violation(discord_api: DiscordDouble) -> None:
    if not SPEC_PATH.exists():
        pytest.skip("Discord's OpenAPI description is not beside the project")
    url = f"{discord_api.api_base}/channels/{discord_api.channel_id}/messages"
    headers = {"Authorization": f"Bot {discord_api.valid_token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(url, json={"content": 12345}) as response:
            assert response.status == 400 and (await response.json())["code"] == 50035
        async with session.post(url, json={"content": "x" * 2001}) as response:
            assert response.status == 400
        async with session.post(url, json={"content": "fine", "allowed_mentions": {"users": [1, "2"]}}) as response:
            assert response.status == 200

    assert len(discord_api.violations) == 2
    assert "$.content" in discord_api.violations[0] and "is not of type 'string'" in discord_api.violations[0]
    assert "Discord allows 2000" in discord_api.violations[1]
    discord_api.violations.clear()  # otherwise leaving the double fails the test


async def test_editing_one_message_too_fast_is_rate_limited(discord_api: DiscordDouble) -> None:
    headers = {"Authorization": f"Bot {discord_api.valid_token}"}
    base = f"{discord_api.api_base}/channels/{discord_api.channel_id}/messages"
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(base, json={"content": "progress 0%"}) as response:
            message_id = (await response.json())["id"]
        statuses = []
        for percent in range(10, 70, 10):
            async with session.patch(f"{base}/{message_id}", json={"content": f"progress {percent}%"}) as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert response.headers["Via"] and (await response.json())["retry_after"] > 0
    assert statuses == [200] * 5 + [429]
    assert discord_api.rate_limit_hits and discord_api.messages[message_id].content == "progress 50%"


async def test_enforce_nonce_returns_the_earlier_message(discord_api: DiscordDouble, bot: TinyBot) -> None:
    channel = bot.get_channel(int(discord_api.channel_id))
    first = await channel.send("your picture", nonce="job-7")  # discord.py adds enforce_nonce
    again = await channel.send("your picture, again", nonce="job-7")
    other = await channel.send("another picture", nonce="job-8")

    assert again.id == first.id and other.id != first.id
    assert [m.content for m in discord_api.channel_messages()] == ["your picture", "another picture"]
    assert discord_api.channel_messages()[0].nonce == "job-7"


async def test_a_stalled_response_is_carried_out_first(discord_api: DiscordDouble, bot: TinyBot) -> None:
    stall = discord_api.stall_next("POST", r"^/channels/\d+/messages$", when=lambda request: bool(request.files))
    channel = bot.get_channel(int(discord_api.channel_id))
    await channel.send("no file: not stalled")
    sending = asyncio.create_task(channel.send("with a file", file=discord.File(io.BytesIO(b"x"), "x.bin")))

    await discord_api.wait_for(lambda: stall.caught is not None)
    assert stall.caught.files == ["x.bin"]
    assert [m.content for m in discord_api.channel_messages()] == ["no file: not stalled", "with a file"]
    await asyncio.sleep(0.2)
    assert not sending.done()  # Discord has posted it; the bot does not know yet
    stall.release()
    message = await asyncio.wait_for(sending, 5)
    assert str(message.id) == discord_api.channel_messages()[1].id
