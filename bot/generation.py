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

from bot.image_size import ImageSize

MAX_SEED = 2**32 - 1
MAX_COUNT = 4
MAX_PROMPT_CHARS = 1500  # the model reads at most 512 tokens; longer text would be cut silently
MAX_GUIDANCE = 20.0
SAMPLER_NAME = "FlowMatchEuler"


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
    enhance: bool = False  # rewrite the prompt with the prompt enhancer before drawing

    def seeds(self) -> list[int]:
        """One seed per image: consecutive, so image i of a batch can be made again on its own."""
        return [(self.seed + index) % (MAX_SEED + 1) for index in range(self.count)]

    def with_seed(self, seed: int) -> GenerationRequest:
        return replace(self, seed=seed)


def validate_request(
    request: GenerationRequest, *, max_steps: int, allowed_sizes: tuple[ImageSize, ...] | None = None
) -> GenerationRequest:
    """Reject what the pipeline would fail on or misuse, before it reaches the GPU thread."""
    prompt = request.prompt.strip()
    if not prompt:
        raise InvalidRequest("The prompt is empty: describe the picture you want.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The prompt is {len(prompt)} characters long; shorten it to at most {MAX_PROMPT_CHARS}.")
    if len(request.negative_prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The negative prompt is too long; keep it under {MAX_PROMPT_CHARS} characters.")
    try:
        request.size.check()
    except ValueError as error:
        raise InvalidRequest(str(error).capitalize() + ".") from None
    if allowed_sizes is not None and request.size not in allowed_sizes:
        choices = ", ".join(str(size) for size in allowed_sizes)
        raise InvalidRequest(f"Size {request.size} is not offered here; choose one of {choices}.")
    if not 1 <= request.steps <= max_steps:
        raise InvalidRequest(f"Steps must be from 1 to {max_steps} (got {request.steps}).")
    if not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequest(f"Seed must be from 0 to {MAX_SEED} (got {request.seed}).")
    if not 0.0 <= request.guidance <= MAX_GUIDANCE:
        raise InvalidRequest(f"Guidance must be from 0 to {MAX_GUIDANCE:g} (got {request.guidance:g}).")
    if not 1 <= request.count <= MAX_COUNT:
        raise InvalidRequest(f"Count must be from 1 to {MAX_COUNT} (got {request.count}).")
    return replace(request, prompt=prompt, negative_prompt=request.negative_prompt.strip())


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
    seconds: float  # wall time of the pipeline call(s), excluding queueing
    step_seconds: list[float] = field(default_factory=list)
    # The prompt the images were made from: the enhanced one, or the request's own ("" means the latter).
    prompt_used: str = ""
    # Why an enhancement that was asked for was not used (the original prompt was), or None.
    enhancement_note: str | None = None

    def __post_init__(self) -> None:
        if not self.prompt_used:
            self.prompt_used = self.request.prompt

    @property
    def enhanced(self) -> bool:
        return self.prompt_used != self.request.prompt

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, len(self.images))


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
    settings = (
        f"Steps: {request.steps}, Sampler: {SAMPLER_NAME}, CFG scale: {request.guidance:g}, "
        f"Seed: {seed}, Size: {request.size}, Model: {model_id}"
    )
    if prompt != request.prompt:
        settings += f", Original prompt: {json.dumps(request.prompt, ensure_ascii=False)}"
    lines.append(settings)
    return "\n".join(lines)
