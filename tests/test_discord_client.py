"""The Discord client's start-up: command sync that fails without stopping the bot, and no token in logs."""

from __future__ import annotations

import logging

from bot.discord_bot.client import SYNC_STATE_FILE
from test_generation_cog import reply_text

GUILD_COMMANDS = r"^/applications/\d+/guilds/\d+/commands$"


def sync_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bot.discord_bot.client" and "could not sync" in r.getMessage()]


async def test_a_dev_guild_the_bot_is_not_in_is_one_warning_and_the_bot_keeps_serving(start_bot, discord_api, caplog):
    running = await start_bot(DEV_GUILD_ID="123456789")  # Discord answers 403 / 50001 Missing Access
    assert running.bot.is_ready() and not running.task.done()
    (warning,) = sync_warnings(caplog)
    assert warning.levelno == logging.WARNING and warning.exc_info is None
    text = warning.getMessage()
    assert "\n" not in text
    assert "guild 123456789" in text and "403" in text and "Missing Access" in text and "DEV_GUILD_ID" in text
    assert not (running.bot.settings.data_dir / SYNC_STATE_FILE).exists()  # tried again at the next start
    assert discord_api.sync_count == 0
    assert running.runner.queue is not None and not running.runner.queue.closed


async def test_a_discord_5xx_during_sync_keeps_the_commands_synced_before(start_bot, discord_api, caplog):
    first = await start_bot()
    assert discord_api.sync_count == 1
    await first.stop()
    first.bot.store.close()
    state_file = first.bot.settings.data_dir / SYNC_STATE_FILE
    state_file.unlink()  # as if the command set had changed since

    discord_api.fail_next("PUT", GUILD_COMMANDS, status=503, message="503: Service Unavailable")
    second = await start_bot()
    (warning,) = sync_warnings(caplog)
    assert "503" in warning.getMessage() and "next start" in warning.getMessage() and warning.exc_info is None
    assert discord_api.sync_count == 1 and not state_file.exists()
    # The commands Discord already has still reach the bot.
    status = await discord_api.invoke("status", {})
    assert "zimage-bot status" in (await reply_text(discord_api, status)).embeds[0]["title"]
    await second.stop()
    second.bot.store.close()

    await start_bot()  # Discord is back: the sync is made and recorded
    assert discord_api.sync_count == 2 and state_file.exists()


async def test_the_token_appears_in_no_log_line_of_a_start(start_bot, discord_api, caplog):
    caplog.set_level(logging.DEBUG)
    running = await start_bot()
    status = await discord_api.invoke("status", {})
    await reply_text(discord_api, status)
    await running.stop()
    token = discord_api.valid_token
    assert caplog.records  # the start was logged...
    for record in caplog.records:
        assert token not in record.getMessage(), record.getMessage()  # ...without the token
    assert token not in repr(running.bot.settings) and token not in str(running.bot.settings)


def test_a_jobs_interaction_token_is_in_no_repr():
    from bot.jobs.store import JobRecord

    record = JobRecord(
        **dict(id=1, user_id=2, guild_id=3, channel_id=4, prompt="a cat", negative_prompt=""),
        **dict(width=64, height=64, steps=2, seed=1, guidance=0.0, count=1),
        interaction_token="aW50ZXJhY3Rpb24-secret",
    )
    assert record.interaction_token == "aW50ZXJhY3Rpb24-secret"
    assert "secret" not in repr(record) and "secret" not in str(record)
