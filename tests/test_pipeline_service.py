"""The resident pipeline on its one worker thread, with the real diffusers ZImagePipeline (tiny model)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from bot.generation import (
    CancelToken,
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    InvalidRequest,
    StepProgress,
)
from bot.image_size import ImageSize
from bot.model.pipeline_service import PipelineService, ServiceState
from conftest import tiny_env

SMALL = ImageSize(64, 64)


def request(**overrides) -> GenerationRequest:
    values = dict(prompt="a red fox in the snow", size=SMALL, steps=2, seed=7)
    values.update(overrides)
    return GenerationRequest(**values)


def pixels(result, index=0):
    return np.asarray(result.images[index])


def test_loads_from_the_cache_and_warms_up(loaded_service):
    report = loaded_service.load_report
    assert loaded_service.state is ServiceState.READY
    assert report.from_cache is True
    assert str(loaded_service.device) == "cpu" and loaded_service.dtype == torch.float32
    assert report.load_seconds > 0 and report.warmup_seconds > 0
    assert loaded_service.estimate_seconds(request()) is not None  # warm-up measured the speed


def test_loading_twice_is_impossible(loaded_service):
    with pytest.raises(RuntimeError, match="already started"):
        loaded_service.load()


def test_same_seed_same_pixels_other_seed_other_pixels(loaded_service):
    first = loaded_service.generate(request(seed=123))
    again = loaded_service.generate(request(seed=123))
    other = loaded_service.generate(request(seed=124))
    assert first.images[0].size == (64, 64)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))
    assert first.seeds == [123]


def test_sizes_and_counts(loaded_service):
    result = loaded_service.generate(request(size=ImageSize(96, 64), count=2, seed=10))
    assert [image.size for image in result.images] == [(96, 64), (96, 64)]
    assert result.seeds == [10, 11]
    # Image i of a batch is the same picture as a single job with its seed.
    single = loaded_service.generate(request(size=ImageSize(96, 64), seed=11))
    assert np.array_equal(pixels(result, 1), pixels(single))


def test_progress_callback_sees_every_step_on_the_worker_thread(loaded_service):
    seen: list[tuple[StepProgress, str]] = []
    loaded_service.generate(
        request(steps=4, count=2), progress=lambda step: seen.append((step, threading.current_thread().name))
    )
    assert [(s.step, s.total, s.image_index) for s, _ in seen] == [
        (1, 4, 0),
        (2, 4, 0),
        (3, 4, 0),
        (4, 4, 0),
        (1, 4, 1),
        (2, 4, 1),
        (3, 4, 1),
        (4, 4, 1),
    ]
    assert {name for _, name in seen} == {"zimage-gpu_0"}


def test_cancellation_stops_a_running_job_and_the_next_one_runs(loaded_service):
    cancel = CancelToken()
    steps_seen = []

    def on_step(step: StepProgress) -> None:
        steps_seen.append(step.step)
        if step.step == 2:
            cancel.cancel()

    with pytest.raises(GenerationCancelled):
        loaded_service.generate(request(steps=6), progress=on_step, cancel=cancel)
    assert steps_seen == [1, 2]  # stopped right after the step that asked for it
    assert loaded_service.generate(request()).images


def test_a_job_cancelled_while_waiting_never_starts(loaded_service):
    cancel = CancelToken()
    cancel.cancel()
    steps_seen = []
    with pytest.raises(GenerationCancelled, match="before it started"):
        loaded_service.generate(request(), progress=steps_seen.append, cancel=cancel)
    assert steps_seen == []


def test_a_failing_job_does_not_stop_the_worker(loaded_service):
    def explode(step: StepProgress) -> None:
        raise RuntimeError("boom inside the pipeline call")

    with pytest.raises(GenerationError, match="the model failed on this request"):
        loaded_service.generate(request(), progress=explode)
    result = loaded_service.generate(request(seed=5))
    assert len(result.images) == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"size": ImageSize(70, 64)}, "multiples of 16"),
        ({"size": ImageSize(4096, 64)}, "from 64 to 2048"),
        ({"steps": 0}, "Steps must be from 1 to 50"),
        ({"steps": 51}, "Steps must be from 1 to 50"),
        ({"seed": -1}, "Seed must be from 0 to 4294967295"),
        ({"seed": 2**32}, "Seed must be from 0 to 4294967295"),
        ({"prompt": "   "}, "The prompt is empty"),
        ({"prompt": "x" * 1501}, "shorten it to at most 1500"),
        ({"count": 5}, "Count must be from 1 to 4"),
        ({"guidance": -1.0}, "Guidance must be from 0"),
    ],
)
def test_invalid_requests_are_rejected_before_the_pipeline(loaded_service, changes, message):
    steps_seen = []
    with pytest.raises(InvalidRequest, match=message):
        loaded_service.submit(request(**changes), progress=steps_seen.append)
    assert steps_seen == []


def test_submit_before_load_is_refused(tiny_settings):
    service = PipelineService(tiny_settings)
    try:
        with pytest.raises(GenerationError, match="not ready"):
            service.submit(request())
    finally:
        service.close()


class ConnectionCounter:
    """A TCP listener standing in for the hub: it counts every connection attempt."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.server.close()


def test_a_cached_model_loads_without_the_offline_flag_and_never_touches_the_network(hub_cache, tmp_path):
    counter = ConnectionCounter()
    try:
        env = tiny_env(tmp_path, hub_cache, HF_ENDPOINT=f"http://127.0.0.1:{counter.port}")
        env.pop("HF_HUB_OFFLINE")
        out = tmp_path / "fox.png"
        result = subprocess.run(
            [sys.executable, "-m", "bot", "generate", "a fox", "--seed", "3", "--out", str(out)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        counter.close()
    assert result.returncode == 0, result.stderr
    assert "(local cache" in result.stderr
    assert counter.connections == 0
    assert out.is_file()


def test_wait_estimates_come_from_what_was_measured(tiny_settings):
    service = PipelineService(tiny_settings)  # its own, so that only this test's jobs are measured
    try:
        service.load(warm_up=False)
        assert service.estimate_seconds(request()) is None  # nothing measured yet: no guess
        size = ImageSize(160, 160)
        result = service.generate(request(size=size, steps=7))
        assert service.estimate_seconds(request(size=size, steps=7)) == pytest.approx(result.seconds)
        assert service.estimate_seconds(request(size=size, steps=7, count=3)) == pytest.approx(3 * result.seconds)
        # Unmeasured work is scaled from the most similar measurement: twice the steps, twice the time.
        assert service.estimate_seconds(request(size=size, steps=14)) == pytest.approx(2 * result.seconds)
        small = service.generate(request(size=ImageSize(64, 64), steps=2))
        # Now the nearest measurement serves: 64x64 at 3 steps is scaled from 64x64 at 2, not from 160x160.
        assert service.estimate_seconds(request(size=ImageSize(64, 64), steps=3)) == pytest.approx(1.5 * small.seconds)
    finally:
        service.close()


@pytest.mark.parametrize(
    ("env", "device", "compiled"),
    [
        ({}, "cuda", True),  # compiled by default where it pays: a resident model on a GPU
        ({}, "cpu", False),
        ({"COMPILE": "1"}, "cpu", True),
        ({"COMPILE": "0"}, "cuda", False),
        ({"OFFLOAD": "model"}, "cuda", False),  # offload hooks cannot be traced by fullgraph compilation
        ({"OFFLOAD": "sequential", "COMPILE": "1"}, "cuda", False),
        ({"OFFLOAD": "model"}, "cpu", False),
    ],
)
def test_when_the_transformer_is_compiled(env, device, compiled):
    import torch

    from bot.model.pipeline_service import _pick_compile
    from bot.settings import Settings

    assert _pick_compile(Settings.from_env(env), torch.device(device)) is compiled


@pytest.mark.parametrize(
    ("dtype", "device", "expected"),
    [
        ("auto", "cuda", "bfloat16"),
        ("auto", "cpu", "float32"),
        ("float32", "cuda", "float32"),
        ("bfloat16", "cpu", "bfloat16"),
    ],
)
def test_dtype_follows_the_device_unless_set(dtype, device, expected):
    import torch

    from bot.model.pipeline_service import _pick_dtype

    assert _pick_dtype(dtype, torch.device(device)) == getattr(torch, expected)


def test_fp8_quantization_runs_the_blocks_in_fp8_and_stays_close(tmp_path, hub_cache, loaded_service):
    from bot.model.fp8 import Fp8Linear
    from bot.settings import Settings

    service = PipelineService(Settings.from_env(tiny_env(tmp_path, hub_cache, QUANTIZE="fp8")))
    try:
        service.load(warm_up=False)
        fp8_layers, block_linears = service.call_on_worker(
            lambda pipe: (
                [m for m in pipe.transformer.modules() if isinstance(m, Fp8Linear)],
                [
                    m
                    for b in pipe.transformer.modules()
                    if type(b).__name__ == "ZImageTransformerBlock"
                    for m in b.modules()
                    if isinstance(m, torch.nn.Linear)
                ],
            )
        )
        # Every block Linear that FP8 matrix products can take (dimensions multiples of 16) was swapped.
        assert fp8_layers and all(m.in_features % 16 or m.out_features % 16 for m in block_linears)
        assert all(layer.weight_fp8.dtype == torch.float8_e4m3fn for layer in fp8_layers)
        quantized = pixels(service.generate(request(seed=21, steps=3))).astype(float)
    finally:
        service.close()
    exact = pixels(loaded_service.generate(request(seed=21, steps=3))).astype(float)
    # The same picture, a little off: far closer than another seed's picture is.
    other = pixels(loaded_service.generate(request(seed=22, steps=3))).astype(float)
    assert 0 < np.abs(quantized - exact).mean() < 0.25 * np.abs(other - exact).mean()
