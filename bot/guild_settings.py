"""One server's settings, as moderators set them with /settings: plain data and its limits.

The job store keeps them (a row per guild); the Discord side checks every change against the limits
here before saving, so a stored value is always one the bot can apply.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from bot.generation import MAX_COUNT
from bot.translations import Text

MAX_ALLOWED_CHANNELS = 25  # a Discord embed field lists them all
MAX_BLOCKED_WORDS = 100
MAX_WORD_CHARS = 100
MAX_DAILY_IMAGES = 1000


class NsfwPolicy(str, enum.Enum):
    """What happens to a flagged image outside age-restricted channels."""

    BLOCK = "block"  # withheld; the job's message says how many and where they would show
    SPOILER = "spoiler"  # posted as a spoiler with a content note
    ALLOW = "allow"


class EnhanceDefault(str, enum.Enum):
    ON = "on"
    OFF = "off"
    FORBIDDEN = "forbidden"


@dataclass(frozen=True)
class GuildSettings:
    guild_id: int
    allowed_channels: tuple[int, ...] = ()  # empty: every channel
    nsfw_policy: NsfwPolicy = NsfwPolicy.BLOCK
    blocked_words: tuple[str, ...] = ()
    daily_limit: int = 0  # images per member per UTC day; 0: unlimited
    max_count: int = MAX_COUNT  # most images one job may ask for
    required_role: int | None = None
    enhance_default: EnhanceDefault = EnhanceDefault.OFF  # on: members get the enhancer unless they say no
    updated_at: float | None = field(default=None, compare=False)

    def checked(self) -> GuildSettings:
        """These settings if every value is within its limits; ValueError (its message a Text) saying what to
        change otherwise."""
        if len(self.allowed_channels) > MAX_ALLOWED_CHANNELS:
            raise ValueError(
                Text(
                    "At most {most} channels can be allowed; remove one first "
                    "(or clear the list to allow every channel).",
                    most=MAX_ALLOWED_CHANNELS,
                )
            )
        if len(self.blocked_words) > MAX_BLOCKED_WORDS:
            raise ValueError(
                Text(
                    "The blocked list holds at most {most} words or phrases; remove one first.", most=MAX_BLOCKED_WORDS
                )
            )
        for word in self.blocked_words:
            if not word.strip():
                raise ValueError(Text("A blocked word cannot be empty."))
            if len(word) > MAX_WORD_CHARS:
                raise ValueError(
                    Text("A blocked word or phrase can be at most {most} characters long.", most=MAX_WORD_CHARS)
                )
        if not 0 <= self.daily_limit <= MAX_DAILY_IMAGES:
            raise ValueError(Text("The daily limit must be from 0 (unlimited) to {most}.", most=MAX_DAILY_IMAGES))
        if not 1 <= self.max_count <= MAX_COUNT:
            raise ValueError(Text("The most images a job may ask for must be from 1 to {most}.", most=MAX_COUNT))
        return replace(
            self, nsfw_policy=NsfwPolicy(self.nsfw_policy), enhance_default=EnhanceDefault(self.enhance_default)
        )
