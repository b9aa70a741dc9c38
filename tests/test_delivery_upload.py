"""A result over Discord's upload limit goes out as JPEG with its parameters, and says the PNG is kept."""

from __future__ import annotations

from bot.image_files import read_parameters
from test_generation_cog import delivered, imagine
from test_png_output import user_comment


async def test_an_over_size_result_is_a_jpeg_with_the_parameters_and_the_message_says_so(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES="64x64,512x512")
    discord_api.attachment_size_limit = 150_000  # the double refuses larger uploads, as Discord does
    message = await delivered(
        discord_api, await imagine(discord_api, "a detailed map — 1990–2000", None, size="512x512")
    )
    saved = next(running.bot.settings.output_dir.glob("*.png"))
    assert saved.stat().st_size > 150_000
    (attachment,) = message.attachments
    assert attachment.filename == saved.with_suffix(".jpg").name
    assert user_comment(attachment.data) == read_parameters(saved) and "1990–2000" in read_parameters(saved)
    assert "The full-size PNG is kept on the server." in message.content


async def test_a_result_within_the_limit_is_the_png_with_no_extra_line(start_bot, discord_api):
    running = await start_bot()
    message = await delivered(discord_api, await imagine(discord_api, "a small map", None))
    saved = next(running.bot.settings.output_dir.glob("*.png"))
    (attachment,) = message.attachments
    assert attachment.filename == saved.name and attachment.data == saved.read_bytes()
    assert "kept on the server" not in (message.content or "")
