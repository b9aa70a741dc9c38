"""The image safety classifier: the probability that each generated image is NSFW.

`SAFETY_MODEL` names any image-classification model on the Hugging Face Hub with a label called
`nsfw` (any case), by default Falconsai/nsfw_image_detection (a ViT-base). It is loaded with
transformers' auto classes, resident on the pipeline's device, and run by the PipelineService on its
one worker thread: one batched forward for all images of a job, right after they are made.

A failure never stops a job: an image whose check failed gets no score, and the result flags it
(fail closed). Start-up problems (not cached while offline, no `nsfw` label, weights that cannot be
loaded, a model that gives no usable score) raise SafetyModelError with one line saying what to change.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
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


class SafetyChecker:
    """A resident image classifier; call it only from the model service's worker thread."""

    def __init__(self, model_id: str, model, processor, nsfw_index: int, device: torch.device, dtype: torch.dtype):
        self.model_id = model_id
        self.model = model
        self.processor = processor
        self.nsfw_index = nsfw_index
        self.device = device
        self.dtype = dtype

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
        """One check of a plain grey image: pays the first-call costs and proves the model gives a score."""
        try:
            score = self._forward([Image.new("RGB", (512, 512), (128, 128, 128))])[0]
        except Exception as error:
            reason = _one_line(error)
            raise SafetyModelError(f"SAFETY_MODEL={self.model_id} failed on a test image: {reason}") from error
        if score is None:
            raise SafetyModelError(
                f"SAFETY_MODEL={self.model_id} gives no usable score (not a number) for a test image: "
                "its weights are broken; run `zimage-bot download` again or choose another model"
            )

    def scores(self, images: Sequence[Image.Image]) -> list[float | None]:
        """The `nsfw` probability of each image, in one batched forward; None where the check failed."""
        if not images:
            return []
        try:
            return self._forward(images)
        except Exception:
            log.exception("the safety check failed on a batch of %d image(s); checking them one by one", len(images))
        if len(images) == 1:
            return [None]
        scores: list[float | None] = []
        for index, image in enumerate(images):
            try:
                scores.extend(self._forward([image]))
            except Exception:
                log.exception("the safety check failed on image %d; it is flagged (fail closed)", index + 1)
                scores.append(None)
        return scores

    def _forward(self, images: Sequence[Image.Image]) -> list[float | None]:
        pixel_values = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(self.device, self.dtype)
        with torch.inference_mode():
            logits = self.model(pixel_values=pixel_values).logits
        probabilities = logits.float().softmax(dim=-1)[:, self.nsfw_index].tolist()
        scores: list[float | None] = []
        for index, probability in enumerate(probabilities):
            if math.isfinite(probability):
                scores.append(probability)
            else:
                log.error("the safety check gave no number for image %d; it is flagged (fail closed)", index + 1)
                scores.append(None)
        return scores


def _dtype_keyword() -> str:
    # transformers renamed `torch_dtype` to `dtype` in 4.56.
    major, minor = (int(part) for part in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
