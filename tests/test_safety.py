"""The image safety check (SAFETY_MODEL, SAFETY_THRESHOLD): real tiny ViT classifiers in the cache, the real
pipeline service, the command line in its own process, and /status and /cache-check through the Discord double."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from bench.hub_layout import save_vit_classifier
from bot.generation import GenerationRequest, GenerationResult
from bot.image_input import load_source, save_input
from bot.image_size import ImageSize
from bot.model.cache_report import CLASSIFIER, inspect_cache
from bot.model.download import DownloadError
from bot.model.img2img import image_to_image_pipeline
from bot.model.pipeline_service import ModelLoadError, PipelineService
from bot.model.safety import (
    DevicePreprocessing,
    SafetyChecker,
    SafetyModelError,
    fetch_classifier,
    matching_preprocessing,
)
from bot.settings import ConfigError, Settings
from conftest import ADMIN_ID, HUB_CACHE, TINY_REPO_ID, tiny_env
from test_generation_cog import reply_text
from tiny_model import (
    TINY_NO_NSFW_LABEL,
    TINY_SAFETY_ALWAYS,
    TINY_SAFETY_HALF,
    TINY_SAFETY_NAN,
    TINY_SAFETY_NEVER,
    blob_path_of,
    snapshot_dir,
)

SMALL = ImageSize(64, 64)


def request(count: int = 1) -> GenerationRequest:
    return GenerationRequest("a red fox in the snow", SMALL, 2, seed=7, count=count)


def checker(repo_id: str, hub: Path = HUB_CACHE) -> SafetyChecker:
    snapshot = inspect_cache(repo_id, cache_root=hub, kind=CLASSIFIER).snapshot_dir
    assert snapshot is not None
    return SafetyChecker.load(repo_id, snapshot, torch.device("cpu"), torch.float32)


def zimage_bot(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180
    )


def error_lines(stderr: str) -> list[str]:
    """The lines the command line printed itself (not the log)."""
    return [line for line in stderr.splitlines() if line.startswith("zimage-bot: ")]


# ----- settings -----------------------------------------------------------------------------------


def test_the_check_is_on_by_default_and_an_empty_variable_turns_it_off():
    default = Settings.from_env({})
    assert default.safety_model == "Falconsai/nsfw_image_detection" and default.safety_threshold == 0.5
    assert default.safety_check_text == "Falconsai/nsfw_image_detection, threshold 0.5"
    off = Settings.from_env({"SAFETY_MODEL": ""})
    assert off.safety_model is None and off.safety_check_text == "off"
    assert Settings.from_env({"SAFETY_MODEL": "  "}).safety_model is None
    chosen = Settings.from_env({"SAFETY_MODEL": "org/my-classifier", "SAFETY_THRESHOLD": "0.85"})
    assert (chosen.safety_model, chosen.safety_threshold) == ("org/my-classifier", 0.85)
    assert Settings.from_env({"SAFETY_THRESHOLD": "0"}).safety_threshold == 0.0
    assert Settings.from_env({"SAFETY_THRESHOLD": "1"}).safety_threshold == 1.0


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("SAFETY_MODEL", "nsfw", "a repo id like org/name, or empty to turn the image safety check off"),
        ("SAFETY_THRESHOLD", "1.5", "a number from 0 to 1"),
        ("SAFETY_THRESHOLD", "-0.1", "a number from 0 to 1"),
        ("SAFETY_THRESHOLD", "high", "a number from 0 to 1"),
        ("SAFETY_THRESHOLD", "nan", "a number from 0 to 1"),
    ],
)
def test_bad_safety_values_name_the_variable(variable, value, hint):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert str(caught.value).startswith(f"{variable}={value!r} is not valid: ") and hint in str(caught.value)


def test_an_empty_safety_model_in_dotenv_turns_the_check_off(hub_cache, tmp_path):
    env = tiny_env(tmp_path, hub_cache)
    del env["SAFETY_MODEL"]
    (tmp_path / ".env").write_text("SAFETY_MODEL=\n")
    result = zimage_bot(["cache-check"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Safety model" not in result.stdout and "Model:" in result.stdout


# ----- the result's flags --------------------------------------------------------------------------


def result_with(scores, threshold, images=3) -> GenerationResult:
    picture = Image.new("RGB", (8, 8))
    return GenerationResult(
        request(images), [picture] * images, [1] * images, 1.0, nsfw_scores=scores, safety_threshold=threshold
    )


def test_flags_are_the_threshold_reached_or_a_failed_check():
    checked = result_with([0.2, None, 0.9], 0.5)
    assert checked.safety_checked and checked.flagged == [False, True, True]
    assert result_with([0.5, 0.49999, 1.0], 0.5).flagged == [True, False, True]
    assert result_with([0.0, 0.3, 1.0], 0.0).flagged == [True, True, True]
    assert result_with([0.0, 0.99, 1.0], 1.0).flagged == [False, False, True]
    assert result_with([0.1], 0.5).flagged == [False, True, True]  # a score that is missing is a failed check
    unchecked = result_with([None, None, None], None)
    assert not unchecked.safety_checked and unchecked.flagged == [False, False, False]


# ----- the classifier ------------------------------------------------------------------------------


def test_the_classifier_finds_its_nsfw_label_in_any_case_and_scores_a_batch(hub_cache):
    images = [Image.new("RGB", (64, 64), colour) for colour in ("red", "green", "blue")]
    always = checker(TINY_SAFETY_ALWAYS)  # labels NSFW, normal: the label is first and in capitals
    assert always.nsfw_index == 0
    assert always.scores(images) == [1.0, 1.0, 1.0]
    assert checker(TINY_SAFETY_HALF).scores(images) == [0.5, 0.5, 0.5]
    never = checker(TINY_SAFETY_NEVER).scores(images)
    assert len(never) == 3 and all(0.0 <= score < 1e-9 for score in never)
    assert always.scores([]) == []


def test_a_classifier_without_an_nsfw_label_is_refused(hub_cache):
    with pytest.raises(SafetyModelError) as caught:
        checker(TINY_NO_NSFW_LABEL)
    message = str(caught.value)
    assert message.startswith(f"SAFETY_MODEL={TINY_NO_NSFW_LABEL} has no label named nsfw (its labels: drawing, photo)")
    assert "\n" not in message


def test_a_failure_on_one_image_flags_that_image_only(hub_cache, caplog):
    always = checker(TINY_SAFETY_HALF)
    # A four-channel image cannot be normalised with three channel means: the real preprocessing fails
    # for it, so the batch fails, and each image is then checked on its own.
    images = [Image.new("RGB", (64, 64)), Image.new("RGBA", (64, 64)), Image.new("RGB", (96, 64))]
    with caplog.at_level(logging.ERROR, logger="bot.model.safety"):
        assert always.scores(images) == [0.5, None, 0.5]
    assert "the safety check failed on image 2; it is flagged (fail closed)" in caplog.text
    assert always.scores([images[1]]) == [None]


def test_a_classifier_that_gives_no_number_fails_closed_and_stops_start_up(hub_cache, tmp_path, caplog):
    broken = checker(TINY_SAFETY_NAN)
    with caplog.at_level(logging.ERROR, logger="bot.model.safety"):
        assert broken.scores([Image.new("RGB", (64, 64))] * 2) == [None, None]
    assert "gave no number for image 2" in caplog.text
    with pytest.raises(SafetyModelError, match="gives no usable score"):
        broken.warm_up()


def test_a_broken_weight_file_is_a_load_error(own_hub_cache):
    blob = blob_path_of(own_hub_cache, TINY_SAFETY_NEVER, "model.safetensors")
    blob.write_bytes(blob.read_bytes()[:100])
    with pytest.raises(SafetyModelError) as caught:
        checker(TINY_SAFETY_NEVER, own_hub_cache)
    assert str(caught.value).startswith(
        f"SAFETY_MODEL={TINY_SAFETY_NEVER} could not be loaded as an image classifier: "
    )
    assert "\n" not in str(caught.value)


def test_fetching_finds_a_cached_classifier_and_refuses_to_download_offline(hub_cache):
    assert fetch_classifier(TINY_SAFETY_NEVER) == (snapshot_dir(hub_cache, TINY_SAFETY_NEVER), True)
    with pytest.raises(DownloadError, match=r"^the safety model \(SAFETY_MODEL\) tiny-org/absent is not completely"):
        fetch_classifier("tiny-org/absent")


# ----- in the model service -------------------------------------------------------------------------


def test_the_resident_service_checks_every_job_in_one_batch_on_its_worker_thread(loaded_service):
    safety = loaded_service.safety_checker
    assert safety is not None and safety.model_id == TINY_SAFETY_NEVER
    assert {parameter.device for parameter in safety.model.parameters()} == {loaded_service.device}
    calls = []
    pixel_values: list[torch.Tensor] = []

    def record(_module, _args, kwargs, _output):
        batch = kwargs["pixel_values"].shape[0]
        calls.append((threading.current_thread().name, batch, torch.is_inference_mode_enabled()))
        pixel_values.append(kwargs["pixel_values"].clone())

    hook = safety.model.register_forward_hook(record, with_kwargs=True)
    try:
        result = loaded_service.generate(request(count=3))
    finally:
        hook.remove()
    assert len(calls) == 1  # one batched forward for the job's three images
    thread, batch, inference_mode = calls[0]
    assert thread.startswith("zimage-gpu") and batch == 3 and inference_mode
    assert result.safety_checked and result.safety_threshold == 0.5
    assert len(result.nsfw_scores) == 3 and all(score is not None and score < 1e-9 for score in result.nsfw_scores)
    assert result.flagged == [False, False, False]
    assert 0 < result.safety_seconds < result.seconds
    # The check read the decoded tensors, preprocessed with torch: exactly what that gives for the pictures saved.
    assert safety.device_preprocessing is not None
    expected = torch.cat([safety.device_preprocessing(as_tensor(image)) for image in result.images])
    assert torch.equal(pixel_values[0], expected)


def service_with(tmp_path: Path, hub: Path = HUB_CACHE, **env: str) -> PipelineService:
    return PipelineService(Settings.from_env(tiny_env(tmp_path, hub, **env)))


@pytest.mark.parametrize(
    ("model", "threshold", "flagged"),
    [
        (TINY_SAFETY_ALWAYS, "0.5", True),
        (TINY_SAFETY_ALWAYS, "1.0", True),
        (TINY_SAFETY_HALF, "0.5", True),
        (TINY_SAFETY_HALF, "0.51", False),
        (TINY_SAFETY_NEVER, "0.0", True),
    ],
)
def test_the_threshold_decides_what_is_flagged(hub_cache, tmp_path, model, threshold, flagged):
    service = service_with(tmp_path, SAFETY_MODEL=model, SAFETY_THRESHOLD=threshold)
    try:
        service.load(warm_up=False)
        result = service.generate(request(count=2))
    finally:
        service.close()
    assert result.flagged == [flagged, flagged]
    assert len(result.images) == 2


def test_with_the_check_off_nothing_is_loaded_or_flagged(hub_cache, tmp_path):
    service = service_with(tmp_path, SAFETY_MODEL="")
    try:
        service.load(warm_up=False)
        result = service.generate(request(count=2))
    finally:
        service.close()
    assert service.safety_checker is None
    assert not result.safety_checked and result.flagged == [False, False] and result.nsfw_scores == [None, None]


def test_a_failed_check_flags_the_images_and_the_job_goes_on(hub_cache, tmp_path, caplog):
    service = service_with(tmp_path, SAFETY_MODEL=TINY_SAFETY_NAN)
    try:
        # Without the warm-up (as `zimage-bot generate` loads): the broken classifier is only met in the job.
        service.load(warm_up=False)
        with caplog.at_level(logging.ERROR, logger="bot.model.safety"):
            result = service.generate(request(count=2))
        assert result.nsfw_scores == [None, None] and result.flagged == [True, True]
        assert len(result.images) == 2 and "fail closed" in caplog.text
    finally:
        service.close()
    # With the warm-up, as `zimage-bot run` loads, it stops start-up instead.
    service = service_with(tmp_path, SAFETY_MODEL=TINY_SAFETY_NAN)
    with pytest.raises(ModelLoadError, match="gives no usable score"):
        service.load(warm_up=True)
    service.close()


# ----- the check on the decoded tensor, on the device -----------------------------------------------

WIDE = ImageSize(96, 64)


def as_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL picture as the pipeline's tensors are: (C, H, W), values in [0, 1]."""
    return torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float() / 255


def pipeline_output(service: PipelineService, request: GenerationRequest, seed: int, output_type: str):
    """What the resident pipeline itself returns for one image of `request`, called as the service calls it."""

    def run(pipe):
        arguments: dict = dict(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            height=request.size.height,
            width=request.size.width,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            output_type=output_type,
        )
        if request.source_image is None:
            return pipe(**arguments).images[0]
        arguments.update(image=load_source(request.source_image, request.size), strength=request.strength)
        return image_to_image_pipeline(pipe)(**arguments).images[0]

    return service.call_on_worker(run)


def to_pil(decoded: torch.Tensor) -> Image.Image:
    return VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(decoded[None]))[0]


def test_the_pictures_are_the_pipelines_own_pil_output_pixel_for_pixel(loaded_service, tmp_path):
    x = np.linspace(0, 255, 64, dtype=np.uint8)[None, :].repeat(64, 0)
    source = save_input(Image.fromarray(np.stack([x, x.T, 255 - x], axis=-1)), tmp_path)
    text = GenerationRequest("a red fox in the snow", WIDE, 2, seed=11, count=2)
    picture = GenerationRequest(
        "a lighthouse", WIDE, 4, seed=5, source_image=str(source.path), source_sha256=source.sha256, strength=0.6
    )
    for request in (text, picture):
        result = loaded_service.generate(request)
        for image, seed in zip(result.images, request.seeds(), strict=True):
            expected = pipeline_output(loaded_service, request, seed, "pil")
            assert (image.mode, image.size) == (expected.mode, expected.size) == ("RGB", (96, 64))
            assert np.array_equal(np.asarray(image), np.asarray(expected))
            assert np.asarray(image).std() > 5  # a picture, not a flat colour


MEAN_STD_05 = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
PROCESSORS = {
    # Falconsai/nsfw_image_detection's form.
    "height and width": (ViTImageProcessorPil(size={"height": 32, "width": 32}, **MEAN_STD_05), (32, 32)),
    # CLIP's form: the short side resized, then a centre crop; bicubic, per-channel means.
    "shortest edge, crop, bicubic": (
        ViTImageProcessorPil(
            size={"shortest_edge": 40},
            do_center_crop=True,
            crop_size={"height": 32, "width": 32},
            resample=3,
            image_mean=[0.48, 0.46, 0.41],
            image_std=[0.27, 0.26, 0.28],
        ),
        (32, 32),
    ),
    "shortest edge alone": (ViTImageProcessorPil(size={"shortest_edge": 40}, **MEAN_STD_05), (40, 60)),
}


@pytest.mark.parametrize(("processor", "shape"), PROCESSORS.values(), ids=PROCESSORS.keys())
def test_on_the_device_the_pixel_values_are_the_processors_on_generated_pictures(loaded_service, processor, shape):
    preprocessing = matching_preprocessing(processor, "tiny-org/any")
    assert preprocessing is not None and preprocessing.scale is not None and preprocessing.std is not None
    level = preprocessing.scale / min(preprocessing.std)  # one 8-bit grey level in pixel values
    request = GenerationRequest("a red fox in the snow", WIDE, 2, seed=0)
    for seed in range(3):
        decoded = pipeline_output(loaded_service, request, seed, "pt")
        assert decoded.shape == (3, 64, 96) and decoded.min() >= 0.0 and decoded.max() <= 1.0
        expected = processor(images=[to_pil(decoded)], return_tensors="pt")["pixel_values"]
        got = preprocessing(decoded)
        assert got.dtype == torch.float32 and got.shape == expected.shape == (1, 3, *shape)
        levels = (got - expected).abs() / level
        # PIL's fixed-point filter weights move a rare value by one level; nothing more.
        assert levels.max() < 1.001 and (levels > 0.5).float().mean() < 0.02


@pytest.fixture(scope="module")
def image_sensitive_checker(tmp_path_factory) -> SafetyChecker:
    """A tiny ViT whose head keeps random weights, scaled up: every picture gets its own score."""
    folder = tmp_path_factory.mktemp("sensitive-classifier")
    tiny = dict(image_size=32, patch_size=8, hidden_size=16, layers=1, heads=2, intermediate_size=32)
    save_vit_classifier(folder, ("normal", "nsfw"), **tiny)
    sensitive = SafetyChecker.load("tiny-org/sensitive", folder, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        sensitive.model.classifier.weight.mul_(100)
    return sensitive


def test_on_the_device_the_scores_are_the_processors_on_generated_pictures(loaded_service, image_sensitive_checker):
    request = GenerationRequest("a red fox in the snow", WIDE, 2, seed=0)
    decoded = [pipeline_output(loaded_service, request, seed, "pt") for seed in range(6)]
    pictures = [to_pil(tensor) for tensor in decoded]
    on_device = image_sensitive_checker.scores(pictures, decoded)
    with_processor = image_sensitive_checker.scores(pictures)
    assert None not in on_device and None not in with_processor

    def logit(score):
        return math.log(score) - math.log1p(-score)

    logits = [logit(score) for score in with_processor]
    assert max(logits) - min(logits) > 0.2  # the pictures get different scores: the comparison means something
    assert max(abs(logit(a) - logit(b)) for a, b in zip(on_device, with_processor, strict=True)) < 0.02


def test_on_the_device_a_failure_on_one_image_flags_that_image_only(hub_cache, caplog):
    half = checker(TINY_SAFETY_HALF)
    assert half.device_preprocessing is not None
    pictures = [Image.new("RGB", (96, 64))] * 3
    # The second tensor has four channels: normalising it with three means fails, on the device only
    # (its PIL picture is fine, so a flagged image here shows the tensors were what was checked).
    decoded = [torch.rand(3, 64, 96), torch.rand(4, 64, 96), torch.rand(1, 3, 64, 96)]
    with caplog.at_level(logging.ERROR, logger="bot.model.safety"):
        assert half.scores(pictures, decoded) == [0.5, None, 0.5]
    assert "the safety check failed on image 2; it is flagged (fail closed)" in caplog.text
    assert half.scores(pictures[:1], decoded[1:2]) == [None]
    with pytest.raises(ValueError, match="3 image"):
        half.scores(pictures, decoded[:2])
    broken = checker(TINY_SAFETY_NAN)
    with caplog.at_level(logging.ERROR, logger="bot.model.safety"):
        assert broken.scores(pictures[:2], decoded[::2]) == [None, None]


def test_a_processor_the_device_does_not_reproduce_keeps_the_processor(hub_cache, caplog):
    model = checker(TINY_SAFETY_HALF).model
    lanczos = ViTImageProcessorPil(size={"height": 32, "width": 32}, resample=1)
    with caplog.at_level(logging.WARNING, logger="bot.model.safety"):
        kept = SafetyChecker("tiny-org/lanczos", model, lanczos, 1, torch.device("cpu"), torch.float32)
    assert kept.device_preprocessing is None
    assert "not reproduced on the device (its resampling filter 1 is neither bilinear nor bicubic)" in caplog.text
    # The tensor could not be checked on the device (four channels): the PIL picture is what is checked.
    assert kept.scores([Image.new("RGB", (96, 64))], [torch.rand(4, 64, 96)]) == [0.5]
    # Steps that read as known but mean something else (ConvNeXt resizes by its crop_pct, then crops) are
    # caught by the comparison on the test picture.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bot.model.safety"):
        assert matching_preprocessing(ConvNextImageProcessorPil(size={"shortest_edge": 32}), "tiny-org/cnx") is None
    assert "it gives (1, 3, 32, 32) where torch gives (1, 3, 37, 32)" in caplog.text
    for size, reason in (
        ({"shortest_edge": 32, "longest_edge": 64}, "neither height and width nor shortest_edge alone"),
        ({"max_height": 32, "max_width": 32}, "neither height and width nor shortest_edge alone"),
    ):
        with pytest.raises(ValueError, match=reason):
            DevicePreprocessing.of(ViTImageProcessorPil(size=size))


# ----- start-up errors, banner, cache-check and download, in their own process ------------------------


def test_a_safety_model_missing_offline_stops_start_up_in_one_line(hub_cache, tmp_path):
    env = tiny_env(tmp_path, hub_cache, SAFETY_MODEL="tiny-org/not-downloaded", DISCORD_TOKEN="x.y.z")
    result = zimage_bot(["run"], env, tmp_path)
    assert result.returncode == 1
    assert error_lines(result.stderr)[-1] == (
        "zimage-bot: the safety model (SAFETY_MODEL) tiny-org/not-downloaded is not completely in the cache and "
        "HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE (or run `zimage-bot download` on a machine with internet access)"
    )
    assert "Traceback" not in result.stderr and "model ready" not in result.stderr
    assert "loaded in" not in result.stderr  # it stopped before loading the pipeline


def test_a_safety_model_without_nsfw_label_stops_start_up_in_one_line(hub_cache, tmp_path):
    env = tiny_env(tmp_path, hub_cache, SAFETY_MODEL=TINY_NO_NSFW_LABEL)
    result = zimage_bot(["generate", "a cat"], env, tmp_path)
    assert result.returncode == 1
    assert error_lines(result.stderr)[-1].startswith(
        f"zimage-bot: SAFETY_MODEL={TINY_NO_NSFW_LABEL} has no label named nsfw (its labels: drawing, photo)"
    )
    assert "Traceback" not in result.stderr


def test_generate_says_when_the_image_was_flagged(hub_cache, tmp_path):
    env = tiny_env(tmp_path, hub_cache, SAFETY_MODEL=TINY_SAFETY_ALWAYS)
    result = zimage_bot(["generate", "a cat", "--out", str(tmp_path / "cat.png")], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the safety check flagged this image (nsfw 1.00)" in result.stderr
    assert (tmp_path / "cat.png").is_file()  # a local tool: the operator's own file is written anyway


def test_the_banner_names_the_safety_model(hub_cache, tmp_path):
    result = zimage_bot(
        ["generate", "a cat", "--out", str(tmp_path / "cat.png")], tiny_env(tmp_path, hub_cache), tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert f"zimage-bot: safety check {TINY_SAFETY_NEVER}, threshold 0.5" in error_lines(result.stderr)
    assert f"safety model {TINY_SAFETY_NEVER} loaded in" in result.stderr
    assert "flagged" not in result.stderr


def test_cache_check_reports_both_models_and_fails_for_either(own_hub_cache, tmp_path):
    env = tiny_env(tmp_path, own_hub_cache)
    complete = zimage_bot(["cache-check"], env, tmp_path)
    assert complete.returncode == 0, complete.stderr
    assert f"Model:        {TINY_REPO_ID} @ main" in complete.stdout
    assert f"Safety model: {TINY_SAFETY_NEVER} @ main" in complete.stdout
    assert complete.stdout.count("Complete:") == 2 and "INCOMPLETE" not in complete.stdout

    (snapshot_dir(own_hub_cache, TINY_SAFETY_NEVER) / "preprocessor_config.json").unlink()
    incomplete = zimage_bot(["cache-check"], env, tmp_path)
    assert incomplete.returncode == 1
    assert "Problem:      preprocessor_config.json is missing" in incomplete.stdout
    assert incomplete.stdout.count("Complete:     complete") == 1  # the pipeline is still complete

    off = zimage_bot(["cache-check"], tiny_env(tmp_path, own_hub_cache, SAFETY_MODEL=""), tmp_path)
    assert off.returncode == 0 and "Safety model" not in off.stdout


def test_download_covers_the_safety_model(hub_cache, tmp_path):
    # Offline, a complete cache needs nothing: both reports, exit 0. A missing safety model cannot be fetched.
    done = zimage_bot(["download"], tiny_env(tmp_path, hub_cache), tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"Safety model: {TINY_SAFETY_NEVER} @ main" in done.stdout and done.stdout.count("Complete:") == 2
    missing = zimage_bot(["download"], tiny_env(tmp_path, hub_cache, SAFETY_MODEL="tiny-org/not-there"), tmp_path)
    assert missing.returncode == 1
    assert error_lines(missing.stderr) == [
        "zimage-bot: the safety model (SAFETY_MODEL) tiny-org/not-there is not completely in the cache and "
        "HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE (or run `zimage-bot download` on a machine with internet access)"
    ]


def test_the_classifier_cache_report(own_hub_cache):
    report = inspect_cache(TINY_SAFETY_NEVER, cache_root=own_hub_cache, kind=CLASSIFIER)
    assert report.complete and report.file_count == 3, report.problems
    assert ("Safety model", f"{TINY_SAFETY_NEVER} @ main") in report.rows()
    blob_path_of(own_hub_cache, TINY_SAFETY_NEVER, "model.safetensors").unlink()
    broken = inspect_cache(TINY_SAFETY_NEVER, cache_root=own_hub_cache, kind=CLASSIFIER)
    assert not broken.complete and broken.problems == ["model.safetensors is missing"]
    # A pipeline's rules do not apply to a classifier, nor the other way round.
    assert not inspect_cache(TINY_SAFETY_NEVER, cache_root=own_hub_cache).complete
    assert not inspect_cache(TINY_REPO_ID, cache_root=own_hub_cache, kind=CLASSIFIER).complete


# ----- Discord: /status and /cache-check ------------------------------------------------------------


async def test_status_shows_the_safety_check(start_bot, discord_api):
    await start_bot()
    message = await reply_text(discord_api, await discord_api.invoke("status", {}))
    fields = {field["name"]: field["value"] for field in message.embeds[0]["fields"]}
    assert fields["Safety check"] == f"{TINY_SAFETY_NEVER}, threshold 0.5"


async def test_cache_check_reports_the_safety_model_too(start_bot, discord_api):
    await start_bot()
    admin = discord_api.make_user("owner", id=ADMIN_ID)
    message = await reply_text(discord_api, await discord_api.invoke("cache-check", {}, user=admin))
    assert [embed["title"] for embed in message.embeds] == ["Model cache: complete", "Safety model cache: complete"]
    fields = {field["name"]: field["value"] for field in message.embeds[1]["fields"]}
    assert fields["Safety model"] == f"{TINY_SAFETY_NEVER} @ main" and fields["Files"] == "3"
