"""/history and /info read the job store; retention keeps it bounded."""

from __future__ import annotations

import time

from bot.jobs.store import JobRecord, JobState, JobStore
from test_generation_cog import delivered, imagine, reply_text


async def test_history_lists_my_recent_jobs_only(start_bot, discord_api):
    running = await start_bot()
    alice, bob = discord_api.make_user("alice"), discord_api.make_user("bob")
    for seed, prompt in ((11, "first"), (12, "second")):
        await delivered(discord_api, await imagine(discord_api, prompt, alice, seed=seed))
    await delivered(discord_api, await imagine(discord_api, "bob's own", bob, seed=13))
    await discord_api.wait_for(lambda: running.bot.store.stats().jobs_done == 3)

    message = await reply_text(discord_api, await discord_api.invoke("history", {}, user=alice))
    assert message.ephemeral
    fields = message.embeds[0]["fields"]
    assert [field["name"] for field in fields] == ["Job 2 · delivered · 64x64", "Job 1 · delivered · 64x64"]
    assert fields[0]["value"] == "> second\nseed 12 · steps 2"
    assert "bob" not in str(message.embeds)

    nobody = await reply_text(discord_api, await discord_api.invoke("history", {}, user=discord_api.make_user("new")))
    assert nobody.content == "You have no jobs yet. Try `/imagine`."


async def test_info_shows_every_parameter(start_bot, discord_api):
    await start_bot()
    await delivered(discord_api, await imagine(discord_api, "a kite --no clouds", None, seed=5, guidance=1.5))
    message = await reply_text(discord_api, await discord_api.invoke("info", {"job": 1}))
    embed = message.embeds[0]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert message.ephemeral and embed["title"] == "Job 1" and embed["description"] == "a kite"
    assert fields["Seeds"] == "5" and fields["Size"] == "64x64" and fields["Steps"] == "2"
    assert fields["Guidance"] == "1.5" and fields["Negative prompt"] == "clouds"
    missing = await reply_text(discord_api, await discord_api.invoke("info", {"job": 99}))
    assert missing.ephemeral and "There is no job 99" in missing.content


async def test_retention_removes_old_finished_jobs_and_their_images_at_start(start_bot, discord_api, tmp_path):
    output_dir, data_dir = tmp_path / "outputs", tmp_path / "data"
    output_dir.mkdir()
    old_png, new_png, owed_png = output_dir / "old.png", output_dir / "new.png", output_dir / "owed.png"
    for path in (old_png, new_png, owed_png):
        path.write_bytes(path.stem.encode())
    long_ago = time.time() - 40 * 86400
    with JobStore(data_dir) as store:
        common = dict(
            user_id=1,
            guild_id=None,
            channel_id=int(discord_api.channel_id),
            prompt="p",
            negative_prompt="",
            width=64,
            height=64,
            steps=2,
            seed=1,
            guidance=0.0,
            count=1,
        )
        old = store.add(JobRecord(id=None, **common, created_at=long_ago))
        store.update(old.id, state=JobState.DELIVERED, finished_at=long_ago, output_files=[str(old_png)])
        recent = store.add(JobRecord(id=None, **common))
        store.update(recent.id, state=JobState.DELIVERED, finished_at=time.time(), output_files=[str(new_png)])
        waiting = store.add(JobRecord(id=None, **common, created_at=long_ago))  # still owed: never pruned
        store.update(waiting.id, state=JobState.DONE, output_files=[str(owed_png)], seeds=[1])

    running = await start_bot(RETENTION_DAYS="30", OUTPUT_DIR=str(output_dir), DATA_DIR=str(data_dir))
    await running.api.wait_for(lambda: running.bot.store.get(old.id) is None)
    assert not old_png.exists() and new_png.exists()
    assert running.bot.store.get(recent.id) is not None
    # The job still owed from before the restart is delivered, never pruned.
    await running.api.wait_for(lambda: running.bot.store.get(waiting.id).state is JobState.DELIVERED)
    assert owed_png.exists()
    posted = running.api.channel_messages()
    assert [m.attachments[0].data for m in posted] == [b"owed"]
    assert "the bot restarted" in posted[0].content
