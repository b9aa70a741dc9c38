"""Image-to-image, Upscale and styles on the resident tiny pipeline (the real diffusers pipelines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.generation import (
    CancelToken,
    GenerationCancelled,
    GenerationRequest,
    InvalidRequest,
    StepProgress,
    image_to_image,
    parameters_text,
)
from bot.image_input import save_input, source_of_file, upscale_size
from bot.image_size import ImageSize
from bot.model.pipeline_service import ModelLoadError, PipelineService
from bot.settings import Settings
from conftest import tiny_env
from tiny_lora import build_tiny_lora, install_lora_repo

SMALL = ImageSize(64, 64)


def picture(tmp_path: Path) -> tuple[str, str]:
    x = np.linspace(0, 255, 64, dtype=np.uint8)[None, :].repeat(64, 0)
    image = Image.fromarray(np.stack([x, x.T, 255 - x], axis=-1))
    saved = save_input(image, tmp_path)
    return str(saved.path), saved.sha256


def request(source: str | None = None, **overrides) -> GenerationRequest:
    values: dict = dict(prompt="a red fox in the snow", size=SMALL, steps=8, seed=7)
    if source is not None:
        values.update(source_image=source, source_sha256="ab" * 32, strength=0.6)
    values.update(overrides)
    return GenerationRequest(**values)


def pixels(result, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index]).astype(int)


def test_image_to_image_runs_on_the_resident_components_without_copying_or_casting(loaded_service, tmp_path):
    pipe = loaded_service._pipe
    img2img = loaded_service._img2img
    parameters_before = {
        id(p) for module in pipe.components.values() if hasattr(module, "parameters") for p in module.parameters()
    }
    dtype_before = pipe.transformer.dtype
    source, _ = picture(tmp_path)
    loaded_service.generate(request(source))
    for name, component in pipe.components.items():
        assert img2img.components[name] is component, name
    parameters_after = {
        id(p) for module in pipe.components.values() if hasattr(module, "parameters") for p in module.parameters()
    }
    assert parameters_after == parameters_before  # no new parameters anywhere
    assert pipe.transformer.dtype == dtype_before


def test_a_bf16_model_stays_bf16(tmp_path, hub_cache):
    # diffusers' from_pipe would cast the shared modules to float32 in place; ours must not.
    service = PipelineService(Settings.from_env(tiny_env(tmp_path, hub_cache, DTYPE="bfloat16")))
    try:
        service.load(warm_up=False)
        source, _ = picture(tmp_path)
        service.generate(request(source, steps=2))
        assert {p.dtype for p in service._pipe.transformer.parameters()} == {torch.bfloat16}
        assert service._pipe.vae.dtype == torch.bfloat16
    finally:
        service.close()


def test_same_seed_same_pixels_and_strength_sets_the_steps_run(loaded_service, tmp_path):
    source, _ = picture(tmp_path)
    seen: list[StepProgress] = []
    first = loaded_service.generate(request(source, strength=0.6), progress=seen.append)
    again = loaded_service.generate(request(source, strength=0.6))
    other_seed = loaded_service.generate(request(source, strength=0.6, seed=8))
    assert first.images[0].size == (64, 64)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other_seed))
    # 8 steps at strength 0.6: the last 5 of the schedule run, as diffusers rounds it.
    assert [(step.step, step.total) for step in seen] == [(n, 5) for n in range(1, 6)]
    seen.clear()
    loaded_service.generate(request(source, strength=0.25), progress=seen.append)
    assert [step.total for step in seen] == [2, 2]


def test_the_picture_matters_below_strength_1_and_not_at_1(loaded_service, tmp_path):
    # At strength 1 the start is pure noise (sigma 1), whatever the picture; below it the picture shows.
    first, _ = picture(tmp_path)
    other = str(save_input(Image.new("RGB", (64, 64), (250, 20, 20)), tmp_path).path)
    for strength, same in ((1.0, True), (0.3, False)):
        a = pixels(loaded_service.generate(request(first, strength=strength)))
        b = pixels(loaded_service.generate(request(other, strength=strength)))
        assert np.array_equal(a, b) is same, strength


def test_cancelling_image_to_image(loaded_service, tmp_path):
    source, _ = picture(tmp_path)
    cancel = CancelToken()

    def on_step(step: StepProgress) -> None:
        if step.step == 1:
            cancel.cancel()

    with pytest.raises(GenerationCancelled):
        loaded_service.generate(request(source, strength=1.0), progress=on_step, cancel=cancel)


def test_upscale_doubles_the_size_from_a_result_file(loaded_service, tmp_path):
    made = loaded_service.generate(request(steps=2))
    result_file = tmp_path / "result.png"
    made.images[0].save(result_file)
    source = source_of_file(result_file)
    upscale = image_to_image(request(steps=2), str(source.path), source.sha256, strength=0.35, size=upscale_size(SMALL))
    seen: list[StepProgress] = []
    result = loaded_service.generate(upscale, progress=seen.append)
    assert result.images[0].size == (128, 128)
    assert seen and seen[-1].total == 1  # 2 steps at 0.35 redraw the last one
    text = parameters_text(result.request, result.seeds[0], "m")
    assert f"Denoising strength: 0.35, Init image hash: {source.sha256[:10]}" in text
    assert "Size: 128x128" in text


def test_retention_removed_files_are_refused_clearly(tmp_path):
    with pytest.raises(InvalidRequest, match="removed"):
        source_of_file(tmp_path / "gone.png")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strength": 0.01}, "Strength must be from 0.05"),
        ({"strength": 1.5}, "Strength must be from 0.05"),
        ({"source_image": None}, "Strength only applies when you start from a picture"),
        ({"style": "nope"}, "Style 'nope' is not offered"),
        ({"style_weight": 1.0}, "A style weight needs a style"),
    ],
)
def test_bad_image_to_image_requests_are_refused_before_the_gpu(loaded_service, tmp_path, changes, message):
    source, _ = picture(tmp_path)
    with pytest.raises(InvalidRequest, match=message):
        loaded_service.submit(request(source, **changes))


# ----- styles --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_files(hub_cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    local = build_tiny_lora(hub_cache, folder / "ink", seed=1)
    install_lora_repo(hub_cache, "tiny-org/tiny-lora", seed=2)
    return local


def styled_service(tmp_path, hub_cache, loras: str) -> PipelineService:
    return PipelineService(Settings.from_env(tiny_env(tmp_path, hub_cache, LORAS=loras)))


def test_styles_from_a_local_file_and_the_cache_switch_without_reloading(tmp_path, hub_cache, lora_files):
    local = tmp_path / "ink.safetensors"
    local.write_bytes(lora_files.read_bytes())
    service = styled_service(tmp_path, hub_cache, f"ink={local}:0.8,anime=tiny-org/tiny-lora")
    try:
        service.load(warm_up=True)
        assert service.styles.names == ("ink", "anime")
        transformer = service._pipe.transformer
        tensors = {name: p.data_ptr() for name, p in transformer.named_parameters()}
        local.unlink()  # switching must not read the file again

        def make(**changes):
            return pixels(service.generate(request(steps=2, **changes)))

        plain = make()
        ink = make(style="ink")
        anime = make(style="anime")
        ink_again = make(style="ink")
        ink_strong = make(style="ink", style_weight=1.6)
        plain_again = make()
        assert np.array_equal(plain, plain_again)
        assert np.array_equal(ink, ink_again)
        assert not np.array_equal(plain, ink) and not np.array_equal(plain, anime)
        assert not np.array_equal(ink, anime) and not np.array_equal(ink, ink_strong)
        assert {name: p.data_ptr() for name, p in transformer.named_parameters()} == tensors
        # The weight LORAS gives is recorded, so the picture can be made again.
        result = service.generate(request(steps=2, style="ink"))
        assert "Lora: ink:0.8" in parameters_text(result.request, result.seeds[0], "m")
    finally:
        service.close()


def test_a_style_missing_from_the_cache_stops_start_up_naming_it(tmp_path, hub_cache):
    service = styled_service(tmp_path, hub_cache, "ghost=tiny-org/not-downloaded")
    try:
        with pytest.raises(ModelLoadError, match=r"style 'ghost' .* is not in the Hugging Face cache"):
            service.load(warm_up=False)
    finally:
        service.close()


def test_a_style_for_another_model_stops_start_up_naming_it(tmp_path, hub_cache):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file(
        {
            "transformer.not_a_layer.lora_A.weight": torch.zeros(4, 32),
            "transformer.not_a_layer.lora_B.weight": torch.zeros(32, 4),
        },
        str(other),
    )
    service = styled_service(tmp_path, hub_cache, f"alien={other}")
    try:
        with pytest.raises(ModelLoadError, match=r"style 'alien' .* does not fit this model"):
            service.load(warm_up=False)
    finally:
        service.close()


def test_the_hot_swap_slot_used_with_compilation_draws_what_the_adapters_draw(hub_cache, lora_files, tmp_path):
    # Compiled services keep every LoRA in one slot (ranks padded, scales as tensors, weights copied
    # in place on a switch); every style, weight and "no style" must give the adapters' pictures.
    from diffusers import ZImagePipeline

    from bot.model.styles import StyleBank
    from bot.settings import LoraSource
    from tiny_model import TINY_REPO_ID

    wider = build_tiny_lora(hub_cache, tmp_path / "wide", seed=3, rank=8)
    loras = (LoraSource("ink", 0.8, path=lora_files), LoraSource("wide", 1.0, path=wider))
    jobs = [(None, None), ("ink", None), ("wide", None), ("ink", 1.5), ("wide", 0.5), (None, None)]
    pictures = {}
    for hotswap in (False, True):
        pipe = ZImagePipeline.from_pretrained(TINY_REPO_ID, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        bank = StyleBank(loras)
        bank.load(pipe, hotswap=hotswap)
        pictures[hotswap] = []
        for name, weight in jobs:
            bank.apply(pipe, name, weight)
            image = pipe(
                "a fox",
                height=64,
                width=64,
                num_inference_steps=2,
                guidance_scale=0.0,
                generator=torch.Generator().manual_seed(3),
            ).images[0]
            pictures[hotswap].append(np.asarray(image).astype(int))
    for (name, weight), adapters, slot in zip(jobs, pictures[False], pictures[True], strict=True):
        assert np.abs(adapters - slot).max() <= 1, (name, weight)
    assert not np.array_equal(pictures[True][1], pictures[True][2])


def test_running_out_of_memory_in_the_vae_tries_again_tiled(loaded_service, tmp_path):
    source, _ = picture(tmp_path)
    expected = pixels(loaded_service.generate(request(source, strength=0.5)))
    vae = loaded_service._pipe.vae
    tiling_seen: list[bool] = []

    def short_of_memory_once(module, args):
        tiling_seen.append(vae.use_tiling)
        if len(tiling_seen) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (as a GPU would raise it)")

    hook = vae.decoder.register_forward_pre_hook(short_of_memory_once)
    try:
        again = pixels(loaded_service.generate(request(source, strength=0.5)))
    finally:
        hook.remove()
    assert tiling_seen == [False, True]
    assert not vae.use_tiling  # only for that call
    assert np.abs(again - expected).max() <= 1  # same seed, same picture


def test_a_job_whose_picture_was_removed_fails_clearly(loaded_service, tmp_path):
    from bot.generation import GenerationError

    gone = tmp_path / "gone.png"
    with pytest.raises(GenerationError, match="starts from was removed"):
        loaded_service.generate(request(str(gone)))
