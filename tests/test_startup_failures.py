"""Start-up failures are one clear line (or a warning and a fallback), never a traceback."""

from __future__ import annotations

import signal

import pytest
import torch

from bot.model.pipeline_service import ModelLoadError, PipelineService, ServiceState
from bot.settings import Settings
from conftest import tiny_env
from test_generation_cog import imagine
from test_restart_recovery import GATEWAY_UP, MODEL_READY, launch  # noqa: F401 (launch is a fixture)

COMPILE_FAILED = "compiling the transformer failed"


async def test_a_compiler_failure_during_warm_up_falls_back_to_eager_and_the_bot_serves(launch, discord_api):  # noqa: F811
    # A real compiler failure: inductor's CPU code generation needs a C++ compiler, and CXX names none.
    bot = await launch(COMPILE="1", CXX="/nonexistent/g++")
    await bot.ready(300)
    warnings = [line for _, line in bot.lines if COMPILE_FAILED in line]
    assert len(warnings) == 1, bot.tail()
    assert "WARNING" in warnings[0] and "InvalidCxxCompiler" in warnings[0] and "COMPILE=0" in warnings[0]
    assert "Traceback" not in bot.stderr
    assert bot.line_time(COMPILE_FAILED) < bot.line_time(MODEL_READY) < bot.line_time(GATEWAY_UP)
    interaction = await imagine(discord_api, "a cat after the fallback", None, seed=3)
    await bot.until(lambda: interaction.original is not None and interaction.original.attachments, 120, "the image")
    bot.terminate()
    assert await bot.exit_status() == 0


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA GPU runs out of memory for real")


@needs_cuda
@pytest.mark.parametrize(
    ("offload", "advice"),
    [("none", "set OFFLOAD=model"), ("model", "set OFFLOAD=sequential"), ("sequential", "a GPU with more memory")],
)
def test_running_out_of_gpu_memory_while_loading_says_which_offload_to_use(tmp_path, hub_cache, offload, advice):
    settings = Settings.from_env(tiny_env(tmp_path, hub_cache, DEVICE="cuda", OFFLOAD=offload, COMPILE="0"))
    service = PipelineService(settings)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1e-7)  # a GPU far too small for even the tiny model
    try:
        with pytest.raises(ModelLoadError) as caught:
            service.load()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        service.close()
    message = str(caught.value)
    assert message.startswith("the GPU (") and "ran out of memory while loading the model" in message
    assert f"with OFFLOAD={offload}: " in message and advice in message and "\n" not in message
    assert service.state is ServiceState.CLOSED


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
async def test_a_stop_while_the_model_loads_is_a_clean_exit_without_a_traceback(launch, discord_api, stop):  # noqa: F811
    bot = await launch()
    # The safety classifier loads first; the pipeline and its warm-up take seconds after it.
    await bot.until(lambda: bot.line_time("safety model"), 120, "the start of loading")
    bot.process.send_signal(getattr(signal, stop))
    assert await bot.exit_status() == 0
    assert "zimage-bot: stopped (before connecting to Discord)" in bot.stderr, bot.tail()
    assert "Traceback" not in bot.stderr and MODEL_READY not in bot.stderr
    assert discord_api.identify_count == 0


def test_torch_compile_refusing_the_blocks_falls_back_to_eager_and_generates(tmp_path, hub_cache, monkeypatch, caplog):
    from bot.generation import GenerationRequest
    from bot.model import pipeline_service

    # A real refusal by torch.compile, raised while the blocks are wrapped (before any warm-up call).
    monkeypatch.setitem(pipeline_service.COMPILE_OPTIONS, "mode", "no-such-mode")
    settings = Settings.from_env(tiny_env(tmp_path, hub_cache, COMPILE="1", SAFETY_MODEL="", ENHANCER="off"))
    service = PipelineService(settings)
    try:
        service.load(warm_up=True)
        warnings = [record for record in caplog.records if COMPILE_FAILED in record.getMessage()]
        assert len(warnings) == 1 and "no-such-mode" in warnings[0].getMessage()
        assert service.state is ServiceState.READY and service.compile is False
        result = service.generate(GenerationRequest("a cat", settings.default_size, 2, seed=1))
        assert result.images[0].size == (settings.default_size.width, settings.default_size.height)
    finally:
        service.close()
