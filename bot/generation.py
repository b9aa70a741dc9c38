"""Plain data that goes into and comes out of the model service.

Nothing here imports torch: the command line and the Discord cogs build and validate requests
without touching the model, and only see PIL images and numbers in results.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from PIL import Image

from bot.image_size import MAX_SIDE, MIN_SIDE, SIZE_MULTIPLE, ImageSize
from bot.translations import Text

MAX_SEED = 2**32 - 1
MAX_COUNT = 4
MAX_PROMPT_CHARS = 1500  # the model reads at most 512 tokens; longer text would be cut silently
MAX_GUIDANCE = 20.0
SAMPLER_NAME = "FlowMatchEuler"
# Image-to-image: the share of the schedule that is run again from the input picture. 0.6 keeps the
# composition and colours and redraws the details; below 0.05 fewer than one step of 8 would run.
MIN_STRENGTH = 0.05
MAX_STRENGTH = 1.0
DEFAULT_STRENGTH = 0.6
# Upscale redraws only the fine detail of the enlarged picture; Vary keeps more or less of it.
UPSCALE_STRENGTH = 0.35
VARY_SUBTLE_STRENGTH = 0.35
VARY_STRONG_STRENGTH = 0.7
MAX_STYLE_WEIGHT = 2.0


class GenerationError(Exception):
    """A job could not produce its images; the message is safe to show to the requester."""


class InvalidRequest(GenerationError, ValueError):
    """The request asks for something the bot will not run; the message says what to change."""


class GenerationCancelled(GenerationError):
    """The job was cancelled before it finished."""


class OutOfMemory(GenerationError):
    """The GPU ran out of memory for this job; the service freed what it held and goes on."""


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    size: ImageSize
    steps: int
    seed: int
    negative_prompt: str = ""
    guidance: float = 0.0
    count: int = 1
    # Image-to-image: the prepared input PNG (a path under OUTPUT_DIR, so the job survives restarts),
    # its SHA-256, and how much of it is redrawn. None for text-to-image.
    source_image: str | None = None
    source_sha256: str | None = None
    strength: float | None = None
    # A LoRA style by its LORAS name, and its weight (None: the weight LORAS gives it).
    style: str | None = None
    style_weight: float | None = None
    enhance: bool = False  # rewrite the prompt with the prompt enhancer before drawing

    def seeds(self) -> list[int]:
        """One seed per image: consecutive, so image i of a batch can be made again on its own."""
        return [(self.seed + index) % (MAX_SEED + 1) for index in range(self.count)]

    @property
    def steps_to_run(self) -> int:
        """Transformer passes per image: image-to-image skips the first (1 - strength) of the schedule,
        rounded as diffusers does."""
        if self.source_image is None or self.strength is None:
            return self.steps
        skipped = int(max(self.steps - min(self.steps * self.strength, self.steps), 0))
        return self.steps - skipped


def validate_request(
    request: GenerationRequest, *, max_steps: int, allowed_sizes: tuple[ImageSize, ...] | None = None
) -> GenerationRequest:
    """Reject what the pipeline would fail on or misuse, before it reaches the GPU thread."""
    prompt = request.prompt.strip()
    if not prompt:
        raise InvalidRequest(Text("The prompt is empty: describe the picture you want."))
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            Text(
                "The prompt is {length} characters long; shorten it to at most {most}.",
                length=len(prompt),
                most=MAX_PROMPT_CHARS,
            )
        )
    if len(request.negative_prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            Text("The negative prompt is too long; keep it under {most} characters.", most=MAX_PROMPT_CHARS)
        )
    try:
        request.size.check()
    except ValueError:
        raise InvalidRequest(
            Text(
                "Size {size} is not allowed: width and height must be multiples of {multiple} from {low} to {high}.",
                size=str(request.size),
                multiple=SIZE_MULTIPLE,
                low=MIN_SIDE,
                high=MAX_SIDE,
            )
        ) from None
    if allowed_sizes is not None and request.size not in allowed_sizes:
        choices = ", ".join(str(size) for size in allowed_sizes)
        raise InvalidRequest(
            Text("Size {size} is not offered here; choose one of {choices}.", size=str(request.size), choices=choices)
        )
    if not 1 <= request.steps <= max_steps:
        raise InvalidRequest(Text("Steps must be from 1 to {most} (got {got}).", most=max_steps, got=request.steps))
    if not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequest(Text("Seed must be from 0 to {most} (got {got}).", most=MAX_SEED, got=request.seed))
    if not 0.0 <= request.guidance <= MAX_GUIDANCE:
        raise InvalidRequest(
            Text(
                "Guidance must be from 0 to {most} (got {got}).",
                most=f"{MAX_GUIDANCE:g}",
                got=f"{request.guidance:g}",
            )
        )
    if not 1 <= request.count <= MAX_COUNT:
        raise InvalidRequest(Text("Count must be from 1 to {most} (got {got}).", most=MAX_COUNT, got=request.count))
    strength = request.strength
    if request.source_image is None:
        if strength is not None:
            raise InvalidRequest(
                Text("Strength only applies when you start from a picture: attach one, or leave strength out.")
            )
    else:
        strength = DEFAULT_STRENGTH if strength is None else strength
        if not MIN_STRENGTH <= strength <= MAX_STRENGTH:
            raise InvalidRequest(
                Text(
                    "Strength must be from {low} (keep the picture) to {high} (redraw it all); got {got}.",
                    low=f"{MIN_STRENGTH:g}",
                    high=f"{MAX_STRENGTH:g}",
                    got=f"{strength:g}",
                )
            )
    if request.style_weight is not None:
        if request.style is None:
            raise InvalidRequest(Text("A style weight needs a style: pick one, or leave the weight out."))
        if not 0 < request.style_weight <= MAX_STYLE_WEIGHT:
            raise InvalidRequest(
                Text(
                    "Style weight must be above 0 and at most {most} (got {got}).",
                    most=f"{MAX_STYLE_WEIGHT:g}",
                    got=f"{request.style_weight:g}",
                )
            )
    return replace(request, prompt=prompt, negative_prompt=request.negative_prompt.strip(), strength=strength)


def image_to_image(
    request: GenerationRequest, source: str, sha256: str, *, strength: float, size: ImageSize | None = None
) -> GenerationRequest:
    """A request that redraws the picture at `source` (Upscale, Vary): same prompt and style, the
    caller's new seed and size."""
    return replace(
        request, source_image=str(source), source_sha256=sha256, strength=strength, size=size or request.size, count=1
    )


@dataclass(frozen=True)
class StepProgress:
    step: int  # 1-based: "step 3 of 8"
    total: int
    image_index: int = 0


ProgressCallback = Callable[[StepProgress], None]


class CancelToken:
    """Set from any thread; the worker checks it before the job and after every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list[Image.Image]
    seeds: list[int]
    seconds: float  # wall time of the pipeline call(s) and the safety check, excluding queueing
    # The safety classifier's probability of `nsfw` for each image; None where the check failed for it.
    nsfw_scores: list[float | None] = field(default_factory=list)
    # The SAFETY_THRESHOLD the images were checked against; None when the check is off (not checked).
    safety_threshold: float | None = None
    safety_seconds: float = 0.0  # the part of `seconds` the safety check took
    # The prompt the images were made from: the enhanced one, or the request's own ("" means the latter).
    prompt_used: str = ""
    # Why an enhancement that was asked for was not used (the original prompt was), or None.
    enhancement_note: Text | None = None

    def __post_init__(self) -> None:
        if not self.prompt_used:
            self.prompt_used = self.request.prompt

    @property
    def enhanced(self) -> bool:
        return self.prompt_used != self.request.prompt

    @property
    def safety_checked(self) -> bool:
        return self.safety_threshold is not None

    @property
    def flagged(self) -> list[bool]:
        """One flag per image: its score reached the threshold, or the check failed for it (fail closed).
        All False when the check is off."""
        threshold = self.safety_threshold
        if threshold is None:
            return [False] * len(self.images)
        scores = self.nsfw_scores
        return [
            index >= len(scores) or scores[index] is None or scores[index] >= threshold  # type: ignore[operator]
            for index in range(len(self.images))
        ]


def parameters_text(request: GenerationRequest, seed: int, model_id: str, prompt_used: str | None = None) -> str:
    """The `parameters` PNG text chunk, in the form image tools already read (A1111 style).

    The first line is the prompt that made the image. When that is an enhanced prompt, the user's own
    goes last on the settings line as `Original prompt: "..."`, JSON-quoted the way A1111 writes
    its own text-valued settings (`Hires prompt`), so readers that split that line on commas keep it
    whole and no reader takes it for part of the prompt."""
    prompt = prompt_used or request.prompt
    lines = [prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    fields = (
        f"Steps: {request.steps}, Sampler: {SAMPLER_NAME}, CFG scale: {request.guidance:g}, "
        f"Seed: {seed}, Size: {request.size}, Model: {model_id}"
    )
    if request.source_image is not None and request.strength is not None:
        fields += f", Denoising strength: {request.strength:g}"
        if request.source_sha256:
            fields += f", Init image hash: {request.source_sha256[:10]}"
    if request.style is not None:
        weight = request.style_weight
        fields += f", Lora: {request.style}" + (f":{weight:g}" if weight is not None else "")
    if prompt != request.prompt:
        fields += f", Original prompt: {json.dumps(request.prompt, ensure_ascii=False)}"
    lines.append(fields)
    return "\n".join(lines)
