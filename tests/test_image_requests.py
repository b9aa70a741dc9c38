"""The plain data of pictures from pictures and styles: validation, parameters text, the job store,
the runner's conversions, LORAS parsing, and cache-check reporting styles."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bot.generation import (
    DEFAULT_STRENGTH,
    GenerationRequest,
    InvalidRequest,
    image_to_image,
    parameters_text,
    validate_request,
)
from bot.image_size import ImageSize
from bot.jobs.runner import new_record, record_to_request
from bot.jobs.store import JobStore
from bot.settings import ConfigError, LoraSource, Settings
from conftest import tiny_env

SHA = "0123456789abcdef" * 4


def request(**overrides) -> GenerationRequest:
    values: dict = dict(prompt="a fox", size=ImageSize(1024, 1024), steps=8, seed=5)
    values.update(overrides)
    return GenerationRequest(**values)


def test_an_image_request_gets_the_documented_default_strength():
    checked = validate_request(request(source_image="in.png", source_sha256=SHA), max_steps=50)
    assert checked.strength == DEFAULT_STRENGTH == 0.6
    assert checked.steps_to_run == 5  # diffusers runs the last int(8 * 0.6) + 1 steps of the schedule
    assert request().steps_to_run == 8


@pytest.mark.parametrize(("strength", "steps", "run"), [(1.0, 8, 8), (0.05, 8, 1), (0.35, 8, 3), (0.5, 1, 1)])
def test_steps_run_follow_strength(strength, steps, run):
    assert request(source_image="x.png", strength=strength, steps=steps).steps_to_run == run


def test_parameters_record_strength_input_hash_and_style():
    text = parameters_text(
        request(source_image="in.png", source_sha256=SHA, strength=0.6, style="ink", style_weight=0.8), 5, "m/z"
    )
    assert text.endswith(
        "Seed: 5, Size: 1024x1024, Model: m/z, Denoising strength: 0.6, Init image hash: 0123456789, Lora: ink:0.8"
    )
    assert "Denoising" not in parameters_text(request(), 5, "m/z")


def test_vary_and_upscale_requests_keep_prompt_and_style():
    parent = request(style="ink", style_weight=1.2, count=4)
    child = image_to_image(replace(parent, seed=99), "out.png", SHA, strength=0.35, size=ImageSize(2048, 2048))
    assert (child.prompt, child.style, child.style_weight, child.seed) == ("a fox", "ink", 1.2, 99)
    assert (child.source_image, child.source_sha256, child.strength, child.count) == ("out.png", SHA, 0.35, 1)
    assert child.size == ImageSize(2048, 2048)


def test_image_fields_survive_the_store_and_a_restart(tmp_path: Path):
    asked = request(source_image="outputs/inputs/x.png", source_sha256=SHA, strength=0.4, style="ink", style_weight=0.7)
    with JobStore(tmp_path / "data") as store:
        stored = store.add(new_record(asked, user_id=1, channel_id=2))
    with JobStore(tmp_path / "data") as store:  # a restart reads the same job back
        again = store.get(stored.id)
    assert record_to_request(again) == asked
    plain = request()
    assert record_to_request(new_record(plain, user_id=1, channel_id=2)) == plain


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ink", "entry 'ink' should look like name=org/repo"),
        ("ink=org", "entry 'ink=org' should look like"),
        ("ink=org/repo/file.bin", "entry 'ink=org/repo/file.bin'"),
        ("ink=org/repo:9", "entry 'ink=org/repo:9'"),
        ("ink=org/a,ink=org/b", "the name 'ink' is used twice"),
        ("bad name=org/a", "entry 'bad name=org/a'"),
    ],
)
def test_malformed_loras_are_refused_naming_the_entry(value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        Settings.from_env({"LORAS": value})
    assert caught.value.variable == "LORAS"


def test_loras_parse_repos_files_and_weights(tmp_path: Path):
    local = tmp_path / "ink.safetensors"
    local.write_bytes(b"x")
    settings = Settings.from_env({"LORAS": f"anime=org/anime, sketch=org/pack/sub/sketch.safetensors:0.6, ink={local}"})
    assert settings.loras == (
        LoraSource("anime", 1.0, repo_id="org/anime"),
        LoraSource("sketch", 0.6, repo_id="org/pack", filename="sub/sketch.safetensors"),
        LoraSource("ink", 1.0, path=local),
    )
    assert Settings.from_env({}).loras == ()


def test_cache_check_reports_each_style_and_fails_for_a_missing_one(hub_cache, tmp_path):
    present = tmp_path / "ink.safetensors"
    present.write_bytes(b"0" * 2048)
    env = tiny_env(tmp_path, hub_cache, LORAS=f"ink={present},ghost=tiny-org/not-downloaded")
    result = subprocess.run(
        [sys.executable, "-m", "bot", "cache-check"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Style ink: {present} -> {present}" in result.stdout
    assert "Style ghost: MISSING" in result.stdout and "zimage-bot download" in result.stdout


def test_strength_without_a_picture_is_refused():
    with pytest.raises(InvalidRequest, match="Strength only applies"):
        validate_request(request(strength=0.5), max_steps=50)
