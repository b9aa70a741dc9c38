"""Nothing lost across restarts: the real `python -m bot run` process, killed and started again.

Every test runs the bot as a subprocess against the local Discord API double (served by this test's
event loop) and the tiny model, and keeps DATA_DIR and OUTPUT_DIR across the process's lives. What is
checked is what users see in Discord: which messages carry which job's pictures, how often, in which
order, whom they mention, and that buttons on old messages still answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio

from conftest import tiny_env

# A job long enough to act while it runs: 2-3 s on the tiny model, up to thirty times that while other
# work shares the CPU. Whether it was still running is read back from the store, not assumed.
SIZES = "64x64,512x512"
SLOW = {"size": "512x512", "steps": 50, "count": 3}
LONG = 180  # seconds to wait for anything that includes generating a SLOW job
# discord.py logs GATEWAY_UP on READY: the cogs are loaded, unfinished jobs resumed and commands synced
# by then, and the double has sent GUILD_CREATE too. (The bot's own on_ready line comes 2 s later.)
MODEL_READY, GATEWAY_UP = "model ready", "has connected to Gateway"
FOOTER = re.compile(r"^Job (\d+) · ")
JOB_BUTTON = re.compile(r"zimage:(?:cancel|reroll):(\d+)")


def restarting(job_id: int, locale: str = "en-US") -> str:
    if locale == "zh-CN":  # the requester's language, long after their command
        return f"⏸️ 任务 {job_id}：机器人正在重启。你的任务已保存，机器人恢复后会继续运行。"
    return f"⏸️ Job {job_id}: the bot is restarting. Your job is saved and will run when it is back."


# ----- the bot process ---------------------------------------------------------------------------


@dataclass
class BotProcess:
    """One life of `python -m bot run`; its stderr is read line by line as it comes."""

    process: asyncio.subprocess.Process
    api: object  # the DiscordDouble
    started_at: float
    lines: list[tuple[float, str]] = field(default_factory=list)  # (time.monotonic(), line)
    readers: list[asyncio.Task] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def tail(self, count: int = 40) -> str:
        return "\n".join(line for _, line in self.lines[-count:])

    def line_time(self, text: str) -> float | None:
        return next((at for at, line in self.lines if text in line), None)

    async def until(self, predicate, timeout: float, what: str, *, alive: bool = True):
        """Wait for predicate() (re-checked on every request to the double, and every 50 ms); fail with the
        bot's last log lines if it does not come, or if the process dies meanwhile."""

        def check():
            if alive and self.process.returncode is not None:
                raise AssertionError(f"the bot exited ({self.process.returncode}) waiting for {what}:\n{self.tail()}")
            return predicate()

        try:
            return await self.api.wait_for(check, timeout)
        except TimeoutError:
            raise AssertionError(f"no {what} after {timeout} s; the bot's last lines:\n{self.tail()}") from None

    async def ready(self, timeout: float = 90) -> None:
        """Until the gateway is up: cogs loaded, unfinished jobs resumed, commands synced (or not)."""
        await self.until(lambda: self.line_time(GATEWAY_UP), timeout, "connection to the gateway")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def exit_status(self, timeout: float = 30) -> int:
        try:
            status = await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"the bot still runs {timeout} s later:\n{self.tail()}") from None
        await asyncio.gather(*self.readers)  # everything it wrote, read
        return status


async def _read_lines(stream: asyncio.StreamReader, lines: list[tuple[float, str]]) -> None:
    async for raw in stream:
        lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))


@pytest_asyncio.fixture
async def launch(discord_api, hub_cache: Path, tmp_path: Path):
    """Start the bot as a subprocess; every start shares tmp_path's DATA_DIR and OUTPUT_DIR. Whatever is
    still running when the test ends (or fails) is killed."""
    started: list[BotProcess] = []

    async def launch(**overrides: str) -> BotProcess:
        env = tiny_env(
            tmp_path,
            hub_cache,
            DISCORD_TOKEN=discord_api.valid_token,
            DISCORD_API_BASE=discord_api.api_base,
            DISCORD_GATEWAY_URL=discord_api.gateway_url,
            DEV_GUILD_ID=str(discord_api.guild_id),
            IMAGE_SIZES=SIZES,
            MAX_JOBS_PER_USER="5",
            LOG_LEVEL="INFO",
        )
        env.update(overrides)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            env=env,
            cwd=tmp_path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 20,  # progress bars redraw with \r, not \n: long "lines"
        )
        bot = BotProcess(process, discord_api, time.monotonic())
        bot.readers = [
            asyncio.create_task(_read_lines(stream, bot.lines)) for stream in (process.stderr, process.stdout)
        ]
        started.append(bot)
        return bot

    yield launch
    for bot in started:
        if bot.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                bot.kill()
            await bot.process.wait()
        for reader in bot.readers:
            reader.cancel()
        await asyncio.gather(*bot.readers, return_exceptions=True)


# ----- what users see --------------------------------------------------------------------------------


def deliveries(discord_api) -> dict[int, list]:
    """Job id -> every message that carries that job's pictures (the id is in the embed's footer)."""
    found: dict[int, list] = {}
    for message in discord_api.messages.values():
        if not message.attachments:
            continue
        for embed in message.embeds:
            match = FOOTER.match((embed.get("footer") or {}).get("text", ""))
            if match:
                found.setdefault(int(match[1]), []).append(message)
    return found


def job_id_of(interaction) -> int | None:
    """The job an /imagine (or a button click) started, from the Cancel or Reroll button on its message."""
    message = interaction.original
    for _, payload in message.history if message is not None else ():
        match = JOB_BUTTON.search(str(payload.get("components")))
        if match:
            return int(match[1])
    return None


def delivered_at(message) -> float:
    """When the pictures appeared: the message's creation, or the edit that put them in."""
    return next(at for at, payload in message.history if payload.get("embeds"))


def content(interaction) -> str:
    return (interaction.original.content or "") if interaction.original is not None else ""


async def submit(bot: BotProcess, prompt: str, user, **options):
    """/imagine, then wait until it is acknowledged and queued (its message shows the Cancel button):
    one at a time, so the jobs are accepted in the order they are submitted."""
    interaction = await bot.api.invoke("imagine", {"prompt": prompt, **options}, user=user)
    await bot.until(lambda: job_id_of(interaction), 15, f"acknowledgement of {prompt!r}")
    return interaction


def stored_states(data_dir: Path) -> dict[int, str]:
    """The job store as it is on disk (blocking). Read-only, so closing it never checkpoints the WAL
    a killed bot left: the next start must find the store exactly as the kill left it."""
    path = data_dir / "jobs.sqlite3"
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        return dict(db.execute("SELECT id, state FROM jobs ORDER BY id"))


async def until_stored(bot: BotProcess, data_dir: Path, predicate, timeout: float, what: str) -> dict[int, str]:
    """Poll the job store until predicate(states) holds; returns those states."""
    states: dict[int, str] = {}

    async def poll() -> None:
        while True:
            states.clear()
            states.update(await asyncio.to_thread(stored_states, data_dir))
            if predicate(states):
                return
            if bot.process.returncode is not None:
                raise AssertionError(f"the bot exited ({bot.process.returncode}) waiting for {what}:\n{bot.tail()}")
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no {what} after {timeout} s: {states}\n{bot.tail()}") from None
    return states


async def all_settled(bot: BotProcess, data_dir: Path, expected: set[int], timeout: float = 90) -> dict[int, str]:
    """Until every expected job is in the store and none is queued, running or undelivered."""
    return await until_stored(
        bot,
        data_dir,
        lambda states: expected <= set(states) and not {"queued", "running", "done"} & set(states.values()),
        timeout,
        "settled job store",
    )


def assert_model_ready_before_connecting(bot: BotProcess, discord_api, identify_index: int) -> None:
    ready_at = bot.line_time(MODEL_READY)
    assert ready_at is not None, bot.stderr
    assert re.search(r"model ready in \d+\.\d s", bot.stderr)
    first_request = next(r for r in discord_api.requests if r.at > bot.started_at)
    assert (first_request.method, first_request.path) == ("GET", "/users/@me")  # the login
    assert ready_at < first_request.at
    assert ready_at < discord_api.identify_times[identify_index]


def assert_no_traceback(*bots: BotProcess) -> None:
    for bot in bots:
        at = bot.stderr.find("Traceback")
        assert at < 0, bot.stderr[max(0, at - 2000) : at + 3000]


def assert_posted_after_restart(message, user) -> None:
    """Delivered with the bot token: into the job's own message (found by its stored id), or, where that
    message is not known, as a channel message."""
    assert message.via == "channel" or message.interaction is not None
    restarted = "机器人已重启" if user.locale == "zh-CN" else "the bot restarted"
    assert message.content.startswith(f"<@{user.id}> ") and restarted in message.content, message.content
    assert message.allowed_mentions == {"parse": [], "users": [int(user.id)]}


# ----- kill -9 ---------------------------------------------------------------------------------------


async def test_kill_9_twice_and_every_job_is_delivered_once_in_order(launch, discord_api, tmp_path):
    data_dir = tmp_path / "data"
    alice, bob = discord_api.make_user("alice"), discord_api.make_user("bob")

    # Life 1: one result delivered, then killed with Alice's slow job running and three jobs queued.
    first = await launch()
    await first.ready()
    assert_model_ready_before_connecting(first, discord_api, 0)
    assert discord_api.sync_count == 1
    made_before = await submit(first, "alice 1", alice, seed=1)
    await first.until(lambda: made_before.original.attachments, 30, "the first result")
    a2 = await submit(first, "alice 2", alice, seed=2, **SLOW)
    b1 = await submit(first, "bob 1", bob, seed=3)
    a3 = await submit(first, "alice 3", alice, seed=4)
    a4 = await submit(first, "alice 4", alice, seed=5)
    jobs = {job_id_of(i): i for i in (made_before, a2, b1, a3, a4)}
    assert list(jobs) == [1, 2, 3, 4, 5]
    await until_stored(first, data_dir, lambda states: states.get(2) == "running", LONG, "alice 2 running")
    first.kill()
    assert await first.exit_status() == -signal.SIGKILL
    # The store as the kill left it (if alice 2 was done already, SLOW is not slow enough on this machine).
    killed_with = await asyncio.to_thread(stored_states, data_dir)
    assert killed_with == {1: "delivered", 2: "running", 3: "queued", 4: "queued", 5: "queued"}
    assert set(deliveries(discord_api)) == {1}
    assert all(content(i).startswith(f"⏳ Job {job_id_of(i)} queued") for i in (b1, a3, a4)), [
        content(i) for i in (b1, a3, a4)
    ]

    # Life 2: killed again after Discord posted the first restarted delivery, before the bot heard back.
    # The result goes into the job's own message, edited with the bot token by its stored id.
    in_flight = discord_api.stall_next(
        "PATCH", r"^/channels/\d+/messages/\d+$", when=lambda request: bool(request.files)
    )
    second = await launch()
    await second.until(lambda: in_flight.caught, LONG, "a delivery after the restart")
    second.kill()
    assert await second.exit_status() == -signal.SIGKILL
    in_flight.release()
    assert [FOOTER.match(e["footer"]["text"])[1] for e in in_flight.caught.body["embeds"]] == ["2"]

    # Life 3: everything promised is delivered, once, in each requester's order.
    third = await launch()
    await third.ready()
    assert_model_ready_before_connecting(third, discord_api, discord_api.identify_count - 1)
    states = await all_settled(third, data_dir, {1, 2, 3, 4, 5}, LONG)
    assert states == dict.fromkeys(range(1, 6), "delivered")
    posted = deliveries(discord_api)
    assert {job: len(messages) for job, messages in posted.items()} == dict.fromkeys(range(1, 6), 1), {
        job: [(m.id, m.via, m.content) for m in messages] for job, messages in posted.items()
    }
    assert posted[1][0] is made_before.original  # the result of life 1 was not posted again
    # Every attempt at alice 2's pictures (life 2's, and any retry) edited the same message: no duplicate.
    attempts = {r.path for r in discord_api.requests if r.method == "PATCH" and "Job 2 · " in str(r.body)}
    assert attempts == {f"/channels/{a2.original.channel_id}/messages/{a2.original.id}"}
    assert not [r for r in discord_api.requests if r.method == "POST" and r.path.endswith("/messages")]
    for job, user in ((2, alice), (3, bob), (4, alice), (5, alice)):
        (message,) = posted[job]
        assert_posted_after_restart(message, user)
        assert message is jobs[job].original
        images = 3 if job == 2 else 1
        per_image = (
            [f"zimage:{a}:{job}:{i}" for a in ("upscale", "vary-strong") for i in range(images)]
            if images > 1
            else [f"zimage:{a}:{job}:0" for a in ("upscale", "vary-subtle", "vary-strong")] + [f"zimage:enhance:{job}"]
        )
        assert (
            message.custom_ids()
            == [f"zimage:{a}:{job}" for a in ("reroll", "variations", "info", "delete")] + per_image
        )
        assert message.embeds[0]["title"] == jobs[job].payload["data"]["options"][0]["value"]
        assert len(message.attachments) == (3 if job == 2 else 1)
    alice_order = [delivered_at(posted[job][0]) for job in (1, 2, 4, 5)]
    assert alice_order == sorted(alice_order)

    # Buttons on messages made by earlier lives answer in this one.
    info = await discord_api.click(posted[2][0], "zimage:info:2", user=bob)
    await third.until(lambda: info.original is not None and info.original.embeds, 10, "the Info answer")
    assert info.original.ephemeral and info.ack_delay < 3
    assert info.original.embeds[0]["title"] == "Job 2" and info.original.embeds[0]["description"] == "alice 2"
    fields = {f["name"]: f["value"] for f in info.original.embeds[0]["fields"]}
    assert fields["State"] == "delivered" and fields["Size"] == "512x512" and fields["Seeds"] == "2, 3, 4"
    reroll = await discord_api.click(made_before.original, "zimage:reroll:1", user=alice)
    await third.until(lambda: reroll.original is not None and reroll.original.attachments, 30, "the reroll's result")
    assert reroll.ack_delay < 3 and reroll.original.embeds[0]["footer"]["text"].startswith("Job 6 · ")
    assert reroll.original.embeds[0]["title"] == "alice 1" and reroll.original.via == "response"

    # Commands were synced once, by life 1: the later lives found them unchanged.
    assert discord_api.sync_count == 1
    assert "slash commands unchanged since the last sync; not syncing" in third.stderr
    third.terminate()
    assert await third.exit_status() == 0
    assert await asyncio.to_thread(stored_states, data_dir) == dict.fromkeys(range(1, 7), "delivered")
    assert_no_traceback(first, second, third)


# ----- SIGTERM ---------------------------------------------------------------------------------------


async def test_sigterm_with_jobs_queued_then_restart(launch, discord_api, tmp_path):
    data_dir = tmp_path / "data"
    # Bob reads Discord in Chinese: every message about his job, across the restart, is in Chinese.
    alice, bob = discord_api.make_user("alice"), discord_api.make_user("bob", locale="zh-CN")
    first = await launch()
    await first.ready()
    running = await submit(first, "alice running", alice, seed=1, size="512x512", steps=50, count=2)
    # Paused by an admin, so nothing can start after the running job, whatever the timing (see the next
    # test for what happens without the pause).
    paused = await discord_api.invoke("pause", {}, user=discord_api.owner)
    await first.until(lambda: "Queue paused" in content(paused), 10, "the pause")
    bob_waits = await submit(first, "bob waits", bob, seed=2)
    alice_waits = await submit(first, "alice waits", alice, seed=3)
    waiting = {1: "running", 2: "queued", 3: "queued"}
    await until_stored(first, data_dir, lambda states: states == waiting, LONG, "the first job running")

    asked_at = time.monotonic()
    first.terminate()
    assert await first.exit_status(35) == 0
    assert time.monotonic() - asked_at < 30
    # The waiting users were told, and their jobs kept; the running one was finished and delivered in its
    # own message, or (only on a machine too busy to finish it in the grace time) kept for after the restart.
    for job, interaction, user in ((2, bob_waits, bob), (3, alice_waits, alice)):
        assert interaction.original.content == restarting(job, user.locale)
        assert interaction.original.components == []  # no Cancel button left that could not work
    after_life_1 = await asyncio.to_thread(stored_states, data_dir)
    finished_in_time = bool(running.original.attachments)
    assert after_life_1 == {1: "delivered" if finished_in_time else "queued", 2: "queued", 3: "queued"}
    assert deliveries(discord_api) == ({1: [running.original]} if finished_in_time else {})

    second = await launch()
    await second.ready()
    assert await all_settled(second, data_dir, {1, 2, 3}, LONG) == dict.fromkeys((1, 2, 3), "delivered")
    posted = deliveries(discord_api)
    assert {job: len(messages) for job, messages in posted.items()} == {1: 1, 2: 1, 3: 1}
    if finished_in_time:
        assert posted[1] == [running.original] and len(running.original.attachments) == 2
    else:
        assert_posted_after_restart(posted[1][0], alice)
    assert_posted_after_restart(posted[2][0], bob)
    assert_posted_after_restart(posted[3][0], alice)
    assert [posted[job][0].embeds[0]["title"] for job in (2, 3)] == ["bob waits", "alice waits"]
    # Their own messages first said the jobs were queued again, then received the results.
    for job, interaction, user in ((2, bob_waits, bob), (3, alice_waits, alice)):
        texts = [payload.get("content") for _, payload in interaction.original.history]
        notice = (
            f"🔄 任务 {job}：机器人已重启；你的任务已保存"
            if user.locale == "zh-CN"
            else f"🔄 Job {job}: the bot restarted"
        )
        assert any(text and text.startswith(notice) for text in texts)
        assert posted[job] == [interaction.original]

    # `model ready` came before each life's login and IDENTIFY, and the commands were synced once.
    assert_model_ready_before_connecting(first, discord_api, 0)
    assert_model_ready_before_connecting(second, discord_api, 1)
    assert discord_api.sync_count == 1 and discord_api.identify_count == 2
    assert "slash commands unchanged since the last sync; not syncing" in second.stderr

    second.terminate()
    assert await second.exit_status() == 0
    assert_no_traceback(first, second)


async def test_sigterm_starts_no_job_after_telling_users_it_is_saved(launch, discord_api, tmp_path):
    data_dir = tmp_path / "data"
    alice, bob = discord_api.make_user("alice"), discord_api.make_user("bob")
    first = await launch()
    await first.ready()
    running = await submit(first, "alice running", alice, seed=1, size="512x512", steps=50, count=2)
    bob_waits = await submit(first, "bob waits", bob, seed=2)
    alice_waits = await submit(first, "alice waits", alice, seed=3)
    waiting = {1: "running", 2: "queued", 3: "queued"}
    await until_stored(first, data_dir, lambda states: states == waiting, LONG, "the first job running")
    first.terminate()
    assert await first.exit_status(35) == 0
    # What the waiting users were last told stays true: their jobs were saved, not started.
    assert [bob_waits.original.content, alice_waits.original.content] == [restarting(2), restarting(3)]
    assert bob_waits.original.components == alice_waits.original.components == []
    finished_in_time = bool(running.original.attachments)  # else cancelled after the grace time, kept
    after = {1: "delivered" if finished_in_time else "queued", 2: "queued", 3: "queued"}
    assert await asyncio.to_thread(stored_states, data_dir) == after
    assert set(deliveries(discord_api)) == ({1} if finished_in_time else set())
    assert_no_traceback(first)  # e.g. a job's progress reaching for the event loop after it closed


# ----- start-up errors -------------------------------------------------------------------------------


async def test_start_up_errors_are_one_clear_line_and_exit_2(launch, discord_api, tmp_path):
    not_a_folder = tmp_path / "data-file"
    not_a_folder.write_text("not a folder")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "jobs.sqlite3").write_bytes(b"this is not SQLite\n" * 512)

    # All three at once: the machine has few cores, but most of a start is waiting on imports.
    rejected = await launch(DISCORD_TOKEN="a-token-discord-does-not-know", DATA_DIR=str(tmp_path / "data-ok"))
    file_dir = await launch(DATA_DIR=str(not_a_folder))
    broken = await launch(DATA_DIR=str(corrupt))
    statuses = await asyncio.gather(*(bot.exit_status(90) for bot in (rejected, file_dir, broken)))
    assert statuses == [2, 2, 2], [bot.stderr for bot in (rejected, file_dir, broken)]

    # A rejected token: after the model loaded (it is loaded before connecting), one line that says what to do.
    errors = [line for _, line in rejected.lines if line.startswith("zimage-bot: Discord")]
    assert errors == [
        "zimage-bot: Discord rejected DISCORD_TOKEN (401). Copy a fresh token from the Developer Portal "
        "(your app > Bot > Reset Token) into .env."
    ], rejected.stderr
    assert rejected.lines[-1][1] == errors[0]
    assert any(r.path == "/users/@me" and r.status == 401 for r in discord_api.requests)

    # An unusable DATA_DIR: the only thing said, before the model is even looked at.
    (line,) = [line for _, line in file_dir.lines if line.strip()]
    assert line.startswith(f"zimage-bot: DATA_DIR {not_a_folder} is not a writable folder"), line
    (line,) = [line for _, line in broken.lines if line.strip()]
    assert line.startswith(f"zimage-bot: the job store {corrupt / 'jobs.sqlite3'} is not a readable SQLite"), line
    assert "move it away" in line
    assert (corrupt / "jobs.sqlite3").read_bytes() == b"this is not SQLite\n" * 512  # left for the operator

    assert_no_traceback(rejected, file_dir, broken)
    assert MODEL_READY not in file_dir.stderr + broken.stderr
    assert discord_api.identify_count == 0 and discord_api.sync_count == 0


# ----- kill -9 in the narrow windows ----------------------------------------------------------------
# The double carries out a request but holds its answer back, and the bot is killed meanwhile: Discord
# has acted, the bot never learnt it did.


async def test_kill_9_after_discord_acknowledged_a_job(launch, discord_api, tmp_path):
    data_dir = tmp_path / "data"
    bob = discord_api.make_user("bob")
    first = await launch()
    await first.ready()
    acknowledgement = discord_api.stall_next("POST", r"^/interactions/\d+/[^/]+/callback$")
    interaction = await discord_api.invoke("imagine", {"prompt": "bob's picture", "seed": 2}, user=bob)
    await first.until(lambda: acknowledgement.caught, 10, "the acknowledgement")
    assert interaction.acked_at is not None and interaction.original.loading  # Bob sees "thinking…"
    first.kill()
    assert await first.exit_status() == -signal.SIGKILL
    acknowledgement.release()
    assert await asyncio.to_thread(stored_states, data_dir) == {1: "queued"}, "an acknowledged job was lost"

    second = await launch()
    await second.ready()
    assert await all_settled(second, data_dir, {1}) == {1: "delivered"}
    posted = deliveries(discord_api)
    assert list(posted) == [1] and len(posted[1]) == 1
    assert_posted_after_restart(posted[1][0], bob)
    second.terminate()
    assert await second.exit_status() == 0


async def test_kill_9_after_the_result_was_shown(launch, discord_api, tmp_path):
    data_dir = tmp_path / "data"
    alice = discord_api.make_user("alice")
    first = await launch()
    await first.ready()
    result_edit = discord_api.stall_next(
        "PATCH", r"^/webhooks/\d+/[^/]+/messages/(@original|\d+)$", when=lambda request: bool(request.files)
    )
    interaction = await submit(first, "alice's picture", alice, seed=1)
    await first.until(lambda: result_edit.caught, 30, "the result")
    assert interaction.original.attachments  # Alice has her picture
    first.kill()
    assert await first.exit_status() == -signal.SIGKILL
    result_edit.release()

    second = await launch()
    await second.ready()
    assert await all_settled(second, data_dir, {1}) == {1: "delivered"}
    second.terminate()
    assert await second.exit_status() == 0  # waits for anything still being posted
    posted = deliveries(discord_api)
    assert [(m.via, m.content) for m in posted[1]] == [("response", "")]  # her message, and nothing more
    assert posted == {1: [interaction.original]}
