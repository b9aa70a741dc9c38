"""Saved PNGs: parameters embedded, names that sort by time and never collide."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import ExifTags, Image

from bot.generation import GenerationRequest, parameters_text
from bot.image_files import encode_jpeg, files_for_upload, read_parameters, save_png, time_stem, write_new_file
from bot.image_size import ImageSize


def test_names_sort_by_time():
    start = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    stems = [time_stem(seed, start + timedelta(microseconds=step)) for step, seed in ((0, 9), (1, 1), (10, 5))]
    assert stems == sorted(stems)
    assert stems[0] == "20260102-030405-000006_9"


def test_names_never_collide_even_at_the_same_instant(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda i: write_new_file(tmp_path, "same", ".png", bytes([i])), range(40)))
    assert len(set(paths)) == 40
    assert sorted(path.read_bytes()[0] for path in paths) == list(range(40))


def test_save_png_embeds_parameters(tmp_path):
    request = GenerationRequest("a <@123> cat", ImageSize(64, 64), 8, 77, negative_prompt="blur", guidance=1.5)
    path, data = save_png(Image.new("RGB", (64, 64), "red"), request, 77, "org/model", tmp_path / "out")
    assert path.parent == tmp_path / "out" and path.read_bytes() == data
    assert (
        read_parameters(path)
        == parameters_text(request, 77, "org/model")
        == (
            "a <@123> cat\nNegative prompt: blur\n"
            "Steps: 8, Sampler: FlowMatchEuler, CFG scale: 1.5, Seed: 77, Size: 64x64, Model: org/model"
        )
    )


def user_comment(jpeg: bytes) -> str:
    """Read the EXIF UserComment as image tools do: the 8-byte character code, then the text."""
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG"
        exif = image.getexif()
        raw = exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
        image_exif = image.info["exif"]  # b"Exif\0\0", then the TIFF header
    assert image_exif[6:8] == b"MM"  # UTF-16 in the block's own (big-endian) byte order
    code, text = raw[:8], raw[8:]
    assert code in (b"ASCII\0\0\0", b"UNICODE\0"), code
    return text.decode("ascii" if code.startswith(b"ASCII") else "utf-16-be")


@pytest.mark.parametrize(
    "parameters",
    [
        "a cat\nSteps: 8, Sampler: FlowMatchEuler, CFG scale: 0, Seed: 1, Size: 64x64, Model: org/model",
        "一只猫 in 1990–2000 ✓\nNegative prompt: dogs\nSteps: 8, Seed: 2",
    ],
)
def test_a_jpeg_carries_the_parameters_in_its_exif_user_comment(parameters):
    data = encode_jpeg(Image.new("RGB", (64, 64), "blue"), parameters, quality=80)
    assert data[:3] == b"\xff\xd8\xff"
    assert user_comment(data) == parameters


def test_uploads_under_the_limit_are_the_pngs_themselves(tmp_path):
    request = GenerationRequest("a cat", ImageSize(64, 64), 8, 5)
    path, data = save_png(Image.new("RGB", (64, 64), "red"), request, 5, "org/model", tmp_path)
    assert files_for_upload([path], len(data)) == ([(path.name, data)], False)


def test_uploads_over_the_limit_become_jpegs_with_the_same_parameters(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for seed in (5, 6):
        noise = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
        request = GenerationRequest("noise — 1990–2000", ImageSize(256, 256), 8, seed)
        paths.append(save_png(noise, request, seed, "org/model", tmp_path)[0])
    limit = sum(path.stat().st_size for path in paths) // 3
    uploads, as_jpeg = files_for_upload(paths, limit)
    assert as_jpeg and sum(len(data) for _, data in uploads) <= limit
    assert [name for name, _ in uploads] == [path.with_suffix(".jpg").name for path in paths]
    for (_, data), path in zip(uploads, paths, strict=True):
        assert user_comment(data) == read_parameters(path.read_bytes())
    assert [p.suffix for p in tmp_path.iterdir()] == [".png", ".png"]  # the full PNGs stay


def test_a_chinese_prompt_survives_the_png_parameters_chunk(tmp_path):
    request = GenerationRequest(
        "一张海报，上面写着“你好，世界”", ImageSize(64, 64), 8, 5, negative_prompt="模糊，水印", guidance=0.0
    )
    path, _ = save_png(
        Image.new("RGB", (64, 64), "red"), request, 5, "org/model", tmp_path, prompt_used="一张精美的海报"
    )
    parameters = read_parameters(path)
    assert parameters == parameters_text(request, 5, "org/model", "一张精美的海报")
    assert "一张海报，上面写着“你好，世界”" in parameters and "Negative prompt: 模糊，水印" in parameters
    assert "一张精美的海报" in parameters
