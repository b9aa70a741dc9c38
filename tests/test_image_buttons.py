"""Pictures in through Discord: /imagine image:, the "Imagine from image" menu and its modal, the
Upscale / Vary / U / V / Enhance buttons, and the enhancer's server settings. The real bot and discord.py
client against the Discord double (which serves attachments from a local CDN route), the tiny model."""

from __future__ import annotations

import asyncio
import io
import re
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from bot.guild_settings import EnhanceDefault
from bot.image_files import read_parameters
from bot.jobs.runner import enhanced_prompt_check
from test_generation_cog import delivered, reply_text
from tiny_model import TINY_REPO_ID

SIZES = "64x64,96x64,64x96"


def png(width: int, height: int, mode: str = "RGB", colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def nothing_queued(running) -> bool:
    return running.bot.store.get(1) is None and len(running.runner.queue) == 0


async def private_answer(discord_api, interaction, timeout=15):
    """The ephemeral answer to an interaction, wherever it went: the response, or a followup after a
    public deferral (whose "thinking" message is then removed)."""

    def found():
        return next(
            (m for m in discord_api.messages_for(interaction) if m.ephemeral and not m.loading and m.content), None
        )

    return await discord_api.wait_for(found, timeout)


def labels(message) -> list[list[str]]:
    return [[c["label"] for c in row["components"]] for row in message.components]


async def test_imagine_from_an_attached_picture(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES=SIZES)
    # Wide, and half transparent: the output is the wide offered size, and the flattening is said.
    picture = discord_api.upload("wide.png", png(300, 200, "RGBA", (10, 200, 10, 100)), "image/png")
    interaction = await discord_api.invoke(
        "imagine", {"prompt": "a green field", "image": picture, "strength": 0.5, "seed": 9}
    )
    message = await delivered(discord_api, interaction)
    assert interaction.ack_delay < 3 and interaction.ack_type == 5
    assert discord_api.cdn_requests == [picture.id]
    assert len(message.attachments) == 1
    with Image.open(io.BytesIO(message.attachments[0].data)) as image:
        assert image.size == (96, 64)
    record = running.bot.store.get(1)
    assert (
        record.strength == 0.5 and record.source_sha256 and await asyncio.to_thread(Path(record.source_image).is_file)
    )
    parameters = read_parameters(message.attachments[0].data)
    assert f"Denoising strength: 0.5, Init image hash: {record.source_sha256[:10]}" in parameters
    fields = {field["name"]: field["value"] for field in message.embeds[0]["fields"]}
    assert fields["Strength"] == "0.5"
    assert "transparent parts were filled with white" in fields["Your picture"]
    assert labels(message) == [
        ["Reroll", "Variations", "Info", "Delete"],
        ["Upscale", "Vary (Subtle)", "Vary (Strong)", "Enhance"],
    ]
    # Info shows the strength and the input's hash.
    info = await discord_api.click(message, "zimage:info:1")
    answer = await reply_text(discord_api, info)
    info_fields = {field["name"]: field["value"] for field in answer.embeds[0]["fields"]}
    assert info_fields["Strength"] == "0.5" and record.source_sha256[:16] in info_fields["Input picture (SHA-256)"]


@pytest.mark.parametrize(
    ("make", "expected", "downloaded"),
    [
        (lambda api: api.upload("notes.txt", b"just some words, not a picture", "text/plain"), "not a picture", True),
        (lambda api: api.upload("big.png", png(64, 64), "image/png", size=30 * 1024 * 1024), "at most 25.0 MB", False),
        (lambda api: api.upload("tiny.png", png(32, 32), "image/png"), "at least 64 pixels", True),
        (lambda api: api.upload("cut.png", png(200, 200)[:120], "image/png"), "Send it again", True),
    ],
    ids=["not-an-image", "too-large", "too-small", "corrupt"],
)
async def test_a_bad_attachment_is_refused_privately_and_nothing_is_queued(
    start_bot, discord_api, make, expected, downloaded
):
    running = await start_bot(IMAGE_SIZES=SIZES)
    attachment = make(discord_api)
    interaction = await discord_api.invoke("imagine", {"prompt": "a cat", "image": attachment})
    message = await private_answer(discord_api, interaction)
    assert message.ephemeral and expected in message.content, message.content
    assert "Traceback" not in message.content and interaction.ack_delay < 3
    assert bool(discord_api.cdn_requests) is downloaded
    assert nothing_queued(running)
    # No public "thinking" message is left behind.
    assert all(m.ephemeral or m.deleted for m in discord_api.messages_for(interaction))


async def test_a_failed_download_and_a_misplaced_strength_are_refused(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES=SIZES)
    discord_api.cdn_fail_status = 404
    picture = discord_api.upload("gone.png", png(100, 100), "image/png")
    interaction = await discord_api.invoke("imagine", {"prompt": "a cat", "image": picture})
    message = await private_answer(discord_api, interaction)
    assert message.ephemeral and "could not be downloaded" in message.content
    interaction = await discord_api.invoke("imagine", {"prompt": "a cat", "strength": 0.4})
    message = await reply_text(discord_api, interaction)
    assert message.ephemeral and "Strength only applies when you start from a picture" in message.content
    assert nothing_queued(running)


async def test_a_download_that_takes_too_long_is_given_up(start_bot, discord_api, monkeypatch):
    import sys

    running = await start_bot(IMAGE_SIZES=SIZES)
    # The 30 s limit, shortened, in the cog module as the bot loaded it (as an extension).
    monkeypatch.setattr(sys.modules["cogs.generation"], "DOWNLOAD_TIMEOUT", 0.5)
    discord_api.cdn_delay = 2.0
    picture = discord_api.upload("slow.png", png(100, 100), "image/png")
    interaction = await discord_api.invoke("imagine", {"prompt": "a cat", "image": picture})
    message = await private_answer(discord_api, interaction)
    assert message.ephemeral and "took too long" in message.content and interaction.ack_delay < 3
    assert nothing_queued(running)


async def test_reroll_of_a_job_from_a_picture_starts_from_the_same_picture(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES=SIZES)
    picture = discord_api.upload("square.png", png(100, 100), "image/png")
    first = await delivered(discord_api, await discord_api.invoke("imagine", {"prompt": "a pond", "image": picture}))
    reroll = await discord_api.click(first, "zimage:reroll:1")
    await delivered(discord_api, reroll)
    one, two = running.bot.store.get(1), running.bot.store.get(2)
    assert (two.source_image, two.strength, two.kind) == (one.source_image, 0.6, "reroll") and two.seed != one.seed


async def test_the_context_menu_and_its_modal(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES=SIZES)
    user = discord_api.make_user("bob")
    # A message without a picture: a clear private answer.
    plain = discord_api.post_user_message("no picture here", user=user)
    interaction = await discord_api.invoke_message_command("Imagine from image", plain, user=user)
    answer = await reply_text(discord_api, interaction)
    assert answer.ephemeral and "has no picture" in answer.content
    # With a picture (after a file that is not one): a modal, then the same job as /imagine image:.
    tall = discord_api.upload("tall.png", png(200, 300), "image/png")
    notes = discord_api.upload("notes.txt", b"words", "text/plain")
    posted = discord_api.post_user_message("look", user=user, attachments=[notes, tall])
    opened = await discord_api.invoke_message_command("Imagine from image", posted, user=user)
    await discord_api.wait_for(lambda: opened.modal is not None)
    assert opened.ack_delay < 3
    submitted = await discord_api.submit_modal(opened, {"prompt": "a tall tower", "strength": "0,8"})
    message = await delivered(discord_api, submitted)
    with Image.open(io.BytesIO(message.attachments[0].data)) as image:
        assert image.size == (64, 96)
    record = running.bot.store.get(1)
    assert record.strength == 0.8 and record.prompt == "a tall tower" and record.user_id == int(user.id)
    assert discord_api.cdn_requests == [tall.id]
    # A strength that is not a number: refused, nothing more queued.
    again = await discord_api.invoke_message_command("Imagine from image", posted, user=user)
    await discord_api.wait_for(lambda: again.modal is not None)
    bad = await discord_api.submit_modal(again, {"prompt": "a tower", "strength": "lots"})
    answer = await private_answer(discord_api, bad)
    assert answer.ephemeral and "Strength must be a number" in answer.content
    assert running.bot.store.get(2) is None


async def test_upscale_and_vary_buttons_then_after_a_restart_and_after_retention(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES=SIZES)
    first = await discord_api.invoke("imagine", {"prompt": "a small house", "seed": 5})
    result = await delivered(discord_api, first)

    upscale = await discord_api.click(result, "zimage:upscale:1:0")
    upscaled = await delivered(discord_api, upscale)
    assert upscale.ack_delay < 3
    with Image.open(io.BytesIO(upscaled.attachments[0].data)) as image:
        assert image.size == (128, 128)
    record = running.bot.store.get(2)
    assert (record.kind, record.parent_id, record.strength, record.seed) == ("upscale", 1, 0.35, 5)
    assert record.source_image == running.bot.store.get(1).output_files[0]

    vary = await discord_api.click(result, "zimage:vary-subtle:1:0")
    varied = await delivered(discord_api, vary)
    with Image.open(io.BytesIO(varied.attachments[0].data)) as image:
        assert image.size == (64, 64)
    assert (running.bot.store.get(3).kind, running.bot.store.get(3).strength) == ("vary-subtle", 0.35)

    # Several images: U2 and V1 redraw that image.
    many = await discord_api.invoke("imagine", {"prompt": "two boats", "count": 2, "seed": 40})
    several = await delivered(discord_api, many)
    assert labels(several)[1:] == [["U1", "U2"], ["V1", "V2"]]

    # After a restart the buttons still work.
    await running.stop()
    running.bot.store.close()
    running = await start_bot(IMAGE_SIZES=SIZES)
    u2 = await discord_api.click(several, "zimage:upscale:4:1")
    await delivered(discord_api, u2)
    record = running.bot.store.get(5)
    assert (record.kind, record.seed, record.width) == ("upscale", 41, 128)
    assert record.source_image == running.bot.store.get(4).output_files[1]
    v1 = await discord_api.click(several, "zimage:vary-strong:4:0")
    await delivered(discord_api, v1)
    assert (running.bot.store.get(6).strength, running.bot.store.get(6).count) == (0.7, 1)

    # Retention removed the files: a clear private refusal, nothing queued.
    for path in running.bot.store.get(1).output_files:
        await asyncio.to_thread(Path(path).unlink)
    gone = await discord_api.click(result, "zimage:vary-strong:1:0")
    answer = await reply_text(discord_api, gone)
    assert answer.ephemeral and "were removed" in answer.content
    assert running.bot.store.get(7) is None


async def test_style_is_offered_only_with_loras(start_bot, discord_api):
    await start_bot(IMAGE_SIZES=SIZES)
    _, command = discord_api.command("imagine")
    names = [option["name"] for option in command["options"]]
    assert {"image", "strength", "enhance"} <= set(names) and "style" not in names
    strength = next(option for option in command["options"] if option["name"] == "strength")
    assert (strength["min_value"], strength["max_value"]) == (0.05, 1.0)


async def test_a_style_chosen_in_imagine_is_drawn_and_kept_by_upscale(start_bot, discord_api, hub_cache, tmp_path):
    from bot.model.pipeline_service import PipelineService
    from bot.settings import Settings
    from conftest import tiny_env
    from tiny_lora import build_tiny_lora

    ink = build_tiny_lora(hub_cache, tmp_path / "ink", seed=1)
    loras = f"ink={ink}:0.8"
    service = PipelineService(Settings.from_env(tiny_env(tmp_path / "service", hub_cache, LORAS=loras)))
    service.load(warm_up=False)
    try:
        running = await start_bot(IMAGE_SIZES=SIZES, LORAS=loras, service=service)
        _, command = discord_api.command("imagine")
        style = next(option for option in command["options"] if option["name"] == "style")
        assert [choice["value"] for choice in style["choices"]] == ["ink"]
        result = await delivered(
            discord_api, await discord_api.invoke("imagine", {"prompt": "a hut", "style": "ink", "seed": 2}), 60
        )
        assert "Lora: ink:0.8" in read_parameters(result.attachments[0].data)
        fields = {field["name"]: field["value"] for field in result.embeds[0]["fields"]}
        assert fields["Style"] == "ink"
        upscaled = await delivered(discord_api, await discord_api.click(result, "zimage:upscale:1:0"), 60)
        assert "Lora: ink:0.8" in read_parameters(upscaled.attachments[0].data)
        # A client sending a style the bot does not have is told which there are.
        wrong = await discord_api.invoke("imagine", {"prompt": "a hut", "style": "oil"}, unchecked=True)
        answer = await reply_text(discord_api, wrong)
        assert answer.ephemeral and "Style oil is not offered; choose one of: ink." in answer.content
        assert running.bot.store.get(3) is None
        await running.stop()
    finally:
        service.close()


def set_enhance_default(running, discord_api, value: EnhanceDefault) -> None:
    store = running.bot.store
    settings = store.guild_settings(int(discord_api.guild_id))
    store.save_guild_settings(replace(settings, enhance_default=value))


@pytest.fixture
def rewriting_service(tiny_settings):
    """A service whose enhancer writes clean text (see test_enhancer.rewriting_service): the tiny model's
    own noise, stopped where it is a usable prompt."""
    from diffusers import ZImagePipeline

    from bot.model.pipeline_service import PipelineService
    from test_enhancer import GENEROUS_S, TEST_TOKENS, clean_rewrite, make_enhancer

    seed, stop, text = clean_rewrite(make_enhancer(ZImagePipeline.from_pretrained(TINY_REPO_ID, local_files_only=True)))
    options = {"stop_token_ids": (stop,), "time_limit_s": GENEROUS_S, "max_new_tokens": TEST_TOKENS}
    service = PipelineService(tiny_settings, enhancer_options=options)
    service.load(warm_up=False)
    yield service, seed, text
    service.close()


async def test_enhance_with_each_server_setting_and_the_prompt_check(start_bot, discord_api, rewriting_service):
    from test_enhancer import PROMPT

    service, seed, text = rewriting_service
    running = await start_bot(IMAGE_SIZES=SIZES, service=service)
    assert service.enhancer_status == "on"
    # off (the default): only when asked.
    plain = await delivered(discord_api, await discord_api.invoke("imagine", {"prompt": PROMPT, "seed": seed}), 60)
    assert running.bot.store.get(1).enhance is False
    asked = await discord_api.invoke("imagine", {"prompt": PROMPT, "seed": seed, "enhance": True})
    result = await delivered(discord_api, asked, 60)
    record = running.bot.store.get(2)
    assert record.enhance is True and record.enhanced_prompt == text
    fields = {field["name"]: field["value"] for field in result.embeds[0]["fields"]}
    assert result.embeds[0]["title"] == PROMPT  # the original stays, the rewrite beside it
    assert fields["Enhanced prompt (used)"] == text[:1024]

    # on: members get it unless they say enhance:false.
    set_enhance_default(running, discord_api, EnhanceDefault.ON)
    await delivered(discord_api, await discord_api.invoke("imagine", {"prompt": "a boat"}), 60)
    await delivered(discord_api, await discord_api.invoke("imagine", {"prompt": "a boat", "enhance": False}), 60)
    assert (running.bot.store.get(3).enhance, running.bot.store.get(4).enhance) == (True, False)

    # The Enhance button: the original prompt, enhanced, with the same seed. The rewrite holds a word
    # the server blocks now, so it is not drawn: the original is, and the message says why.
    word = next(w for w in re.findall(r"[^\W\d_]{3,}", text) if w.lower() not in PROMPT.lower())
    store = running.bot.store
    store.save_guild_settings(replace(store.guild_settings(int(discord_api.guild_id)), blocked_words=(word.lower(),)))
    again = await discord_api.click(plain, "zimage:enhance:1")
    enhanced = await delivered(discord_api, again, 60)
    redo = store.get(5)
    assert (redo.kind, redo.parent_id, redo.seed, redo.prompt, redo.enhance) == ("enhance", 1, seed, PROMPT, True)
    assert redo.enhanced_prompt is None and "which this server blocks" in str(redo.enhancement_note)
    fields = {field["name"]: field["value"] for field in enhanced.embeds[0]["fields"]}
    assert "which this server blocks" in fields["Prompt enhancer"]
    assert read_parameters(enhanced.attachments[0].data).startswith(PROMPT + "\n")

    # forbidden: refused, for the option and the button; nothing queued.
    set_enhance_default(running, discord_api, EnhanceDefault.FORBIDDEN)
    refused = await discord_api.invoke("imagine", {"prompt": "a boat", "enhance": True})
    answer = await reply_text(discord_api, refused)
    assert answer.ephemeral and "does not allow the prompt enhancer" in answer.content
    button = await discord_api.click(plain, "zimage:enhance:1")
    answer = await reply_text(discord_api, button)
    assert answer.ephemeral and "does not allow the prompt enhancer" in answer.content
    assert store.get(6) is None


async def test_enhance_asked_for_on_a_bot_with_enhancer_off(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES=SIZES, ENHANCER="off")
    interaction = await discord_api.invoke("imagine", {"prompt": "a boat", "enhance": True})
    answer = await reply_text(discord_api, interaction)
    assert answer.ephemeral and "not available on this bot (ENHANCER=off)" in answer.content
    # A server default of on is no refusal: members simply get the original prompt.
    set_enhance_default(running, discord_api, EnhanceDefault.ON)
    await delivered(discord_api, await discord_api.invoke("imagine", {"prompt": "a boat"}))
    assert running.bot.store.get(1).enhance is False


def test_the_enhanced_prompt_check():
    check = enhanced_prompt_check(("dragon",))
    assert check("a castle at dawn") is None
    assert (
        str(check("a red Dragon over a castle")) == 'the enhanced prompt contained "dragon", which this server blocks'
    )
    assert check("a red Dragon over a castle").render("zh-CN") == "增强后的提示词含有本服务器屏蔽的词“dragon”"
    assert check("a sexy schoolgirl") is not None


async def test_a_chinese_client_gets_chinese_answers(start_bot, discord_api):
    running = await start_bot(IMAGE_SIZES=SIZES)
    user = discord_api.make_user("li")
    user.locale = "zh-CN"
    interaction = await discord_api.invoke("imagine", {"prompt": "一只猫", "strength": 0.4}, user=user)
    answer = await reply_text(discord_api, interaction)
    assert answer.ephemeral and "只在以图片为起点时有效" in answer.content
    plain = discord_api.post_user_message("没有图片", user=user)
    menu = await discord_api.invoke_message_command("Imagine from image", plain, user=user)
    answer = await reply_text(discord_api, menu)
    assert "这条消息没有图片" in answer.content
    posted = discord_api.post_user_message("图", user=user, attachments=[discord_api.upload("a.png", png(80, 80))])
    opened = await discord_api.invoke_message_command("Imagine from image", posted, user=user)
    await discord_api.wait_for(lambda: opened.modal is not None)
    assert opened.modal["title"] == "以图生图"
    assert nothing_queued(running)


def test_result_buttons_in_the_requesters_language():
    from bot.discord_bot.job_messages import result_view

    view = result_view(7, 1, "zh-CN")
    assert [item.item.label for item in view.children] == [
        "重新生成",
        "多个变体",
        "信息",
        "删除",
        "放大",
        "变化（轻微）",
        "变化（强烈）",
        "增强",
    ]
    assert [item.item.custom_id for item in view.children][4:] == [
        "zimage:upscale:7:0",
        "zimage:vary-subtle:7:0",
        "zimage:vary-strong:7:0",
        "zimage:enhance:7",
    ]
