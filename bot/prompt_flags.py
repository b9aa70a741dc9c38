"""Midjourney-style flags in a prompt: `--ar 16:9`, `--seed 42`, `--no text`, `--steps 6`.

People paste prompts from other bots, and phones turn a typed `--` into an em-dash, so both count.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from bot.generation import MAX_SEED, InvalidRequest
from bot.image_size import ImageSize
from bot.translations import Text

FLAGS = ("ar", "seed", "no", "steps")
# A phone's em-dash (and the en-dash some keyboards make) stands for "--", but only right before a flag
# name: every other dash ("1990–2000", "a cat — on a mat") is part of the prompt and is kept as typed.
# Chinese input methods type "——" (and full-width "－－") for the same keys, so those count too.
_DASHES = re.compile(r"(?:(?<=\s)|^)(?:[—–－]{1,2}|[—–]-)(?=(?:" + "|".join(FLAGS) + r")\b)", re.IGNORECASE)
_FLAG = re.compile(r"(?:(?<=\s)|^)--(\w+)")
# Beyond 16:1 either way is bad input (no offered size comes near it), not a wish to round.
MAX_ASPECT = 16


@dataclass(frozen=True)
class PromptFlags:
    prompt: str
    aspect: tuple[int, int] | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    steps: int | None = None


def parse_prompt_flags(text: str) -> PromptFlags:
    text = _DASHES.sub("--", text)
    matches = list(_FLAG.finditer(text))
    if not matches:
        return PromptFlags(text.strip())
    values: dict[str, str] = {}
    for index, match in enumerate(matches):
        name = match[1].lower()
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        value = text[match.end() : end].strip()
        if name not in FLAGS:
            raise InvalidRequest(
                Text("Unknown flag `--{flag}`. Supported: --ar W:H, --seed N, --no TEXT, --steps N.", flag=_shown(name))
            )
        if name in values:
            raise InvalidRequest(Text("`--{flag}` is given twice; keep one.", flag=name))
        if not value:
            raise InvalidRequest(Text("`--{flag}` needs a value, e.g. {example}.", flag=name, example=_EXAMPLES[name]))
        values[name] = value
    return PromptFlags(
        prompt=text[: matches[0].start()].strip(),
        aspect=_aspect(values["ar"]) if "ar" in values else None,
        seed=_integer("seed", values["seed"], 0, MAX_SEED) if "seed" in values else None,
        negative_prompt=values.get("no"),
        steps=_integer("steps", values["steps"], 1, 10_000) if "steps" in values else None,
    )


_EXAMPLES = {"ar": "`--ar 16:9`", "seed": "`--seed 42`", "no": "`--no text, watermark`", "steps": "`--steps 8`"}


def _aspect(value: str) -> tuple[int, int]:
    # Bounded digits: Python refuses to convert numbers of thousands of digits, and no ratio needs them.
    # "：" and "×": the colon and times sign of Chinese input methods.
    match = re.fullmatch(r"(\d{1,9}(?:\.\d{1,9})?)\s*[:/x：×]\s*(\d{1,9}(?:\.\d{1,9})?)", value)
    if not match or float(match[1]) <= 0 or float(match[2]) <= 0:
        raise InvalidRequest(
            Text("`--ar {value}` is not an aspect ratio; write it like `--ar 16:9`.", value=_shown(value))
        )
    ratio = Fraction(match[1]) / Fraction(match[2])
    if not 1 / MAX_ASPECT <= ratio <= MAX_ASPECT:
        shown = _shown(value)
        if ratio > 1:
            raise InvalidRequest(
                Text(
                    "`--ar {value}` is too wide; use a ratio from 1:{most} to {most}:1, e.g. `--ar 16:9`.",
                    value=shown,
                    most=MAX_ASPECT,
                )
            )
        raise InvalidRequest(
            Text(
                "`--ar {value}` is too tall; use a ratio from 1:{most} to {most}:1, e.g. `--ar 16:9`.",
                value=shown,
                most=MAX_ASPECT,
            )
        )
    # Within those bounds the nearest fraction with a small denominator is never 0 and keeps 2.39:1 exact.
    ratio = ratio.limit_denominator(1000)
    return ratio.numerator, ratio.denominator


def _integer(name: str, value: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d+", value):
        raise InvalidRequest(
            Text(
                "`--{flag} {value}` needs a whole number from {low} to {high}.",
                flag=name,
                value=_shown(value),
                low=low,
                high=high,
            )
        )
    digits = value.lstrip("0") or "0"
    if len(digits) > len(str(high)):  # far out of range; int() refuses thousands of digits
        raise InvalidRequest(_out_of_range(name, low, high, _shown(value)))
    number = int(digits)
    if not low <= number <= high:
        raise InvalidRequest(_out_of_range(name, low, high, number))
    return number


def _out_of_range(name: str, low: int, high: int, got: object) -> Text:
    return Text("`--{flag}` must be from {low} to {high} (got {got}).", flag=name, low=low, high=high, got=got)


def _shown(text: str, limit: int = 40) -> str:
    """User text quoted in an error, cut short: a prompt may be thousands of characters long, and an
    answer over Discord's message limit would not be shown at all."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def nearest_size(aspect: tuple[int, int], sizes: tuple[ImageSize, ...]) -> ImageSize:
    """The offered size whose shape is closest to `aspect` (compared on a log scale, so 2:1 and 1:2
    are equally far from 1:1)."""
    wanted = math.log(aspect[0] / aspect[1])
    return min(sizes, key=lambda size: abs(math.log(size.aspect) - wanted))
