"""Midjourney-style flags in prompts, as people type them (phones included)."""

from __future__ import annotations

import pytest

from bot.generation import InvalidRequest
from bot.image_size import ImageSize
from bot.prompt_flags import PromptFlags, nearest_size, parse_prompt_flags
from bot.settings import Settings

SIZES = Settings.from_env({}).image_sizes


def test_plain_prompt_has_no_flags():
    assert parse_prompt_flags("  a cat -- on a mat ") == PromptFlags("a cat -- on a mat")


def test_all_flags():
    flags = parse_prompt_flags("a castle at dawn --ar 16:9 --seed 42 --no text, watermark --steps 6")
    assert flags == PromptFlags("a castle at dawn", (16, 9), 42, "text, watermark", 6)


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
