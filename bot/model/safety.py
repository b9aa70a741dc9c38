"""The image safety classifier: the probability that each generated image is NSFW.

`SAFETY_MODEL` names any image-classification model on the Hugging Face Hub with a label called
`nsfw` (any case), by default Falconsai/nsfw_image_detection (a ViT-base). It is loaded with
transformers' auto classes, resident on the pipeline's device, and run by the PipelineService on its
one worker thread: one batched forward for all images of a job, right after they are made.

The PipelineService hands over each image twice: as the PIL image the user gets and as the tensor the
VAE decoded, still on the device. The check preprocesses the tensor there with torch
(DevicePreprocessing: the image processor's resize, rescale and normalisation, read from the
processor), so a 1024x1024 image is never resized on the CPU. At load, that preprocessing is compared
with the processor's own on a test picture; a processor it does not reproduce (a resize it does not
know, an unexpected step) keeps the processor on the PIL images instead, with a warning.

A failure never stops a job: an image whose check failed gets no score, and the result flags it
(fail closed). Start-up problems (not cached while offline, no `nsfw` label, weights that cannot be
loaded, a model that gives no usable score) raise SafetyModelError with one line saying what to change.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from bot.model.cache_report import CLASSIFIER, CLASSIFIER_PATTERNS, inspect_cache
from bot.model.download import DownloadError, download_model

log = logging.getLogger(__name__)

NSFW_LABEL = "nsfw"


class SafetyModelError(RuntimeError):
    """The safety classifier cannot be used; the message (one line) says what to change."""


def fetch_classifier(model_id: str, revision: str = "main") -> tuple[Path, bool]:
    """Make sure the classifier's files are in the cache, downloading them if not; returns its snapshot
    folder and whether it was already cached.

    Raises DownloadError (offline, or the download failed) with a message naming the safety model."""
    report = inspect_cache(model_id, revision, kind=CLASSIFIER)
    if report.complete and report.snapshot_dir is not None:
        return report.snapshot_dir, True
    log.warning("safety model not complete in the cache (%s): downloading", "; ".join(report.problems))
    try:
        download_model(model_id, revision, allow_patterns=CLASSIFIER_PATTERNS)
    except DownloadError as error:
        raise DownloadError(f"the safety model (SAFETY_MODEL) {error}") from error
    report = inspect_cache(model_id, revision, kind=CLASSIFIER)
    if not report.complete or report.snapshot_dir is None:
        raise DownloadError(
            f"the safety model (SAFETY_MODEL) {model_id} is still incomplete after downloading: "
            + "; ".join(report.problems)
        )
    return report.snapshot_dir, False


def nsfw_label_index(id2label: Mapping[int, str], model_id: str) -> int:
    """The output index of the label named `nsfw` (any case)."""
    matches = [int(index) for index, label in id2label.items() if str(label).strip().lower() == NSFW_LABEL]
    if len(matches) != 1:
        labels = ", ".join(str(label) for label in id2label.values()) or "none"
        why = "has no label named nsfw" if not matches else "has more than one label named nsfw"
        raise SafetyModelError(
            f"SAFETY_MODEL={model_id} {why} (its labels: {labels}); "
            "choose an image classifier with an `nsfw` label, or set SAFETY_MODEL= (empty) to turn the check off"
        )
    return matches[0]


# PIL's resampling filters (PIL.Image.Resampling values) that torch's antialiased interpolation reproduces.
TORCH_RESAMPLING = {2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class DevicePreprocessing:
    """An image processor's steps redone with torch on a decoded image, on the image's own device.

    Input: one image as the pipeline decoded it, (C, H, W) or (1, C, H, W), values in [0, 1]. It is
    first rounded to the 8-bit levels of the PNG the user gets, so the classifier sees that picture;
    the resize is antialiased, as PIL filters when it shrinks, in PIL's two 8-bit passes."""

    mode: str | None  # torch's interpolation mode; None: no resize
    size: tuple[int, int] | None  # (height, width), or None with shortest_edge
    shortest_edge: int | None
    crop: tuple[int, int] | None  # centre crop (height, width)
    scale: float | None  # rescale factor, applied to 0..255 values
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def of(cls, processor) -> DevicePreprocessing:
        """The steps of `processor` (a transformers image processor), from its own attributes.

        Raises ValueError naming the step when the processor does something this does not reproduce."""
        if getattr(processor, "do_pad", False):
            raise ValueError("it pads images")
        mode = size = shortest_edge = None
        if getattr(processor, "do_resize", False):
            try:
                resample = int(processor.resample)
            except (TypeError, ValueError):
                raise ValueError(f"its resampling filter {processor.resample!r} is not one of PIL's") from None
            if resample not in TORCH_RESAMPLING:
                raise ValueError(f"its resampling filter {resample} is neither bilinear nor bicubic")
            mode = TORCH_RESAMPLING[resample]
            fields = _size_fields(processor.size)
            if set(fields) == {"height", "width"}:
                size = (fields["height"], fields["width"])
            elif set(fields) == {"shortest_edge"}:
                shortest_edge = fields["shortest_edge"]
            else:
                raise ValueError(f"its size {fields} is neither height and width nor shortest_edge alone")
        crop = None
        if getattr(processor, "do_center_crop", False):
            fields = _size_fields(processor.crop_size)
            if set(fields) != {"height", "width"}:
                raise ValueError(f"its crop size {fields} is not height and width")
            crop = (fields["height"], fields["width"])
            # Larger than the resized image, the processor would pad: not reproduced.
            smallest = min(size) if size is not None else shortest_edge
            if smallest is None or max(crop) > smallest:
                raise ValueError(f"its crop {crop} may be larger than its resized image")
        scale = float(processor.rescale_factor) if getattr(processor, "do_rescale", False) else None
        mean = std = None
        if getattr(processor, "do_normalize", False):
            mean, std = _channel_values(processor.image_mean), _channel_values(processor.image_std)
        return cls(mode, size, shortest_edge, crop, scale, mean, std)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the processor resizes a (height, width) image to."""
        if self.size is not None:
            return self.size
        if self.shortest_edge is None:
            return height, width
        # transformers' get_resize_output_image_size: the long side is truncated, not rounded.
        short, long = min(height, width), max(height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(1, C, h, w) float32 pixel values on the image's device."""
        pixels = image.float()
        if pixels.dim() == 3:
            pixels = pixels[None]
        # The same rounding as diffusers' numpy_to_pil: the 8-bit picture the user gets.
        pixels = (pixels * 255).round()
        if self.mode is not None:
            height, width = self.output_size(pixels.shape[-2], pixels.shape[-1])
            # As PIL resizes: the width first, then the height, each pass rounded half up to 8 bits (and
            # clipped: bicubic overshoots). In one pass, or rounding halves to even as torch.round does,
            # a tenth of the values would differ from PIL's by a level.
            if width != pixels.shape[-1]:
                pixels = F.interpolate(pixels, size=(pixels.shape[-2], width), mode=self.mode, antialias=True)
                pixels = (pixels + 0.5).floor().clamp(0, 255)
            if height != pixels.shape[-2]:
                pixels = F.interpolate(pixels, size=(height, width), mode=self.mode, antialias=True)
                pixels = (pixels + 0.5).floor().clamp(0, 255)
        if self.crop is not None:
            crop_height, crop_width = self.crop
            top = (pixels.shape[-2] - crop_height) // 2
            left = (pixels.shape[-1] - crop_width) // 2
            pixels = pixels[..., top : top + crop_height, left : left + crop_width]
        if self.scale is not None:
            pixels = pixels * self.scale
        if self.mean is not None and self.std is not None:
            pixels = (pixels - _channel_tensor(self.mean, pixels.device)) / _channel_tensor(self.std, pixels.device)
        return pixels


def reference_picture(height: int, width: int) -> np.ndarray:
    """A deterministic (height, width, 3) uint8 picture with gradients and sharp edges: resizing it shows
    a different filter, size, crop or normalisation at once."""
    rows = np.arange(height, dtype=np.float64)[:, None]
    columns = np.arange(width, dtype=np.float64)[None, :]
    red = np.broadcast_to(columns / max(width - 1, 1) * 255, (height, width))
    green = np.broadcast_to(rows / max(height - 1, 1) * 255, (height, width))
    blue = (((rows // 7) + (columns // 5)) % 2) * 200 + 30
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def matching_preprocessing(
    processor, model_id: str, device: torch.device | None = None, tolerance_levels: float = 2.0
) -> DevicePreprocessing | None:
    """DevicePreprocessing for `processor` when, run on `device` (default the CPU) on a test picture, it
    gives the processor's own pixel values within `tolerance_levels` 8-bit grey levels (PIL's fixed-point
    filter weights move a rare value by one); None, with a warning, when it does not reproduce the processor."""
    try:
        preprocessing = DevicePreprocessing.of(processor)
        edge = preprocessing.shortest_edge or 224
        height, width = preprocessing.size or (edge, edge)
        # Larger than the classifier's input and not square: the resize shrinks, as it does for real images.
        picture = reference_picture(3 * height + 13, 2 * width + 29)
        expected = processor(images=[Image.fromarray(picture)], return_tensors="pt")["pixel_values"].float()
        tensor = torch.from_numpy(picture).to(device or "cpu").permute(2, 0, 1).float() / 255
        got = preprocessing(tensor).cpu()
        if got.shape != expected.shape:
            raise ValueError(f"it gives {tuple(expected.shape)} where torch gives {tuple(got.shape)}")
        level = (preprocessing.scale or 1.0) / (min(preprocessing.std) if preprocessing.std else 1.0)
        difference = (got - expected).abs().max().item() / level
        if not difference <= tolerance_levels:
            raise ValueError(f"its pixel values differ by up to {difference:.1f} grey levels")
    except Exception as error:
        log.warning(
            "the safety model %s's image processor is not reproduced on the device (%s): it runs on the "
            "PIL images on the CPU instead (slower on a GPU)",
            model_id,
            _one_line(error),
        )
        return None
    return preprocessing


class SafetyChecker:
    """A resident image classifier; call it only from the model service's worker thread."""

    def __init__(self, model_id: str, model, processor, nsfw_index: int, device: torch.device, dtype: torch.dtype):
        self.model_id = model_id
        self.model = model
        self.processor = processor
        self.nsfw_index = nsfw_index
        self.device = device
        self.dtype = dtype
        # None: the processor runs on the PIL images (the decoded tensors are not used).
        self.device_preprocessing = matching_preprocessing(processor, model_id, device)

    @classmethod
    def load(cls, model_id: str, snapshot: Path, device: torch.device, dtype: torch.dtype) -> SafetyChecker:
        """Load `model_id` from its snapshot folder in the cache (see fetch_classifier) onto `device` in `dtype`.

        From the folder rather than by repo id: transformers then asks the Hub nothing (by repo id, some
        versions look for a PEFT adapter online even with local_files_only)."""
        try:
            config = AutoConfig.from_pretrained(snapshot)
        except (OSError, ValueError) as error:
            reason = _one_line(error)
            raise SafetyModelError(f"SAFETY_MODEL={model_id}: its config.json cannot be read: {reason}") from error
        nsfw_index = nsfw_label_index(config.id2label, model_id)
        kwargs: dict = {"use_safetensors": True, _dtype_keyword(): dtype}
        if device.type == "cuda":
            kwargs["device_map"] = str(device)  # straight onto the GPU, no copy in host memory
        try:
            processor = AutoImageProcessor.from_pretrained(snapshot)
            model = AutoModelForImageClassification.from_pretrained(snapshot, config=config, **kwargs)
        except Exception as error:  # OSError, ValueError, safetensors' and torch's own errors for bad files
            raise SafetyModelError(
                f"SAFETY_MODEL={model_id} could not be loaded as an image classifier: {_one_line(error)}"
            ) from error
        if device.type != "cuda":
            model.to(device)
        model.eval()
        return cls(model_id, model, processor, nsfw_index, device, dtype)

    @property
    def parameter_bytes(self) -> int:
        return sum(parameter.numel() * parameter.element_size() for parameter in self.model.parameters())

    def warm_up(self) -> None:
        """One check of a plain grey image, as jobs check theirs: pays the first-call costs and proves the
        model gives a score."""
        grey = Image.new("RGB", (512, 512), (128, 128, 128))
        decoded = torch.full((3, 512, 512), 128 / 255, device=self.device)
        try:
            score = self._forward([grey], [decoded])[0]
        except Exception as error:
            reason = _one_line(error)
            raise SafetyModelError(f"SAFETY_MODEL={self.model_id} failed on a test image: {reason}") from error
        if score is None:
            raise SafetyModelError(
                f"SAFETY_MODEL={self.model_id} gives no usable score (not a number) for a test image: "
                "its weights are broken; run `zimage-bot download` again or choose another model"
            )

    def scores(
        self, images: Sequence[Image.Image], decoded: Sequence[torch.Tensor] | None = None
    ) -> list[float | None]:
        """The `nsfw` probability of each image, in one batched forward; None where the check failed.

        `decoded`: the same images as the pipeline decoded them ((C, H, W) or (1, C, H, W), values in
        [0, 1], on the classifier's device), preprocessed there; without it, the processor runs on `images`.
        """
        if decoded is not None and len(decoded) != len(images):
            raise ValueError(f"{len(images)} image(s) but {len(decoded)} decoded tensor(s)")
        if not images:
            return []
        try:
            return self._forward(images, decoded)
        except Exception:
            log.exception("the safety check failed on a batch of %d image(s); checking them one by one", len(images))
        if len(images) == 1:
            return [None]
        scores: list[float | None] = []
        for index, image in enumerate(images):
            try:
                scores.extend(self._forward([image], None if decoded is None else [decoded[index]]))
            except Exception:
                log.exception("the safety check failed on image %d; it is flagged (fail closed)", index + 1)
                scores.append(None)
        return scores

    def _forward(
        self, images: Sequence[Image.Image], decoded: Sequence[torch.Tensor] | None = None
    ) -> list[float | None]:
        with torch.inference_mode():
            if decoded is not None and self.device_preprocessing is not None:
                preprocess = self.device_preprocessing
                pixel_values = torch.cat([preprocess(tensor.to(self.device)) for tensor in decoded])
            else:
                pixel_values = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
            logits = self.model(pixel_values=pixel_values.to(self.device, self.dtype)).logits
        probabilities = logits.float().softmax(dim=-1)[:, self.nsfw_index].tolist()
        scores: list[float | None] = []
        for index, probability in enumerate(probabilities):
            if math.isfinite(probability):
                scores.append(probability)
            else:
                log.error("the safety check gave no number for image %d; it is flagged (fail closed)", index + 1)
                scores.append(None)
        return scores


def _size_fields(value) -> dict[str, int]:
    """A processor's size as a plain dict without empty entries (a dict, or transformers' SizeDict)."""
    if isinstance(value, Mapping):
        items = value.items()
    else:
        try:
            items = dict(value).items()  # SizeDict iterates over its set (name, value) pairs
        except (TypeError, ValueError):
            raise ValueError(f"its size {value!r} is not a dict") from None
    return {str(key): int(number) for key, number in items if number is not None}


@functools.lru_cache(maxsize=16)
def _channel_tensor(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # Made once per device: a copy to the GPU for every image would wait for the work queued before it.
    return torch.tensor(values, device=device).view(-1, 1, 1)


def _channel_values(value) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    return tuple(float(number) for number in value)


def _dtype_keyword() -> str:
    # transformers renamed `torch_dtype` to `dtype` in 4.56.
    major, minor = (int(part) for part in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
