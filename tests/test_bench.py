"""The GPU benchmark's CPU-testable parts: building the random model, the report, the queue measurement.

The full-size build and the GPU figures need a GPU machine (bench/README.md); here the same code runs
with diffusers' tiny test sizes, and the job runner's overlap of PNG saving with generation is
checked with the real runner on the tiny model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from bench import report
from bench.build_random_model import (
    BENCH_REPO_ID,
    BENCH_SAFETY_REPO_ID,
    FULL_SIZE,
    TINY,
    ModelSpec,
    _split,
    build_random_model,
    repo_folder_name,
)
from bench.measure import run_queue
from bot.generation import GenerationRequest
from bot.image_size import ImageSize
from bot.jobs import runner as job_runner
from bot.model.cache_report import inspect_cache
from conftest import PROJECT_ROOT


def tensor_dtypes(folder: Path) -> set[str]:
    dtypes = set()
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as file:
            dtypes |= {str(file.get_slice(key).get_dtype()) for key in file.keys()}  # noqa: SIM118
    return dtypes


@pytest.fixture(scope="module")
def tiny_random_model(tmp_path_factory) -> tuple[Path, Path]:
    hub = tmp_path_factory.mktemp("bench-hf") / "hub"
    snapshot = build_random_model(hub, BENCH_REPO_ID, TINY, device="cpu", log=lambda text: None)
    return hub, snapshot


def test_the_random_model_has_the_published_layout_and_dtypes(tiny_random_model):
    hub, snapshot = tiny_random_model
    transformer, text_encoder, vae = snapshot / "transformer", snapshot / "text_encoder", snapshot / "vae"
    assert sorted(path.name for path in transformer.glob("*.safetensors")) == [
        f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    assert sorted(path.name for path in text_encoder.glob("*.safetensors")) == [
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    assert [path.name for path in vae.glob("*.safetensors")] == ["diffusion_pytorch_model.safetensors"]
    assert tensor_dtypes(transformer) == {"F32"}
    assert tensor_dtypes(text_encoder) == {"BF16"}
    assert tensor_dtypes(vae) == {"BF16"}
    # Every tensor the index names is in the shard it names.
    index = json.loads((transformer / "diffusion_pytorch_model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        with safe_open(transformer / shard, framework="pt") as file:
            assert {key for key, file_name in index["weight_map"].items() if file_name == shard} == set(file.keys())
    # The cache layout a download leaves: blobs named by content, refs/main without a newline.
    repo = hub / repo_folder_name(BENCH_REPO_ID)
    assert (repo / "refs" / "main").read_text() == snapshot.name
    shard = transformer / "diffusion_pytorch_model-00001-of-00003.safetensors"
    assert shard.is_symlink()
    assert shard.resolve().name == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert not list((repo / "blobs").glob(".staging-*"))
    report_ = inspect_cache(BENCH_REPO_ID, cache_root=hub)
    assert report_.complete, report_.problems


def test_the_random_model_loads_offline_and_draws(tiny_random_model):
    import diffusers

    hub, _ = tiny_random_model
    pipe = diffusers.ZImagePipeline.from_pretrained(BENCH_REPO_ID, cache_dir=hub, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt="a fox", height=64, width=96, num_inference_steps=2, guidance_scale=0.0).images[0]
    assert image.size == (96, 64)


def test_the_full_size_spec_has_the_published_parameter_counts():
    import torch
    from diffusers import ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    with torch.device("meta"):
        transformer = ZImageTransformer2DModel(**FULL_SIZE.transformer)
        text_encoder = Qwen3Model(Qwen3Config(**FULL_SIZE.text_encoder))
    # 24.6 GB in fp32 and 8.0 GB in bf16, as in the published repository.
    assert sum(p.numel() for p in transformer.parameters()) * 4 == pytest.approx(24.6e9, rel=0.01)
    assert sum(p.numel() for p in text_encoder.parameters()) * 2 == pytest.approx(8.05e9, rel=0.01)


def test_shards_keep_order_and_split_about_evenly():
    shapes = [(f"w{i}", (100, 10 + i)) for i in range(30)]
    shards = _split(shapes, 3, 4)
    assert len(shards) == 3
    assert [key for shard in shards for key, _ in shard] == [key for key, _ in shapes]
    sizes = [sum(a * b for _, (a, b) in shard) for shard in shards]
    assert max(sizes) < 1.2 * min(sizes)
    assert isinstance(TINY, ModelSpec) and TINY.to_json() != FULL_SIZE.to_json()


# ----- the report -------------------------------------------------------------------------------


def fake_results(**phase_overrides) -> dict:
    square, wide = "1024x1024", "1344x576"
    phases = {
        "build": {"status": "ok", "seconds": 61.0},
        "baseline": {
            "status": "ok",
            "ready_s": 31.2,
            "imports_s": 17.7,
            "load_s": 8.6,
            "first_image_s": {square: 5.5, wide: 1.3},
            "steady_s": {square: 1.35, wide: 1.0},
            "peak_allocated_gib": 21.7,
            "peak_reserved_gib": 22.5,
            "max_rss_gib": 30.1,
        },
        "ours": {
            "status": "ok",
            "ready_s": 48.0,
            "imports_s": 17.0,
            "load_s": 3.7,
            "warmup_s": 27.3,
            "first_image_s": {square: 0.80, wide: 0.62},
            "steady_s": {square: 0.78, wide: 0.58},
            "latent_only_s": 0.66,
            "peak_allocated_gib": 21.0,
            "peak_reserved_gib": 23.0,
            "max_rss_gib": 3.2,
            "queue": {"jobs": 20, "images_per_s": 1.26, "seconds": 15.9},
        },
        "ours_restart": {
            "status": "ok",
            "ready_s": 26.0,
            "load_s": 3.6,
            "warmup_s": 5.1,
            "first_image_s": {square: 0.79},
            "steady_s": {square: 0.78},
        },
        "offload_model": {"status": "ok", "steady_s": {square: 2.3}, "peak_allocated_gib": 10.1},
        "offload_sequential": {"status": "failed", "error": "RuntimeError: boom"},
        "baseline_cold": {"status": "skipped", "reason": "cannot drop the page cache here"},
    }
    phases.update(phase_overrides)
    return {
        "created": "2026-11-27 12:00 UTC",
        "machine": {"gpu": "NVIDIA H100 80GB HBM3", "cpus": 16, "versions": {"torch": "2.11.0", "diffusers": "0.42.1"}},
        "settings": {"steps": 8, "repeats": 5, "queue_jobs": 20, "sizes": [square, wide]},
        "phases": phases,
    }


def table_row(markdown: str, label: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_report_puts_each_figure_in_its_row_and_column():
    markdown = report.render_markdown(fake_results())
    assert "NVIDIA H100 80GB HBM3" in markdown and "torch 2.11.0, diffusers 0.42.1" in markdown
    assert table_row(markdown, "steady 1024x1024") == ["steady 1024x1024, median of 5 (s)", "1.35", "0.78", "0.78", "–"]
    assert table_row(markdown, "load + warm-up")[1:4] == ["8.60", "31.0", "8.70"]
    assert table_row(markdown, "process start to ready, page cache dropped")[1] == "skipped"
    assert table_row(markdown, "queue of 20 jobs")[2] == "1.26 (98% of 1/steady)"
    assert table_row(markdown, "peak GPU memory")[1] == "21.7 / 22.5"
    assert table_row(markdown, "sequential")[1] == "failed"
    assert "- offload_sequential: failed (RuntimeError: boom)" in markdown


def test_the_targets_say_met_missed_or_not_measured():
    targets = {target.name: target for target in report.evaluate_targets(fake_results())}
    assert targets["steady latency, bf16"].met is True
    assert targets["first image after ready"].met is True  # 0.80 / 0.78 = 103%
    assert targets["queue throughput"].met is True  # 1.26 x 0.78 = 98%
    assert targets["warm restart ready (load + warm-up)"].met is False  # 8.7 s
    assert targets["OFFLOAD=model peak GPU memory"].met is True
    assert targets["OFFLOAD=sequential time an image"].met is None
    slow = fake_results(ours=dict(fake_results()["phases"]["ours"], first_image_s={"1024x1024": 0.9}))
    assert {t.name: t for t in report.evaluate_targets(slow)}["first image after ready"].met is False
    assert "| warm restart ready (load + warm-up) | <= 8 s | 8.70 s | **no** |" in report.render_markdown(slow)


def test_the_report_renders_a_saved_results_file(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(fake_results()))
    output = subprocess.run(
        [sys.executable, "-m", "bench.report", str(results)], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert output.returncode == 0, output.stderr
    assert output.stdout == report.render_markdown(fake_results())


# ----- the queue measurement, and PNG saving overlapped with the next generation -------------------


class TimedService:
    """The loaded service, noting when each job's first step ran on the GPU thread."""

    def __init__(self, service) -> None:
        self.service = service
        self.first_step: dict[int, float] = {}

    def submit(self, request, *, progress=None, cancel=None):
        def on_step(step) -> None:
            self.first_step.setdefault(request.seed, time.perf_counter())
            if progress is not None:
                progress(step)

        return self.service.submit(request, progress=on_step, cancel=cancel)

    def estimate_seconds(self, request):
        return self.service.estimate_seconds(request)


async def test_png_saving_overlaps_the_next_generation(loaded_service, tmp_path, monkeypatch):
    saves: dict[int, tuple[float, float]] = {}
    real_save = job_runner.save_png

    def slow_save(image, request, seed, model_id, output_dir, prompt_used=None):
        # Saving a 1024x1024 PNG takes 100-150 ms of CPU on the real model; here it is made long
        # enough that the GPU thread, if it waited for it, could not start the next job in time.
        begun = time.perf_counter()
        assert threading.current_thread() is not threading.main_thread()
        time.sleep(0.4)
        result = real_save(image, request, seed, model_id, output_dir, prompt_used)
        saves[seed] = (begun, time.perf_counter())
        return result

    monkeypatch.setattr(job_runner, "save_png", slow_save)
    service = TimedService(loaded_service)
    requests = [GenerationRequest(f"a fox, take {i}", ImageSize(64, 64), 2, seed=100 + i) for i in range(3)]
    figures = await asyncio.wait_for(
        run_queue(loaded_service.settings, service, requests, tmp_path / "queue"), timeout=60
    )
    assert figures["delivered"] == 3 and figures["pngs"] == 3 and not figures["failed"]
    assert len(list((tmp_path / "queue" / "outputs").glob("*.png"))) == 3
    # Job 2 was generating while job 1's PNG was still being saved, and job 3 during job 2's.
    assert service.first_step[101] < saves[100][1]
    assert service.first_step[102] < saves[101][1]
    # Three saves of 0.4 s one after the other bound the run; waiting generations would add to it.
    assert figures["seconds"] < 3 * 0.4 + 0.6


def tiny_work_dir(tiny_random_model, tmp_path: Path) -> Path:
    """A benchmark --work-dir holding the tiny model the suite built, as if the build step had made it."""
    hub, _ = tiny_random_model
    work = tmp_path / "work"
    (work / "hf").mkdir(parents=True)
    (work / "hf" / "hub").symlink_to(hub, target_is_directory=True)
    (work / "built-model.json").write_text(TINY.to_json())
    return work


def test_the_benchmark_runs_end_to_end_on_the_tiny_model(tiny_random_model, tmp_path):
    """The orchestrator, a service phase in its own process, the JSON and the table, on the CPU."""
    work = tiny_work_dir(tiny_random_model, tmp_path)
    results = tmp_path / "results"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run_benchmark",
            "--tiny",
            "--work-dir",
            str(work),
            "--results",
            str(results),
            "--phases",
            "ours",
            "--repeats",
            "1",
            "--queue-jobs",
            "2",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr + (results / "phases.log").read_text()
    figures = json.loads((results / "results.json").read_text())["phases"]["ours"]
    assert figures["status"] == "ok"
    assert figures["load_s"] > 0 and figures["ready_s"] > figures["load_s"]
    assert set(figures["steady_s"]) == {"64x64", "96x64"}
    assert figures["queue"]["delivered"] == 2
    pictures = figures["image_to_image"]
    assert pictures["img2img"]["size"] == "64x64" and pictures["upscale"]["size"] == "128x128"
    assert pictures["img2img"]["steady_s"] > 0 and pictures["upscale"]["steady_s"] > 0
    markdown = (results / "results.md").read_text()
    assert table_row(markdown, "queue of 2 jobs")[2] != "–"
    assert "### Image-to-image and Upscale" in markdown


def bench_command(tiny_random_model, tmp_path: Path, phases: str) -> tuple[list[str], Path]:
    """`python -m bench.run_benchmark --tiny` on the tiny model the suite built, for `phases`."""
    work = tiny_work_dir(tiny_random_model, tmp_path)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "bench.run_benchmark", "--tiny", "--work-dir", str(work)]
    command += ["--results", str(results), "--phases", phases, "--repeats", "1", "--steps", "2"]
    return command, results


def test_the_safety_check_phase_runs_on_the_tiny_models(tiny_random_model, tmp_path):
    """ours_safety: the classifier built beside the pipeline, the same job with the check and without in one
    process, the check alone both ways, and the table and targets, on the CPU."""
    command, results = bench_command(tiny_random_model, tmp_path, "ours_safety")
    run = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240)
    log = (results / "phases.log").read_text()
    assert run.returncode == 0, run.stdout + run.stderr + log
    phase = json.loads((results / "results.json").read_text())["phases"]["ours_safety"]
    assert phase["status"] == "ok", phase
    # The enhancer is off in service phases: its self-test on random weights would run in every warm-up.
    assert phase["enhancer"] == "off"
    figures = phase["safety"]
    assert figures["model"] == BENCH_SAFETY_REPO_ID
    assert len(figures["on_all_s"]) == len(figures["off_all_s"]) == len(figures["check_in_job_all_s"]) == 4
    assert figures["check_on_device"] is True
    assert figures["check_alone_1_s"] > 0 and figures["check_alone_pil_1_s"] > 0
    assert figures["preprocess_device_s"] > 0 and figures["preprocess_pil_s"] > 0
    assert 0 < figures["check_in_job_s"] < figures["on_s"]
    assert 0 < figures["weights_gib"] <= figures["file_gib"]  # fp32 on the CPU: the file's own size
    markdown = (results / "results.md").read_text()
    assert table_row(markdown, "steady 64x64, median of 4 each")[1:3] == [
        f"{figures['on_s']:.2f}",
        f"{figures['off_s']:.2f}",
    ]
    assert table_row(markdown, "safety check, steady latency")[1:3] == ["<= +2%", f"{figures['cost']:+.1%}"]
    assert table_row(markdown, "preprocessing one picture")[1] == (
        f"{figures['preprocess_device_s'] * 1000:.1f} / {figures['preprocess_pil_s'] * 1000:.1f}"
    )


def test_the_enhancer_phase_runs_on_the_tiny_model(tiny_random_model, tmp_path):
    """Plain generation on the CPU; the compiled path is CUDA's and is reported as not tried."""
    command, results = bench_command(tiny_random_model, tmp_path, "enhancer")
    run = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr + (results / "phases.log").read_text()
    figures = json.loads((results / "results.json").read_text())["phases"]["enhancer"]
    assert figures["status"] == "ok"
    assert figures["prompt_words"] == 20
    assert figures["new_parameter_bytes"] == 0 and figures["shares_encoder_storage"] is True
    assert figures["weights_changed_bytes"] == 0
    assert figures["plain"]["new_tokens"] == [200, 200]
    assert figures["enhance_200_tokens_s"] == figures["plain"]["median_s"] > 0
    assert figures["compiled_error"] == "not tried: compiled decoding is for CUDA only"
    markdown = (results / "results.md").read_text()
    assert table_row(markdown, "plain `generate`")[1] == report.seconds(figures["plain"]["median_s"])
    assert "| enhancer: new parameter bytes | 0 | 0 | yes |" in markdown


def test_the_enhancer_targets():
    enhancer = {
        "status": "ok",
        "prompt_words": 20,
        "input_tokens": 280,
        "new_parameter_bytes": 0,
        "shares_encoder_storage": True,
        "plain": {"median_s": 8.5, "ms_per_token": 42.5},
        "compiled": {"median_s": 1.2, "ms_per_token": 6.0},
        "compiled_first_call_s": 45.0,
        "enhance_200_tokens_s": 1.2,
        "weights_gib": 7.5,
        "extra_peak_gib": 0.31,
        "extra_resident_gib": 0.15,
    }
    targets = {target.name: target for target in report.evaluate_targets(fake_results(enhancer=enhancer))}
    assert targets["enhancer: 200 new tokens"].met is True
    assert targets["enhancer: extra peak GPU memory"].met is True
    assert targets["enhancer: new parameter bytes"].met is True
    markdown = report.render_markdown(fake_results(enhancer=enhancer))
    assert table_row(markdown, "static cache, compiled decode step") == [
        "static cache, compiled decode step",
        "1.20",
        "6.0",
        "45.0",
    ]
    failed = dict(enhancer, compiled_error="BackendCompilerFailed: boom", enhance_200_tokens_s=8.5)
    markdown = report.render_markdown(fake_results(enhancer=failed))
    assert table_row(markdown, "static cache, compiled decode step")[3] == "BackendCompilerFailed: boom"
    assert "| enhancer: 200 new tokens | <= 2 s | 8.50 s | **no** |" in markdown
    assert {t.name: t for t in report.evaluate_targets(fake_results())}["enhancer: 200 new tokens"].met is None


def test_the_fp8_comparison_runs_on_the_tiny_model_and_scores_pictures_against_bf16(tiny_random_model, tmp_path):
    """bench.fp8_compare on the CPU: bf16 measured in its own process, the FP8 schemes skipped with the
    reason (they need FP8 tensor cores); then the picture comparison and the table on known arrays."""
    import numpy as np
    import torch

    from bench import fp8_compare

    work = tiny_work_dir(tiny_random_model, tmp_path)
    results_file = tmp_path / "fp8.json"
    command = [sys.executable, "-m", "bench.fp8_compare", "--tiny", "--schemes", "bf16,ours", "--repeats", "1"]
    command += ["--work-dir", str(work), "--results", str(results_file)]
    run = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(results_file.read_text())
    bf16, ours = results["schemes"]["bf16"], results["schemes"]["ours"]
    assert bf16["status"] == "ok" and bf16["quantized_layers"] == 0 and bf16["steady_s"]["64x64"] > 0
    assert ours == {"status": "skipped", "reason": fp8_compare.fp8_unavailable("ours", torch.device("cpu"))}
    saved = np.load(work / "fp8-images" / f"bf16-{fp8_compare.SEEDS[0]}.npy")
    assert saved.shape == (64, 64, 3) and saved.dtype == np.uint8

    # A scheme whose pictures differ from bf16's by 2 levels everywhere: PSNR 20*log10(255/2).
    for seed in fp8_compare.SEEDS:
        reference = np.load(work / "fp8-images" / f"bf16-{seed}.npy").astype(np.int16)
        np.save(work / "fp8-images" / f"ours-{seed}.npy", np.clip(reference + 2, 0, 255).astype(np.uint8))
    results["schemes"]["ours"] = {"status": "ok", "quantized_layers": 7, "steady_s": {"64x64": 0.5}}
    results["schemes"]["bf16"]["steady_s"] = {"64x64": 1.0}
    fp8_compare.compare_images(results, work / "fp8-images")
    scored = results["schemes"]["ours"]
    assert scored["mean_abs_diff_vs_bf16"] <= 2.0 and scored["mean_abs_diff_vs_bf16"] > 1.5  # clipped at 255
    assert scored["psnr_vs_bf16_db"] >= 20 * np.log10(255 / 2) - 1e-9
    row = next(line for line in fp8_compare.render(results).splitlines() if line.startswith("| ours "))
    assert row.split(" | ")[1:4] == ["7", "0.500", "2.00x"]


def test_the_bf16_copy_phases_run_on_the_tiny_model(tiny_random_model, tmp_path):
    """ours_bf16_copy makes the copy, ours_bf16_copy_restart loads from it; the table says which did what."""
    work = tiny_work_dir(tiny_random_model, tmp_path)
    results = tmp_path / "results"
    phases = "ours_bf16_copy,ours_bf16_copy_restart"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "bench.run_benchmark", "--tiny", "--work-dir", str(work)),
            *("--results", str(results), "--phases", phases, "--repeats", "1"),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr + (results / "phases.log").read_text()
    figures = json.loads((results / "results.json").read_text())["phases"]
    assert figures["ours_bf16_copy"]["transformer_copy"] == "made"
    assert figures["ours_bf16_copy_restart"]["transformer_copy"] == "used"
    assert figures["ours_bf16_copy_restart"]["compiled_code"] == "off"  # the CPU does not compile by default
    markdown = (results / "results.md").read_text()
    assert table_row(markdown, "BF16_COPY=1, first start (makes the copy)")[6] == "cache (fp32), copy made"
    assert table_row(markdown, "BF16_COPY=1, restart")[6] == "bf16 copy"
