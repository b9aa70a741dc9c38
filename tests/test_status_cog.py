"""/status: answered inside Discord's 3-second window, even while an image is being made."""

from __future__ import annotations

from conftest import HUB_CACHE, TINY_REPO_ID
from test_generation_cog import delivered, imagine, reply_text


def fields_of(message):
    return {field["name"]: field["value"] for field in message.embeds[0]["fields"]}


async def test_status_while_a_generation_runs(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES="64x64,512x512")
    done = await delivered(discord_api, await imagine(discord_api, "warm the numbers", None))
    assert done.attachments
    await discord_api.wait_for(lambda: running.bot.store.stats().jobs_done == 1)
    long_job = await imagine(discord_api, "a long one", None, size="512x512", steps=50, count=4)
    await discord_api.wait_for(lambda: running.runner.queue.running is not None, 10)
    waiting = await imagine(discord_api, "waiting behind it", discord_api.make_user("bob"))
    await discord_api.wait_for(lambda: len(running.runner.queue) == 1, 10)

    status = await discord_api.invoke("status", {}, user=discord_api.make_user("anyone"))
    message = await reply_text(discord_api, status)
    assert status.ack_delay < 3 and not status.ack_late
    assert running.runner.queue.running is not None  # it really was answered mid-generation
    assert message.ephemeral
    fields = fields_of(message)
    assert fields["State"] == "ready"
    assert fields["Model"] == f"{TINY_REPO_ID}\n@ main"
    assert fields["Device"] == "cpu · float32"
    assert fields["Load"].endswith("(local cache)") and fields["Warm-up"].endswith(" s")
    assert fields["Cache folder"] == f"`{HUB_CACHE}`"
    assert fields["Queue"] == "1 waiting, 1 running"
    assert fields["Jobs done"] == "1 (1 images)"
    assert fields["Mean time per image"].endswith(" s")
    assert fields["Uptime"].endswith(" s")
    assert "GPU memory" not in fields  # on a CPU there is none to report
    for job in (long_job, waiting):
        await delivered(discord_api, job, 60)


async def test_status_shows_a_paused_queue(start_bot, discord_api):
    await start_bot()
    from test_generation_cog import admin_command

    await admin_command(discord_api, "pause")
    message = await reply_text(discord_api, await discord_api.invoke("status", {}))
    assert fields_of(message)["State"] == "ready (queue paused)"
    assert fields_of(message)["Mean time per image"] == "no data yet"
