"""What may be asked for and what may be shown where: pure rules, no Discord, no model.

- `image_actions` decides, per image, whether a result is posted, spoilered or withheld, from the
  safety classifier's flags, the channel and the server's policy.
- `asks_for_sexual_minors` refuses prompts asking for sexual content involving minors, whatever
  the channel or policy; `mentions_minors` makes a flagged image from such a prompt unpostable.
- `blocked_word_in` finds a server's blocked word in a prompt.

English is matched on word boundaries; Chinese, written without spaces, as substrings.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence

from bot.guild_settings import NsfwPolicy


class ImageAction(str, enum.Enum):
    POST = "post"
    SPOILER = "spoiler"  # posted with a SPOILER_ file name and a content note
    WITHHOLD = "withhold"  # an age-restricted channel would show it
    NEVER = "never"  # shown nowhere: flagged, from a prompt that mentions minors


def image_actions(
    flagged: Sequence[bool], *, age_restricted: bool, policy: NsfwPolicy, prompt_mentions_minors: bool
) -> list[ImageAction]:
    """One action per image. Unflagged images are always posted; flagged ones by the channel and policy."""
    actions = []
    for is_flagged in flagged:
        if not is_flagged:
            actions.append(ImageAction.POST)
        elif prompt_mentions_minors:
            actions.append(ImageAction.NEVER)
        elif age_restricted or policy is NsfwPolicy.ALLOW:
            actions.append(ImageAction.POST)
        elif policy is NsfwPolicy.SPOILER:
            actions.append(ImageAction.SPOILER)
        else:
            actions.append(ImageAction.WITHHOLD)
    return actions


# ----- prompts -------------------------------------------------------------------------------------

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

_MINORS_EN = (
    r"child(?:ren)?",
    r"kids?",
    r"kiddie",
    r"minors?",
    r"under[\s-]?age(?:d)?",
    r"pre[\s-]?teens?",
    r"teens?",
    r"teenagers?",
    r"teenaged?",
    r"toddlers?",
    r"infants?",
    r"bab(?:y|ies)",
    r"lolis?",
    r"lolita",
    r"shota",
    r"school\s?girls?",
    r"school\s?boys?",
    r"(?:little|young)\s+(?:girls?|boys?)",
    r"elementary\s+school(?:er)?",
    r"middle\s+school(?:er)?",
    r"(?:[1-9]|1[0-7])[\s-]*(?:years?[\s-]*old|y/?o|yrs?[\s-]*old)",
)
_MINORS_ZH = (
    "儿童",
    "小孩",
    "孩子",
    "孩童",
    "幼女",
    "幼童",
    "幼儿",
    "婴儿",
    "未成年",
    "小学生",
    "初中生",
    "中学生",
    "萝莉",
    "正太",
    "小女孩",
    "小男孩",
    "女童",
    "男童",
)
_MINOR_AGE_ZH = re.compile(r"(?<![0-9])(?:[1-9]|1[0-7])\s*岁|[一二三四五六七八九十]{1,3}岁")
_SEXUAL_EN = (
    r"nude",
    r"nudity",
    r"naked",
    r"nsfw",
    r"sex",
    r"sexual(?:ly)?",
    r"sexy",
    r"porn\w*",
    r"erotic\w*",
    r"explicit",
    r"lewd",
    r"hentai",
    r"topless",
    r"bottomless",
    r"genitals?",
    r"nipples?",
    r"breasts?",
    r"undress(?:ed|ing)?",
    r"lingerie",
    r"seductive",
    r"provocative",
    r"orgasm\w*",
    r"intercourse",
    r"masturbat\w*",
    r"fetish\w*",
    r"bdsm",
    r"no\s+clothes",
    r"without\s+clothes",
)
_SEXUAL_ZH = (
    "色情",
    "裸体",
    "裸露",
    "全裸",
    "赤裸",
    "性感",
    "性爱",
    "做爱",
    "性交",
    "淫",
    "露点",
    "脱衣",
    "无码",
    "情色",
    "乳房",
    "乳头",
    "胸部",
    "内衣",
    "诱惑",
    "黄图",
    "裸",
)


def _words(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)(?:" + "|".join(patterns) + r")(?!\w)", re.IGNORECASE)


_MINORS_RE, _SEXUAL_RE = _words(_MINORS_EN), _words(_SEXUAL_EN)


def mentions_minors(text: str) -> bool:
    return bool(_MINORS_RE.search(text) or _MINOR_AGE_ZH.search(text) or any(term in text for term in _MINORS_ZH))


def mentions_sexual_content(text: str) -> bool:
    return bool(_SEXUAL_RE.search(text) or any(term in text for term in _SEXUAL_ZH))


def asks_for_sexual_minors(prompt: str) -> bool:
    """Whether a prompt asks for sexual content involving minors: refused whatever the channel or policy."""
    return mentions_minors(prompt) and mentions_sexual_content(prompt)


def blocked_word_in(texts: Iterable[str], words: Iterable[str]) -> str | None:
    """The first blocked word or phrase found in any of `texts`, or None.

    Case-insensitive, on word boundaries ("cat" is not found in "concatenate"; "red fox" matches
    "Red  Fox" whatever the spaces); a phrase with Chinese or Japanese characters is found as a
    substring, since such text has no spaces between words.
    """
    texts = [text.casefold() for text in texts]
    for word in words:
        folded = " ".join(word.casefold().split())
        if not folded:
            continue
        if _CJK.search(folded):
            if any(folded.replace(" ", "") in text.replace(" ", "") for text in texts):
                return word
            continue
        pattern = re.compile(r"(?<!\w)" + r"\s+".join(re.escape(part) for part in folded.split(" ")) + r"(?!\w)")
        if any(pattern.search(text) for text in texts):
            return word
    return None
