"""Chinese and English through the real bot and the Discord double: commands synced with their Chinese
descriptions, every answer in the interaction's language, later messages in the requester's, and English for
a language without a catalogue."""

from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image

from bot.discord_bot.delivery import withheld_note
from bot.image_files import read_parameters
from bot.moderation import ImageAction
from bot.translations import catalogues
from conftest import ADMIN_ID
from discord_double import MANAGE_GUILD, MEMBER_PERMISSIONS
from test_generation_cog import admin_command, delivered, imagine, reply_text
from test_status_cog import fields_of

MANAGER = MEMBER_PERMISSIONS | MANAGE_GUILD
CHINESE = re.compile(r"[\u4e00-\u9fff]")


def options_of(definition: dict):
    """Every option of a synced command, subcommands' options included."""
    for option in definition.get("options") or []:
        yield option
        yield from options_of(option)


async def test_commands_are_synced_with_chinese_descriptions_and_choices_but_english_names(start_bot, discord_api):
    await start_bot()
    definitions = [definition for synced in discord_api.synced_commands.values() for definition in synced]
    assert {"imagine", "status", "history", "info", "cancel", "settings", "cache-check", "pause", "resume"} <= {
        definition["name"] for definition in definitions
    }
    missing, named = [], []
    for definition in definitions:
        where = f"/{definition['name']}"
        has_description = definition.get("type", 1) == 1  # context menus (types 2, 3) have none
        if has_description and not CHINESE.search(definition.get("description_localizations", {}).get("zh-CN", "")):
            missing.append(f"{where}: {definition['description']!r}")
        for option in options_of(definition):
            if option.get("name_localizations"):
                named.append(f"{where} {option['name']}")
            if not CHINESE.search((option.get("description_localizations") or {}).get("zh-CN", "")):
                missing.append(f"{where} {option['name']}: {option['description']!r}")
            for choice in option.get("choices") or []:
                if not (choice.get("name_localizations") or {}).get("zh-CN"):
                    missing.append(f"{where} {option['name']} choice {choice['name']!r}")
        if definition.get("name_localizations"):
            named.append(where)
    assert missing == [], "texts synced without a zh-CN localisation"
    assert named == [], "command and option names stay English"
    status = next(definition for definition in definitions if definition["name"] == "status")
    assert status["description_localizations"]["zh-CN"] == catalogues().lookup(status["description"], "zh-CN")


async def test_each_member_reads_the_answers_in_their_own_language(start_bot, discord_api):
    await start_bot()
    chinese = discord_api.make_user("li", locale="zh-CN")
    english = discord_api.make_user("alice")  # en-US
    french = discord_api.make_user("marie", locale="fr")  # no French catalogue: English

    async def answer(name, options, user, **kwargs):
        return await reply_text(discord_api, await discord_api.invoke(name, options, user=user, **kwargs))

    fields = fields_of(await answer("status", {}, chinese))
    assert fields["状态"] == "就绪" and fields["每张图片平均用时"] == "暂无数据" and fields["队列"] == "0 个等待"
    for user in (english, french):
        fields = fields_of(await answer("status", {}, user))
        assert fields["State"] == "ready" and fields["Mean time per image"] == "no data yet"

    # An error.
    unknown = await answer("info", {"job": 99}, chinese)
    assert unknown.ephemeral and unknown.content == "没有任务 99（旧任务会在一段时间后删除）。"
    for user in (english, french):
        assert (await answer("info", {"job": 99}, user)).content == (
            "There is no job 99 (old jobs are removed after a while)."
        )

    # Bad input to /imagine, with a Chinese prompt.
    bad = await reply_text(discord_api, await imagine(discord_api, "一只猫 --stylize 5", chinese))
    assert bad.ephemeral and bad.content == "未知参数 `--stylize`。支持：--ar W:H、--seed N、--no 文本、--steps N。"
    bad = await reply_text(discord_api, await imagine(discord_api, "一只猫 --stylize 5", french))
    assert bad.content == "Unknown flag `--stylize`. Supported: --ar W:H, --seed N, --no TEXT, --steps N."

    # A refusal: /settings is for server admins.
    refused = await answer("settings show", {}, chinese, unchecked=True)
    assert refused.ephemeral and refused.content == "只有拥有“管理服务器”或“管理员”权限的成员才能使用 /settings。"

    # /settings show, for admins of each language.
    shown = await answer("settings show", {}, chinese, permissions=MANAGER)
    assert shown.embeds[0]["title"] == "本服务器的设置"
    assert fields_of(shown)["频道"] == "所有频道" and fields_of(shown)["每日上限"] == "无每日上限"
    for user in (english, french):
        shown = await answer("settings show", {}, user, permissions=MANAGER)
        assert shown.embeds[0]["title"] == "Settings of this server" and fields_of(shown)["Channels"] == "every channel"


async def test_chinese_blocked_words_and_a_chinese_refusal(start_bot, discord_api):
    running = await start_bot()
    admin = discord_api.make_user("wang", locale="zh-CN")
    member = discord_api.make_user("li", locale="zh-CN")
    added = await reply_text(
        discord_api, await discord_api.invoke("settings words", {"add": "血腥"}, user=admin, permissions=MANAGER)
    )
    assert added.content == "✅ 已在提示词中屏蔽“血腥”（共屏蔽 1 个）。"
    refused = await reply_text(discord_api, await imagine(discord_api, "一只血腥的猫", member))
    assert refused.ephemeral and refused.content == "本服务器禁止在提示词中使用“血腥”；请删除后重试。"
    refused = await reply_text(discord_api, await imagine(discord_api, "a cat --no 血腥", discord_api.make_user("bob")))
    assert refused.content == 'This server blocks "血腥" in prompts; take it out and try again.'
    assert running.bot.store.stats().jobs_done == 0 and not running.bot.store.unfinished()


async def test_messages_that_outlive_the_interaction_use_the_requesters_language(start_bot, discord_api):
    running = await start_bot()
    store = running.bot.store
    await admin_command(discord_api, "pause")
    chinese = discord_api.make_user("li", locale="zh-CN")
    queued = await imagine(discord_api, "一只红狐狸在雪地里", chinese)
    await discord_api.wait_for(lambda: queued.original is not None and store.get(1) is not None)
    assert store.get(1).locale == "zh-CN"
    # An English-speaking operator cancels it: the operator reads English, the job's message stays Chinese.
    operator = discord_api.make_user("admin", id=ADMIN_ID)
    answer = await reply_text(discord_api, await discord_api.invoke("cancel", {"job": 1}, user=operator))
    assert "cancelled before it started" in answer.content
    await discord_api.wait_for(lambda: queued.original.content == "🚫 任务 1 在开始前已取消。", 10)

    await admin_command(discord_api, "resume")
    done = await delivered(discord_api, await imagine(discord_api, "一只红狐狸在雪地里 ——no 水印 --seed 7", chinese))
    assert done.attachments
    record = store.get(2)
    assert (record.locale, record.prompt, record.negative_prompt, record.seed) == (
        "zh-CN",
        "一只红狐狸在雪地里",
        "水印",
        7,
    )
    parameters = read_parameters(Path(record.output_files[0]))
    assert parameters.startswith("一只红狐狸在雪地里\nNegative prompt: 水印\n") and "Seed: 7" in parameters
    english = await delivered(discord_api, await imagine(discord_api, "a fox", discord_api.make_user("alice")))
    assert english.attachments and store.get(3).locale == "en-US"


async def test_an_unexpected_error_is_told_in_the_members_language(start_bot, discord_api):
    await start_bot()
    chinese = discord_api.make_user("li", locale="zh-CN")
    message = await delivered(discord_api, await imagine(discord_api, "一只易碎的花瓶", chinese))
    discord_api.fail_next("DELETE", r"/channels/\d+/messages/\d+", status=403, code=50013, message="Missing Access")
    answer = await reply_text(discord_api, await discord_api.click(message, "zimage:delete:1", user=chinese))
    assert answer.ephemeral
    assert re.fullmatch(r"我们这边出了点问题（错误编号 `[0-9a-f]{8}`）。机器人仍在运行，请重试。", answer.content)


async def test_why_an_enhanced_prompt_was_not_used_is_told_in_the_requesters_language(
    start_bot, discord_api, tiny_settings
):
    from bot.model.pipeline_service import PipelineService

    # An enhancer with too few tokens to finish its rewrite (no self-test, so it is on): the original is drawn.
    prompt, tokens = "a red fox in the snow", 4
    service = PipelineService(tiny_settings, enhancer_options={"max_new_tokens": tokens, "time_limit_s": 300.0})
    service.load(warm_up=False)
    try:
        seed = next(
            seed
            for seed in range(40)
            if str(service.enhance(prompt, seed).note) == f"the enhancer did not finish within {tokens} tokens"
        )
        running = await start_bot(IMAGE_SIZES="64x64", service=service)
        chinese = discord_api.make_user("li", locale="zh-CN")
        result = await delivered(
            discord_api, await imagine(discord_api, prompt, chinese, seed=seed, enhance=True), timeout=60
        )
        fields = {field["name"]: field["value"] for field in result.embeds[0]["fields"]}
        assert fields["提示词增强"] == f"未使用：增强器未能在 {tokens} 个 token 内写完。已按原始提示词生成。"
        assert read_parameters(result.attachments[0].data).startswith(prompt + "\n")
        # Info reads the note back from the store, in each reader's language.
        info = await reply_text(discord_api, await discord_api.invoke("info", {"job": 1}, user=chinese))
        fields = fields_of(info)
        assert fields["提示词增强"] == f"未使用：增强器未能在 {tokens} 个 token 内写完。"
        english = discord_api.make_user("alice")
        info = await reply_text(discord_api, await discord_api.invoke("info", {"job": 1}, user=english))
        assert fields_of(info)["Prompt enhancer"] == f"Not used: the enhancer did not finish within {tokens} tokens."
        assert running.bot.store.get(1).enhanced_prompt is None
    finally:
        service.close()


async def test_why_the_enhancer_is_not_available_is_told_in_the_members_language(start_bot, discord_api):
    # The shared tiny service's enhancer failed its self-test (random weights write no text).
    await start_bot()
    chinese = discord_api.make_user("li", locale="zh-CN")
    answer = await reply_text(discord_api, await imagine(discord_api, "一只猫", chinese, enhance=True))
    assert answer.ephemeral and answer.content in (
        "本机器人无法使用提示词增强（已关闭：它对测试提示词的回答不是文字）。请去掉 enhance。",
        "本机器人无法使用提示词增强（已关闭：它对测试提示词的回答为空）。请去掉 enhance。",
    )
    answer = await reply_text(
        discord_api, await imagine(discord_api, "a cat", discord_api.make_user("bob"), enhance=True)
    )
    assert answer.content.startswith(
        "The prompt enhancer is not available on this bot (off: its answer to a test prompt"
    )


async def test_what_was_changed_in_a_sent_picture_is_told_in_the_requesters_language(start_bot, discord_api):
    await start_bot(IMAGE_SIZES="64x64,96x64,64x96")
    buffer = io.BytesIO()
    Image.new("RGBA", (300, 150), (10, 200, 10, 100)).save(buffer, format="PNG")  # half transparent, 2:1
    picture = discord_api.upload("wide.png", buffer.getvalue(), "image/png")
    chinese = discord_api.make_user("li", locale="zh-CN")
    result = await delivered(
        discord_api, await imagine(discord_api, "一片绿色的田野", chinese, image=picture, strength=0.5, seed=9)
    )
    fields = {field["name"]: field["value"] for field in result.embeds[0]["fields"]}
    assert fields["你的图片"] == "透明部分已填充为白色。\n已裁去左右两侧以适应 96x64（原图 300x150）。"


def test_the_notes_about_flagged_images_read_whole_in_each_language():
    withheld, spoiler, post = ImageAction.WITHHOLD, ImageAction.SPOILER, ImageAction.POST
    assert withheld_note([withheld], "zh-CN") == "🔞 图片未发布：安全检查标记了它。年龄限制频道中会显示。"
    assert withheld_note([withheld, spoiler, post], "zh-CN") == (
        "🔞 3 张图片中有 1 张未发布：安全检查标记了它们。年龄限制频道中会显示。\n"
        "⚠️ 内容提示：安全检查将 3 张图片中的 1 张标记为可能的 NSFW 内容；已遮挡显示。"
    )
    assert withheld_note([withheld, post], "fr") == (
        "🔞 1 of 2 images were withheld: the safety check flagged them. An age-restricted channel shows them."
    )
    assert withheld_note([post, post], "zh-CN") is None
