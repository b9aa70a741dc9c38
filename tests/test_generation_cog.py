"""/imagine end to end: the real bot and discord.py client, the local Discord API double, the tiny model."""

from __future__ import annotations

import io
import itertools
import re

from PIL import Image

from bot.image_files import read_parameters
from conftest import TINY_REPO_ID


async def test_imagine_whole_flow(start_bot, discord_api):
    # Big enough (for the tiny model) that progress edits have time to show.
    running = await start_bot(IMAGE_SIZES="96x64,512x512")
    user = discord_api.make_user("alice")
    interaction = await discord_api.invoke(
        "imagine", {"prompt": "a tiny red boat", "size": "512x512", "seed": 1234, "steps": 50, "count": 3}, user=user
    )
    await discord_api.wait_for(lambda: interaction.original is not None and interaction.original.attachments, 60)
    assert interaction.ack_delay is not None and interaction.ack_delay < 3 and not interaction.ack_late
    assert interaction.ack_type == 5  # deferred: "thinking…"
    message = interaction.original
    assert len(message.attachments) == 3
    for index, attachment in enumerate(message.attachments):
        with Image.open(io.BytesIO(attachment.data)) as image:
            assert image.size == (512, 512)
        assert read_parameters(attachment.data) == (
            "a tiny red boat\n"
            f"Steps: 50, Sampler: FlowMatchEuler, CFG scale: 0, Seed: {1234 + index}, Size: 512x512, "
            f"Model: {TINY_REPO_ID}"
        )
    embed = message.embeds[0]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert embed["title"] == "a tiny red boat"
    assert embed["image"]["url"] == f"attachment://{message.attachments[0].filename}"
    assert fields["Seeds"] == "1234, 1235, 1236" and fields["Size"] == "512x512" and fields["Steps"] == "50"
    assert re.fullmatch(r"\d+(\.\d)? s", fields["Time"])
    assert message.custom_ids() == [f"zimage:{action}:1" for action in ("reroll", "variations", "info", "delete")] + [
        f"zimage:{action}:1:{index}" for action in ("upscale", "vary-strong") for index in range(3)
    ]
    labels = [[c["label"] for c in row["components"]] for row in message.components]
    assert labels == [["Reroll", "Variations", "Info", "Delete"], ["U1", "U2", "U3"], ["V1", "V2", "V3"]]

    # The same message showed the queue position, then progress, with a Cancel button.
    texts = [payload.get("content") or "" for _, payload in message.history]
    assert texts[1] == "⏳ Job 1 queued: number 1 in line.\n> a tiny red boat"
    progress = texts[2:-1]
    assert progress, texts
    for text in progress:
        assert re.fullmatch(r"🎨 Job 1 generating: step \d+ of 50 · image [123] of 3\n> a tiny red boat", text), text
    assert all("zimage:cancel:1" in str(payload["components"]) for _, payload in message.history[1:-1])
    # Throttled: at most one edit in 1.5 s, so Discord's rate limit is never hit.
    times = [at for at, _ in message.history[1:-1]]
    assert all(later - earlier >= 1.4 for earlier, later in itertools.pairwise(times))
    assert discord_api.rate_limit_hits == []

    # Saved to disk too, with the same bytes, and recorded as delivered.
    saved = sorted(running.bot.settings.output_dir.glob("*.png"))
    assert [path.read_bytes() for path in saved] == [attachment.data for attachment in message.attachments]
    await discord_api.wait_for(lambda: running.bot.store.get(1).state.value == "delivered")
    assert running.bot.store.get(1).seeds == [1234, 1235, 1236]


# ----- helpers --------------------------------------------------------------------------------


async def delivered(discord_api, interaction, timeout=30):
    """Wait until the interaction's message carries the images; returns that message."""
    await discord_api.wait_for(lambda: interaction.original is not None and interaction.original.attachments, timeout)
    return interaction.original


async def reply_text(discord_api, interaction, timeout=10):
    """The text of an (ephemeral) answer to an interaction."""
    await discord_api.wait_for(
        lambda: (
            interaction.original is not None
            and not interaction.original.loading
            and (interaction.original.content or interaction.original.embeds)
        ),
        timeout,
    )
    return interaction.original


async def imagine(discord_api, prompt, user, **options):
    return await discord_api.invoke("imagine", {"prompt": prompt, **options}, user=user)


# ----- bad input ------------------------------------------------------------------------------


import pytest  # noqa: E402


@pytest.mark.parametrize(
    ("options", "unchecked", "expected"),
    [
        ({"prompt": "a cat --ar wide"}, False, "write it like `--ar 16:9`"),
        ({"prompt": "a cat --seed 99999999999"}, False, "`--seed` must be from 0 to 4294967295"),
        ({"prompt": "a cat --steps 99"}, False, "Steps must be from 1 to 50 (got 99)"),
        ({"prompt": "a cat --stylize 5"}, False, "Unknown flag `--stylize`"),
        ({"prompt": "--seed 5"}, False, "The prompt is empty"),
        ({"prompt": "   "}, False, "The prompt is empty"),
        # What Discord's client would never send, but a modified client can: checked again.
        ({"prompt": "a cat", "size": "100x100"}, True, "multiples of 16"),
        ({"prompt": "a cat", "size": "512x512"}, True, "Size 512x512 is not offered here"),
        ({"prompt": "a cat", "steps": 500}, True, "Steps must be from 1 to 50 (got 500)"),
        ({"prompt": "a cat", "seed": 2**32}, True, "Seed must be from 0 to 4294967295"),
        ({"prompt": "x" * 1600}, True, "shorten it to at most 1500"),
        ({"prompt": "a cat", "count": 9}, True, "Count must be from 1 to 4"),
    ],
)
async def test_bad_input_gets_a_private_error_and_nothing_is_queued(
    start_bot, discord_api, options, unchecked, expected
):
    running = await start_bot()
    interaction = await discord_api.invoke("imagine", options, unchecked=unchecked)
    message = await reply_text(discord_api, interaction)
    assert message.ephemeral
    assert expected in message.content
    assert "Traceback" not in message.content
    assert interaction.ack_delay < 3
    assert running.bot.store.get(1) is None and len(running.runner.queue) == 0


async def test_flags_in_the_prompt_are_applied(start_bot, discord_api):
    await start_bot()
    interaction = await imagine(discord_api, "a tall tower —ar 2:3 —seed 77 --no fog --steps 3", None)
    message = await delivered(discord_api, interaction)
    parameters = read_parameters(message.attachments[0].data)
    assert parameters == (
        "a tall tower\nNegative prompt: fog\n"
        f"Steps: 3, Sampler: FlowMatchEuler, CFG scale: 0, Seed: 77, Size: 64x96, Model: {TINY_REPO_ID}"
    )


async def test_mentions_in_prompts_never_ping(start_bot, discord_api):
    await start_bot()
    interaction = await imagine(discord_api, "@everyone <@123> <@&456> a crowd", None, seed=5)
    message = await delivered(discord_api, interaction)
    assert message.embeds[0]["title"] == "@everyone <@123> <@&456> a crowd"
    assert message.allowed_mentions == {"parse": []}
    for record in discord_api.messages.values():
        for _, payload in record.history:
            if payload.get("content") or payload.get("embeds"):
                assert payload.get("allowed_mentions") == {"parse": []}, payload


# ----- the queue: fairness and limits ---------------------------------------------------------


async def admin_command(discord_api, name):
    from conftest import ADMIN_ID

    admin = discord_api.make_user("admin", id=ADMIN_ID)
    interaction = await discord_api.invoke(name, {}, user=admin)
    return await reply_text(discord_api, interaction)


async def test_round_robin_between_users_with_positions_shown(start_bot, discord_api):
    running = await start_bot(MAX_JOBS_PER_USER="5")
    await admin_command(discord_api, "pause")
    alice, bob = discord_api.make_user("alice"), discord_api.make_user("bob")
    jobs = []
    # One request after the other, as people click: each is accepted before the next is sent.
    for index, (prompt, user) in enumerate([*((f"alice picture {i}", alice) for i in range(3)), ("bob picture", bob)]):
        jobs.append(await imagine(discord_api, prompt, user, seed=index))
        await discord_api.wait_for(lambda count=index + 1: len(running.runner.queue) == count)
    # Bob is second in line although Alice asked three times before him; everyone sees where they are.
    await discord_api.wait_for(lambda: "number 2 in line" in (jobs[3].original.content or ""), 10)
    assert jobs[3].original.content.startswith("⏸️ Job 4: queue paused by an admin.")
    await discord_api.wait_for(lambda: "number 4 in line" in (jobs[2].original.content or ""), 10)
    await admin_command(discord_api, "resume")
    for job in jobs:
        await delivered(discord_api, job)
    records = [running.bot.store.get(job_id) for job_id in range(1, 5)]
    started = sorted(records, key=lambda record: record.started_at)
    assert [record.prompt for record in started] == [
        "alice picture 0",
        "bob picture",
        "alice picture 1",
        "alice picture 2",
    ]


async def test_per_user_and_queue_limits_refuse_privately(start_bot, discord_api):
    running = await start_bot(MAX_JOBS_PER_USER="2", MAX_QUEUE="3")
    await admin_command(discord_api, "pause")
    alice, bob, carol = (discord_api.make_user(name) for name in ("alice", "bob", "carol"))
    await imagine(discord_api, "alice 0", alice)
    await discord_api.wait_for(lambda: len(running.runner.queue) == 1)  # so that "alice 0" is recorded first
    # "alice 1" and "alice 2" are sent back to back: only one of them may take Alice's last place.
    await imagine(discord_api, "alice 1", alice)
    third = await reply_text(discord_api, await imagine(discord_api, "alice 2", alice))
    assert third.ephemeral and "You already have 2 jobs queued or running" in third.content
    await imagine(discord_api, "bob 0", bob)
    full = await reply_text(discord_api, await imagine(discord_api, "carol 0", carol))
    assert full.ephemeral and "The queue is full (3 jobs waiting)" in full.content
    await discord_api.wait_for(lambda: len(running.runner.queue) == 3)
    assert [record.prompt for record in running.bot.store.unfinished()] == ["alice 0", "alice 1", "bob 0"]


# ----- buttons ----------------------------------------------------------------------------------


async def test_reroll_variations_info_and_delete(start_bot, discord_api):
    running = await start_bot()
    alice, mallory = discord_api.make_user("alice"), discord_api.make_user("mallory")
    first = await delivered(discord_api, await imagine(discord_api, "a green lamp", alice, seed=1, steps=3))

    reroll = await discord_api.click(first, "zimage:reroll:1", user=alice)
    rerolled = await delivered(discord_api, reroll)
    assert rerolled is not first
    record = running.bot.store.get(2)
    assert (record.kind, record.parent_id, record.prompt, record.steps) == ("reroll", 1, "a green lamp", 3)
    assert record.seed != 1 and len(rerolled.attachments) == 1

    variations = await delivered(discord_api, await discord_api.click(first, "zimage:variations:1", user=mallory))
    assert len(variations.attachments) == 4
    seeds = [int(read_parameters(a.data).split("Seed: ")[1].split(",")[0]) for a in variations.attachments]
    assert len(set(seeds)) == 4 and 1 not in seeds

    info = await reply_text(discord_api, await discord_api.click(first, "zimage:info:1", user=mallory))
    assert info.ephemeral and info.embeds[0]["title"] == "Job 1"
    assert info.embeds[0]["description"] == "a green lamp"

    refused = await reply_text(discord_api, await discord_api.click(first, "zimage:delete:1", user=mallory))
    assert refused.ephemeral and refused.content.startswith("Only the person who asked for job 1, an admin of")
    assert not first.deleted
    deleted = await reply_text(discord_api, await discord_api.click(first, "zimage:delete:1", user=alice))
    assert deleted.ephemeral
    await discord_api.wait_for(lambda: first.deleted)


async def test_cancel_a_queued_job_and_a_running_one(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES="64x64,512x512")
    await admin_command(discord_api, "pause")
    alice, mallory = discord_api.make_user("alice"), discord_api.make_user("mallory")
    queued = await imagine(discord_api, "a queued cat", alice)
    await discord_api.wait_for(lambda: "Cancel" in str(queued.original.components if queued.original else ""))
    refused = await reply_text(discord_api, await discord_api.click(queued.original, "zimage:cancel:1", user=mallory))
    assert "Only the person who asked for job 1, an admin of the server it was made in" in refused.content
    answer = await reply_text(discord_api, await discord_api.click(queued.original, "zimage:cancel:1", user=alice))
    assert answer.ephemeral and answer.content == "Job 1: cancelled before it started."
    await discord_api.wait_for(lambda: queued.original.content.startswith("🚫 Job 1 cancelled before it started"))
    assert queued.original.components == []
    assert running.bot.store.get(1).state.value == "cancelled"

    await admin_command(discord_api, "resume")
    long_job = await imagine(discord_api, "a long job", alice, size="512x512", steps=50, count=4)
    await discord_api.wait_for(lambda: running.runner.queue.running is not None, 10)
    await discord_api.wait_for(lambda: "Job 2 generating" in (long_job.original.content or ""), 10)
    # An admin may cancel anyone's job, by button or by /cancel.
    from conftest import ADMIN_ID

    admin = discord_api.make_user("admin", id=ADMIN_ID)
    answer = await reply_text(discord_api, await discord_api.invoke("cancel", {"job": 2}, user=admin))
    assert answer.content == "Job 2: stopping after the current step."
    await discord_api.wait_for(lambda: long_job.original.content == "🚫 Job 2 cancelled.", 10)
    assert running.bot.store.get(2).state.value == "cancelled"
    # The worker goes on serving.
    after = await delivered(discord_api, await imagine(discord_api, "after the cancel", alice))
    assert after.attachments


async def test_a_button_for_a_job_that_no_longer_exists(start_bot, discord_api):
    running = await start_bot()
    message = await delivered(discord_api, await imagine(discord_api, "a short-lived job", None))
    await discord_api.wait_for(lambda: running.bot.store.get(1).state.value == "delivered")
    running.bot.store.prune(older_than_days=1, output_dir=running.bot.settings.output_dir, now=4e9)
    answer = await reply_text(discord_api, await discord_api.click(message, "zimage:reroll:1"))
    assert answer.ephemeral and "Job 1 no longer exists" in answer.content


async def test_an_unexpected_error_gives_an_id_not_a_traceback(start_bot, discord_api, caplog):
    await start_bot()
    alice = discord_api.make_user("alice")
    message = await delivered(discord_api, await imagine(discord_api, "a fragile vase", alice))
    discord_api.fail_next("DELETE", r"/channels/\d+/messages/\d+", status=403, code=50013, message="Missing Access")
    answer = await reply_text(discord_api, await discord_api.click(message, "zimage:delete:1", user=alice))
    error_id = re.search(r"error id `([0-9a-f]{8})`", answer.content)
    assert answer.ephemeral and error_id, answer.content
    assert any(error_id[1] in record.message and record.exc_info for record in caplog.records)
    # Still serving.
    assert (await delivered(discord_api, await imagine(discord_api, "still here", alice))).attachments


# ----- delivery when Discord misbehaves -----------------------------------------------------------


async def test_delivery_after_the_token_expired_mentions_only_the_requester(start_bot, discord_api):
    running = await start_bot()
    await admin_command(discord_api, "pause")
    alice = discord_api.make_user("alice")
    interaction = await imagine(discord_api, "a slow queue, <@999> and @everyone", alice, seed=3)
    await discord_api.wait_for(lambda: len(running.runner.queue) == 1)
    discord_api.expire_token(interaction)
    await admin_command(discord_api, "resume")
    # The job's own message, found by its stored id, is edited with the bot token: nothing posted blind.
    message = await delivered(discord_api, interaction, 30)
    assert running.bot.store.get(1).status_message_id == int(message.id)
    assert message.content.startswith(f"<@{alice.id}> here is your image")
    assert message.allowed_mentions == {"parse": [], "users": [int(alice.id)]}
    assert message.custom_ids()[0] == "zimage:reroll:1"
    assert any(
        r.method == "PATCH" and r.path == f"/channels/{message.channel_id}/messages/{message.id}"
        for r in discord_api.requests
    )
    assert discord_api.channel_messages() == []
    await discord_api.wait_for(lambda: running.bot.store.get(1).state.value == "delivered")


async def test_a_channel_post_records_its_message_id(start_bot, discord_api):
    running = await start_bot()
    await admin_command(discord_api, "pause")
    alice = discord_api.make_user("alice")
    interaction = await imagine(discord_api, "a deleted message", alice, seed=3)
    await discord_api.wait_for(lambda: len(running.runner.queue) == 1 and interaction.original.content)
    discord_api.expire_token(interaction)
    interaction.original.deleted = True  # the requester (or a moderator) removed it meanwhile
    await admin_command(discord_api, "resume")
    posted = await discord_api.wait_for(lambda: [m for m in discord_api.channel_messages() if m.attachments], 30)
    assert posted[0].content.startswith(f"<@{alice.id}> here is your image (posted here because")
    await discord_api.wait_for(lambda: running.bot.store.get(1).state.value == "delivered")
    assert running.bot.store.get(1).result_message_id == int(posted[0].id)


async def test_a_429_on_the_result_edit_is_retried(start_bot, discord_api):
    await start_bot()
    discord_api.fail_next("PATCH", r"/webhooks/\d+/[^/]+/messages/\d+", status=429, retry_after=0.2, count=2)
    message = await delivered(discord_api, await imagine(discord_api, "a patient robot", None))
    statuses = [r.status for r in discord_api.requests if r.method == "PATCH" and "/webhooks/" in r.path]
    assert statuses[:2] == [429, 429] and statuses[-1] == 200
    assert message.attachments


async def test_a_gateway_drop_in_the_middle_of_a_job(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES="64x64,512x512")
    job = await imagine(discord_api, "through the storm", None, size="512x512", steps=50, count=3)
    await discord_api.wait_for(lambda: running.runner.queue.running is not None, 10)
    await discord_api.drop_gateway()
    message = await delivered(discord_api, job, 60)
    assert len(message.attachments) == 3
    await discord_api.wait_for(lambda: running.bot.is_ready() and discord_api.resume_count >= 1, 15)
    after = await delivered(discord_api, await imagine(discord_api, "after the storm", None))
    assert after.attachments


async def test_a_result_over_the_upload_limit_is_sent_smaller(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES="64x64,512x512")
    discord_api.attachment_size_limit = 150_000  # the double refuses larger uploads, as Discord does
    message = await delivered(discord_api, await imagine(discord_api, "a detailed map", None, size="512x512"))
    saved = next(running.bot.settings.output_dir.glob("*.png"))
    assert saved.stat().st_size > 150_000  # the PNG kept on disk is the full one
    attachment = message.attachments[0]
    assert attachment.filename == saved.with_suffix(".jpg").name
    assert attachment.data[:3] == b"\xff\xd8\xff" and len(attachment.data) <= 150_000
    assert message.embeds[0]["image"]["url"] == f"attachment://{attachment.filename}"


async def test_a_failed_delivery_is_tried_again_and_later_results_wait_for_it(start_bot, discord_api, caplog):
    running = await start_bot()
    running.runner.delivery_retry_delays = (1.0,)
    await admin_command(discord_api, "pause")
    alice = discord_api.make_user("alice")
    first = await imagine(discord_api, "a stubborn parcel", alice, seed=8)
    await discord_api.wait_for(lambda: len(running.runner.queue) == 1)
    second = await imagine(discord_api, "the parcel after it", alice, seed=9)
    await discord_api.wait_for(lambda: len(running.runner.queue) == 2)
    discord_api.expire_token(first)  # so the result goes through the bot token, where the failure waits
    discord_api.fail_next("PATCH", r"^/channels/\d+/messages/\d+$", status=503, message="503: Service Unavailable")
    await admin_command(discord_api, "resume")
    one = await delivered(discord_api, first, 30)
    two = await delivered(discord_api, second, 30)
    await discord_api.wait_for(lambda: running.bot.store.get(2).state.value == "delivered")
    assert running.bot.store.get(1).state.value == "delivered"
    failed = [r for r in discord_api.requests if r.method == "PATCH" and r.status == 503]
    assert len(failed) == 1
    assert any("delivering job 1 failed (attempt 1); trying again" in record.message for record in caplog.records)
    # Alice's second result, ready long before the retry, waited for her first: her order holds.
    first_at = next(at for at, payload in one.history if payload.get("embeds"))
    second_at = next(at for at, payload in two.history if payload.get("embeds"))
    assert first_at < second_at
