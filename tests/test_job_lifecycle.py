"""Nothing ends half-done: background failures, failed saves, refused deliveries, shutdown and late updates.

The real bot against the local Discord API double and the tiny model, as in test_generation_cog.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time

from test_generation_cog import admin_command, delivered, imagine, reply_text
from test_status_cog import fields_of

RESTARTING = "the bot is restarting. Your job is saved and will run when it is back."


def content(interaction) -> str:
    return (interaction.original.content or "") if interaction.original is not None else ""


def private_answers(discord_api, interaction):
    return [m for m in discord_api.messages_for(interaction) if m.ephemeral and m.content]


# ----- no background task ends unnoticed --------------------------------------------------------------


async def test_a_store_that_refuses_writes_never_stops_the_worker(start_bot, discord_api):
    running = await start_bot(busy_timeout=0.2)
    await admin_command(discord_api, "pause")
    alice = discord_api.make_user("alice")
    stuck = await imagine(discord_api, "a locked store", alice, seed=1)
    await discord_api.wait_for(lambda: "Job 1" in content(stuck), 10)
    # Another process holds the store's write lock far past the busy timeout: "database is locked".
    locker = sqlite3.connect(running.bot.store.path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        await admin_command(discord_api, "resume")
        await discord_api.wait_for(lambda: content(stuck).startswith("⚠️ Job 1 failed"), 30)
        assert "may run again after the bot restarts" in stuck.original.content
        status = await reply_text(discord_api, await discord_api.invoke("status", {}))
        problems = next(value for name, value in fields_of(status).items() if name.startswith("Problems"))
        assert "database is locked" in problems
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # The worker is still there: the queue keeps draining.
    after = await delivered(discord_api, await imagine(discord_api, "the queue still drains", alice), 60)
    assert after.attachments


# ----- a failed save --------------------------------------------------------------------------------


async def test_a_failed_save_ends_the_job_clearly_and_frees_its_place(start_bot, discord_api):
    running = await start_bot(MAX_JOBS_PER_USER="1")
    output_dir = running.bot.settings.output_dir
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.write_text("OUTPUT_DIR is a file now: nothing can be saved under it")
    alice = discord_api.make_user("alice")
    job = await imagine(discord_api, "an unsaveable picture", alice, seed=2)
    await discord_api.wait_for(lambda: content(job).startswith("⚠️ Job 1 failed"), 30)
    assert "operator must fix OUTPUT_DIR" in job.original.content
    assert job.original.components == [] and not job.original.attachments
    assert running.bot.store.get(1).state.value == "failed"
    # Its place is free at once (the per-user limit is 1), and a fixed OUTPUT_DIR works again.
    output_dir.unlink()
    again = await delivered(discord_api, await imagine(discord_api, "after the fix", alice), 60)
    assert again.attachments


# ----- permanent delivery errors -------------------------------------------------------------------


async def test_a_channel_that_refuses_for_good_gets_a_dm_instead(start_bot, discord_api):
    running = await start_bot()
    await admin_command(discord_api, "pause")
    alice = discord_api.make_user("alice")
    job = await imagine(discord_api, "a refused picture", alice, seed=3)
    await discord_api.wait_for(lambda: "Job 1" in content(job), 10)
    discord_api.expire_token(job)
    discord_api.fail_next("PATCH", r"^/channels/\d+/messages/\d+$", status=403, code=50001, message="Missing Access")
    discord_api.fail_next("POST", r"^/channels/\d+/messages$", status=403, code=50013, message="Missing Permissions")
    await admin_command(discord_api, "resume")
    await discord_api.wait_for(lambda: running.bot.store.get(1).state.value == "delivered", 60)
    (dm,) = [m for m in discord_api.channel_messages() if m.attachments]
    assert discord_api.channels[dm.channel_id]["type"] == 1
    assert discord_api.channels[dm.channel_id]["recipients"][0]["id"] == alice.id
    assert dm.content.startswith("Job 1: your image could not be posted in")
    assert running.bot.store.get(1).result_message_id == int(dm.id)


async def test_a_result_nobody_can_receive_is_undeliverable_and_pruned(start_bot, discord_api):
    running = await start_bot()
    running.runner.delivery_retry_delays = (0.1, 0.1)
    await admin_command(discord_api, "pause")
    alice = discord_api.make_user("alice")
    job = await imagine(discord_api, "a picture for nobody", alice, seed=4)
    await discord_api.wait_for(lambda: "Job 1" in content(job), 10)
    discord_api.expire_token(job)
    discord_api.fail_next("PATCH", r"^/channels/\d+/messages/\d+$", status=404, code=10008, message="Unknown Message")
    discord_api.fail_next("POST", r"^/channels/\d+/messages$", status=404, code=10003, message="Unknown Channel")
    discord_api.fail_next("POST", r"^/users/@me/channels$", status=403, code=50007, message="Cannot DM this user")
    await admin_command(discord_api, "resume")
    await discord_api.wait_for(lambda: running.bot.store.get(1).state.value == "undeliverable", 60)
    record = running.bot.store.get(1)
    assert "Unknown Channel" in record.error and "Cannot DM this user" in record.error
    await asyncio.sleep(0.5)  # longer than every retry delay: none comes
    posts = [r for r in discord_api.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert len(posts) == 1
    saved = [running.bot.settings.output_dir / name for name in record.output_files]
    assert all(path.exists() for path in saved)
    report = running.bot.store.prune(older_than_days=1, output_dir=running.bot.settings.output_dir, now=4e9)
    assert report.jobs_removed == 1 and not any(path.exists() for path in saved)


# ----- /cancel answers first -----------------------------------------------------------------------


async def test_cancel_is_acknowledged_while_the_jobs_message_edit_hangs(start_bot, discord_api):
    await start_bot()
    await admin_command(discord_api, "pause")
    alice = discord_api.make_user("alice")
    queued = await imagine(discord_api, "a job to cancel", alice)
    await discord_api.wait_for(lambda: "Job 1" in content(queued), 10)
    stuck = discord_api.stall_next("PATCH", r"^/webhooks/\d+/[^/]+/messages/\d+$")
    await admin_command(discord_api, "pause")  # re-shows waiting jobs: that edit now hangs, holding its lock
    await discord_api.wait_for(lambda: stuck.caught, 10)
    click = await discord_api.click(queued.original, "zimage:cancel:1", user=alice)
    await discord_api.wait_for(lambda: click.acked_at is not None, 5)
    assert click.ack_delay < 3 and not click.ack_late
    stuck.release()
    answer = await reply_text(discord_api, click)
    assert answer.ephemeral and answer.content == "Job 1: cancelled before it started."
    await discord_api.wait_for(lambda: queued.original.content.startswith("🚫 Job 1 cancelled before it started"))


# ----- shutdown ------------------------------------------------------------------------------------


async def test_shutdown_with_50_jobs_queued_and_a_slow_discord_ends_within_30_s(start_bot, discord_api):
    running = await start_bot(MAX_QUEUE="60", MAX_JOBS_PER_USER="60")
    await admin_command(discord_api, "pause")
    alice = discord_api.make_user("alice")
    jobs = [await imagine(discord_api, f"waiting {index}", alice, seed=index) for index in range(50)]
    await discord_api.wait_for(lambda: len(running.runner.queue) == 50, 60)
    await discord_api.wait_for(lambda: all("paused" in content(job) for job in jobs), 60)
    discord_api.slow_down("PATCH", r"^/webhooks/", 1.0)  # every edit takes a second to answer

    asked_at = time.monotonic()
    running.bot.request_shutdown()
    await asyncio.wait_for(running.task, 40)
    assert time.monotonic() - asked_at < 30
    told = [job for job in jobs if job.original.content.startswith("⏸️ Job ") and RESTARTING in job.original.content]
    assert len(told) == 50
    assert all(job.original.components == [] for job in jobs)
    assert {record.state.value for record in running.bot.store.unfinished()} == {"queued"}


# ----- late updates never undo a final message ---------------------------------------------------------


async def test_a_late_update_never_shows_a_finished_job_again(start_bot, discord_api):
    running = await start_bot()
    await admin_command(discord_api, "pause")
    alice = discord_api.make_user("alice")
    queued = await imagine(discord_api, "a cancelled job", alice)
    await discord_api.wait_for(lambda: "Job 1" in content(queued), 10)
    job = running.runner.find(1)
    await reply_text(discord_api, await discord_api.click(queued.original, "zimage:cancel:1", user=alice))
    await discord_api.wait_for(lambda: queued.original.content.startswith("🚫 Job 1 cancelled"))
    edits = len(queued.original.history)
    running.runner.presenter.show(job)  # a position or progress update that was already on its way
    await asyncio.sleep(2.0)  # longer than the edit throttle
    assert len(queued.original.history) == edits
    assert queued.original.content.startswith("🚫 Job 1 cancelled")


async def test_after_shutdown_begins_nothing_overwrites_the_restart_notice(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES="64x64,512x512")
    alice, bob = discord_api.make_user("alice"), discord_api.make_user("bob")
    long_job = await imagine(discord_api, "a long one", alice, size="512x512", steps=50, count=4)
    await discord_api.wait_for(lambda: running.runner.queue.running is not None, 20)
    bob_waits = await imagine(discord_api, "bob waits", bob)
    # Job numbers follow the order the store records them in: Bob's must be job 2 before Alice asks.
    await discord_api.wait_for(lambda: "Job 2" in content(bob_waits), 10)
    alice_waits = await imagine(discord_api, "alice waits", alice)
    await discord_api.wait_for(lambda: len(running.runner.queue) == 2, 10)
    running.bot.request_shutdown()
    await discord_api.wait_for(lambda: RESTARTING in content(bob_waits), 10)
    await discord_api.wait_for(lambda: RESTARTING in content(alice_waits), 10)
    # An admin pauses and Alice cancels her waiting job while the running one finishes.
    await admin_command(discord_api, "pause")
    await reply_text(discord_api, await discord_api.invoke("cancel", {"job": 3}, user=alice))
    await asyncio.sleep(2.0)  # longer than the edit throttle
    assert RESTARTING in bob_waits.original.content  # still what Bob was last told
    assert alice_waits.original.content.startswith("🚫 Job 3 cancelled")
    await asyncio.wait_for(running.task, 40)
    assert long_job.original is not None


async def test_a_job_accepted_just_as_shutdown_begins_is_refused_privately(start_bot, discord_api):
    running = await start_bot()
    alice = discord_api.make_user("alice")
    acknowledgement = discord_api.stall_next("POST", r"^/interactions/\d+/[^/]+/callback$")
    late = await imagine(discord_api, "just too late", alice)
    await discord_api.wait_for(lambda: acknowledgement.caught, 10)
    running.runner.queue.close()  # shutdown begins while the public "thinking…" is on its way
    acknowledgement.release()
    (answer,) = await discord_api.wait_for(lambda: private_answers(discord_api, late), 10)
    assert "shutting down" in answer.content
    assert late.original.deleted  # the public "thinking…" message did not become the error
    assert len(running.runner.queue) == 0 and running.runner.queue.running is None
    assert running.bot.store.get(1).state.value == "cancelled"
