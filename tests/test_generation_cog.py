"""/imagine end to end: the real bot and discord.py client, the local Discord API double, the tiny model."""

from __future__ import annotations

import io
import re

from PIL import Image

from bot.png_output import read_parameters
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
    assert message.custom_ids() == [f"zimage:{action}:1" for action in ("reroll", "variations", "info", "delete")]
    labels = [c["label"] for row in message.components for c in row["components"]]
    assert labels == ["Reroll", "Variations", "Info", "Delete"]

    # The same message showed the queue position, then progress, with a Cancel button.
    texts = [payload.get("content") or "" for _, payload in message.history]
    assert texts[1] == "⏳ Queued: number 1 in line.\n> a tiny red boat"
    progress = texts[2:-1]
    assert progress, texts
    for text in progress:
        assert re.fullmatch(r"🎨 Generating: step \d+ of 50 · image [123] of 3\n> a tiny red boat", text), text
    assert all("zimage:cancel:1" in str(payload["components"]) for _, payload in message.history[1:-1])
    # Throttled: at most one edit in 1.5 s, so Discord's rate limit is never hit.
    times = [at for at, _ in message.history[1:-1]]
    assert all(later - earlier >= 1.4 for earlier, later in zip(times, times[1:]))
    assert discord_api.rate_limit_hits == []

    # Saved to disk too, with the same bytes, and recorded as delivered.
    saved = sorted(running.bot.settings.output_dir.glob("*.png"))
    assert [path.read_bytes() for path in saved] == [attachment.data for attachment in message.attachments]
    record = running.bot.store.get(1)
    assert record.state.value == "delivered" and record.seeds == [1234, 1235, 1236]
