"""The moderation rules as pure functions: what is posted where, what is refused, which word matched."""

from __future__ import annotations

import pytest

from bot.guild_settings import GuildSettings, NsfwPolicy
from bot.moderation import (
    ImageAction,
    asks_for_sexual_minors,
    blocked_word_in,
    image_actions,
    mentions_minors,
)

POST, SPOILER, WITHHOLD, NEVER = ImageAction.POST, ImageAction.SPOILER, ImageAction.WITHHOLD, ImageAction.NEVER
FLAGS = [False, True]


@pytest.mark.parametrize(
    ("age_restricted", "policy", "minors", "expected"),
    [
        (True, NsfwPolicy.BLOCK, False, [POST, POST]),
        (True, NsfwPolicy.SPOILER, False, [POST, POST]),
        (False, NsfwPolicy.BLOCK, False, [POST, WITHHOLD]),
        (False, NsfwPolicy.SPOILER, False, [POST, SPOILER]),
        (False, NsfwPolicy.ALLOW, False, [POST, POST]),
        # A flagged image from a prompt that mentions minors is never posted, whatever the channel.
        (True, NsfwPolicy.ALLOW, True, [POST, NEVER]),
        (False, NsfwPolicy.ALLOW, True, [POST, NEVER]),
        (False, NsfwPolicy.SPOILER, True, [POST, NEVER]),
    ],
)
def test_image_actions(age_restricted, policy, minors, expected):
    actions = image_actions(FLAGS, age_restricted=age_restricted, policy=policy, prompt_mentions_minors=minors)
    assert actions == expected


def test_no_flags_no_images():
    assert image_actions([], age_restricted=False, policy=NsfwPolicy.BLOCK, prompt_mentions_minors=True) == []


@pytest.mark.parametrize(
    "prompt",
    [
        "a naked child on a bed",
        "Sexy TEEN girl",
        "nude 12 year old",
        "erotic photo of a 15yo",
        "loli hentai",
        "一个裸体的小女孩",
        "性感的未成年人",
        "12岁 少女 色情",
        "萝莉 露点",
    ],
)
def test_sexual_content_involving_minors_is_refused(prompt):
    assert asks_for_sexual_minors(prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        "a child flying a kite in the park",
        "a nude statue in a museum",
        "孩子们在公园里放风筝",
        "一幅裸体雕塑",
        "a 25 year old woman in a red dress, sexy",
        "kidney beans in a bowl, explicit detail",  # "kid" only as a whole word
        "a 30岁 woman, 性感",
    ],
)
def test_other_prompts_pass(prompt):
    assert not asks_for_sexual_minors(prompt)


def test_mentions_minors():
    assert mentions_minors("portrait of a toddler")
    assert mentions_minors("两个小学生")
    assert not mentions_minors("a skateboarder, 30 years old")
    assert not mentions_minors("an old lighthouse")


@pytest.mark.parametrize(
    ("texts", "words", "expected"),
    [
        (["a Cat on a mat"], ["cat"], "cat"),
        (["concatenate strings"], ["cat"], None),
        (["a red   fox"], ["Red Fox"], "Red Fox"),
        (["a redfox"], ["red fox"], None),
        (["a lighthouse", "blood, gore"], ["gore"], "gore"),  # the negative prompt counts too
        (["一只血腥的猫"], ["血腥"], "血腥"),  # Chinese: a substring, there are no spaces
        (["cats", "dogs"], ["bird", "dogs"], "dogs"),
        (["anything"], [], None),
    ],
)
def test_blocked_word_in(texts, words, expected):
    assert blocked_word_in(texts, words) == expected


def test_guild_settings_limits():
    assert GuildSettings(1).checked() == GuildSettings(1)
    with pytest.raises(ValueError, match="At most 25 channels"):
        GuildSettings(1, allowed_channels=tuple(range(26))).checked()
    with pytest.raises(ValueError, match="at most 100 words"):
        GuildSettings(1, blocked_words=tuple(f"w{i}" for i in range(101))).checked()
    with pytest.raises(ValueError, match="at most 100 characters"):
        GuildSettings(1, blocked_words=("x" * 101,)).checked()
    with pytest.raises(ValueError, match="from 0 \\(unlimited\\) to 1000"):
        GuildSettings(1, daily_limit=1001).checked()
    with pytest.raises(ValueError, match="from 1 to 4"):
        GuildSettings(1, max_count=0).checked()
