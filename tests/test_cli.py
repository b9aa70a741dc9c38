"""`zimage-bot generate` end to end, in a fresh process, on the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from bot.image_files import read_parameters
from conftest import TINY_REPO_ID, tiny_env


def zimage_bot(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180
    )


def test_generate_writes_a_png_with_its_parameters(hub_cache, tmp_path):
    env = tiny_env(tmp_path, hub_cache)
    result = zimage_bot(
        ["generate", "a lighthouse, 35mm", "--size", "96x64", "--seed", "42", "--steps", "3"], env, tmp_path
    )
    assert result.returncode == 0, result.stderr
    path = result.stdout.strip()
    assert path.startswith(str(tmp_path / "outputs")) and path.endswith("_42.png")
    with Image.open(path) as image:
        assert image.size == (96, 64)
    assert read_parameters(Path(path).read_bytes()) == (
        "a lighthouse, 35mm\n"
        f"Steps: 3, Sampler: FlowMatchEuler, CFG scale: 0, Seed: 42, Size: 96x64, Model: {TINY_REPO_ID}"
    )
    # The banner an operator needs, and the ready line with the load time.
    for expected in (
        f"model {TINY_REPO_ID}",
        f"Hugging Face cache {hub_cache}",
        "outputs saved to",
        "device cpu",
        "model ready in",
    ):
        assert expected in result.stderr


def test_generate_to_a_chosen_file_with_a_negative_prompt(hub_cache, tmp_path):
    out = tmp_path / "art" / "cat.png"
    result = zimage_bot(
        ["generate", "a cat", "--seed", "1", "--out", str(out), "--negative-prompt", "dogs", "--guidance", "2"],
        tiny_env(tmp_path, hub_cache),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert read_parameters(out.read_bytes()).splitlines() == [
        "a cat",
        "Negative prompt: dogs",
        f"Steps: 2, Sampler: FlowMatchEuler, CFG scale: 2, Seed: 1, Size: 64x64, Model: {TINY_REPO_ID}",
    ]


def test_generate_rejects_bad_input_without_loading(hub_cache, tmp_path):
    bad_size = zimage_bot(["generate", "a cat", "--size", "100x100"], tiny_env(tmp_path, hub_cache), tmp_path)
    assert bad_size.returncode == 2
    assert "multiples of 16" in bad_size.stderr
    bad_steps = zimage_bot(["generate", "a cat", "--steps", "99"], tiny_env(tmp_path, hub_cache), tmp_path)
    assert bad_steps.returncode == 2
    assert "Steps must be from 1 to 50 (got 99)" in bad_steps.stderr
    assert "model ready" not in bad_steps.stderr
    assert "Traceback" not in bad_size.stderr + bad_steps.stderr


def test_generate_with_the_model_missing_says_what_to_do(tmp_path):
    result = zimage_bot(["generate", "a cat"], tiny_env(tmp_path, tmp_path / "empty" / "hub"), tmp_path)
    assert result.returncode == 1
    assert "HF_HUB_OFFLINE" in result.stderr and "zimage-bot download" in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_with_enhance_says_what_became_of_the_prompt(hub_cache, tmp_path):
    # The tiny model's random weights write noise: the rewrite is refused and the original drawn.
    env = tiny_env(tmp_path, hub_cache)
    result = zimage_bot(["generate", "a fox", "--size", "64x64", "--seed", "1", "--enhance"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "prompt not enhanced: the enhance" in result.stderr
    assert read_parameters(Path(result.stdout.strip()).read_bytes()).startswith("a fox\nSteps: ")
