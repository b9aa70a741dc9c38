"""Midjourney-style flags in prompts, as people type them (phones included)."""

from __future__ import annotations

import re

import pytest

from bot.generation import InvalidRequest
from bot.image_size import ImageSize
from bot.prompt_flags import PromptFlags, nearest_size, parse_prompt_flags
from bot.settings import Settings
from bot.translations import localise

SIZES = Settings.from_env({}).image_sizes


def test_plain_prompt_has_no_flags():
    assert parse_prompt_flags("  a cat -- on a mat ") == PromptFlags("a cat -- on a mat")


@pytest.mark.parametrize(
    "prompt",
    [
        "a poster of the years 1990–2000",
        "a cat — on a mat",
        "a cat –on a mat",  # a dash before a word that is not a flag name
        "a map of Rhein—Main",
        "a cat —nothing else",
    ],
)
def test_dashes_that_introduce_no_flag_are_kept_as_typed(prompt):
    assert parse_prompt_flags(prompt) == PromptFlags(prompt)


def test_a_dash_before_a_flag_counts_but_other_dashes_in_the_same_prompt_stay():
    flags = parse_prompt_flags("the years 1990–2000 — in colour —ar 16:9 –no sepia")
    assert flags == PromptFlags("the years 1990–2000 — in colour", (16, 9), negative_prompt="sepia")


def test_all_flags():
    flags = parse_prompt_flags("a castle at dawn --ar 16:9 --seed 42 --no text, watermark --steps 6")
    assert flags == PromptFlags("a castle at dawn", (16, 9), 42, "text, watermark", 6)


@pytest.mark.parametrize(
    ("value", "aspect"),
    [
        ("16:1", (16, 1)),
        ("1:16", (1, 16)),
        ("2.39:1", (239, 100)),
        ("1.5:1", (3, 2)),
        ("0.0002:0.0001", (2, 1)),
        ("0.00001:0.000001", (10, 1)),
    ],
)
def test_aspect_ratios_up_to_16_to_1_and_decimals(value, aspect):
    assert parse_prompt_flags(f"a cat --ar {value}").aspect == aspect


def test_em_dash_from_a_phone_counts_as_double_dash():
    assert parse_prompt_flags("a castle —ar 9:16 —seed 7") == PromptFlags("a castle", (9, 16), 7)
    assert parse_prompt_flags("a castle –no fog").negative_prompt == "fog"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a cat --ar wide", "write it like `--ar 16:9`"),
        ("a cat --ar 0:1", "write it like `--ar 16:9`"),
        ("a cat --seed", "`--seed` needs a value"),
        ("a cat --seed -4", "`--seed -4` needs a whole number"),
        ("a cat --seed 4294967296", "`--seed` must be from 0 to 4294967295"),
        ("a cat --seed 1.5", "needs a whole number"),
        ("a cat --steps many", "needs a whole number"),
        ("a cat --stylize 100", "Unknown flag `--stylize`"),
        ("a cat --seed 1 --seed 2", "given twice"),
        ("a cat --ar 0.0001:1", "`--ar 0.0001:1` is too tall; use a ratio from 1:16 to 16:1"),
        ("a cat --ar 1:0.0004", "`--ar 1:0.0004` is too wide; use a ratio from 1:16 to 16:1"),
        ("a cat --ar 100000:1", "too wide"),
        ("a cat --ar 1:17", "too tall"),
        ("a cat --ar 16.5:1", "too wide"),
    ],
)
def test_malformed_flags_say_what_to_change(prompt, message):
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_prompt_flags(prompt)


@pytest.mark.parametrize(
    ("aspect", "size"),
    [
        ((1, 1), "1024x1024"),
        ((16, 9), "1280x720"),
        ((9, 16), "720x1280"),
        ((21, 9), "1344x576"),
        ((3, 2), "1248x832"),
        ((4, 3), "1152x864"),
        ((100, 1), "1344x576"),
    ],
)
def test_aspect_ratio_picks_the_nearest_allowed_size(aspect, size):
    assert nearest_size(aspect, SIZES) == ImageSize.parse(size)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat --ar 0.0001:1", "`--ar 0.0001:1` is too tall; use a ratio from 1:16 to 16:1"),
        ("a cat --ar 1:0.0004", "`--ar 1:0.0004` is too wide; use a ratio from 1:16 to 16:1"),
        ("a cat --ar 100000:1", "`--ar 100000:1` is too wide"),
    ],
)
async def test_extreme_ratios_through_imagine_say_what_to_change_and_queue_nothing(
    start_bot, discord_api, prompt, expected
):
    from test_generation_cog import reply_text

    running = await start_bot()
    message = await reply_text(discord_api, await discord_api.invoke("imagine", {"prompt": prompt}))
    assert message.ephemeral and expected in message.content
    assert "Something went wrong" not in message.content
    assert running.bot.store.get(1) is None and len(running.runner.queue) == 0


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a cat --seed " + "9" * 5000, "`--seed` must be from 0 to 4294967295 (got 999"),
        ("a cat --steps " + "0" * 4999 + "7", None),
        ("a cat --ar " + "1" * 5000 + ":1", "is not an aspect ratio"),
        ("a cat --ar 1:" + "0" * 5000 + "1", "is not an aspect ratio"),
        ("a cat --" + "x" * 5000, "Unknown flag `--xxx"),
    ],
)
def test_huge_numbers_and_names_get_a_short_what_to_change_error(prompt, message):
    if message is None:
        assert parse_prompt_flags(prompt).steps == 7
        return
    with pytest.raises(InvalidRequest, match=re.escape(message)) as caught:
        parse_prompt_flags(prompt)
    assert len(str(caught.value)) < 200  # fits a Discord message, with room to spare


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Chinese text around flags, and what Chinese input methods type for "--" and ":".
        ("一只红狐狸在雪地里 --ar 16:9 --seed 42", PromptFlags("一只红狐狸在雪地里", (16, 9), 42)),
        (
            "一只红狐狸在雪地里 ——ar 16：9 ——no 文字，水印",
            PromptFlags("一只红狐狸在雪地里", (16, 9), negative_prompt="文字，水印"),
        ),
        ("海报上写着“你好 -- 世界”　－－seed 7", PromptFlags("海报上写着“你好 -- 世界”", seed=7)),
        ("水墨画，山水 --no 人物 --steps 6", PromptFlags("水墨画，山水", negative_prompt="人物", steps=6)),
        ("一只猫——在垫子上", PromptFlags("一只猫——在垫子上")),  # a Chinese dash inside the prompt stays
    ],
)
def test_chinese_prompts_with_flags(text, expected):
    assert parse_prompt_flags(text) == expected


def test_errors_about_flags_in_chinese_prompts_quote_them_and_read_in_chinese():
    with pytest.raises(InvalidRequest) as caught:
        parse_prompt_flags("一只猫 --ar 宽屏")
    assert str(caught.value) == "`--ar 宽屏` is not an aspect ratio; write it like `--ar 16:9`."
    assert localise(caught.value, "zh-CN") == "`--ar 宽屏` 不是有效的宽高比；请写成 `--ar 16:9` 这样的形式。"
