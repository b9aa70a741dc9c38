"""Saved PNGs: parameters embedded, names that sort by time and never collide."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from PIL import Image

from bot.generation import GenerationRequest, parameters_text
from bot.image_files import read_parameters, save_png, time_stem, write_new_file
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
