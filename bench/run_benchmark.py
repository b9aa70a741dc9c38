"""Benchmark the bot's model service against plain diffusers on one CUDA GPU, in one run.

    python -m bench.run_benchmark                 # everything, into bench/results/
    python -m bench.run_benchmark --phases baseline,ours,ours_restart

Builds the full-size random-weight model into a private Hugging Face cache under --work-dir (33 GB;
needs no hub access; reused by later runs), then runs each phase in a fresh process, one after the
other, and writes results.json, results.md (the tables) and phases.log (every phase's log) into
--results after every phase, so an interrupted run still leaves what it measured.

Phases (default order; the cold ones last, since dropping the page cache slows what follows):
  baseline            plain from_pretrained(dtype=bf16) + .to("cuda") + calls, diffusers' defaults
  ours                the bot's PipelineService as `zimage-bot run` uses it, empty compile cache;
                      also a queue of --queue-jobs jobs through the real JobRunner (PNGs saved)
  ours_restart        the same again with the compile cache the first start left (a restart); reports
                      whether the saved compiled code (DATA_DIR/compile-cache/artifacts-*.bin) was loaded
  ours_safety         the image safety check (a random-weight ViT-base classifier as SAFETY_MODEL): the
                      same steady image with the check and without, alternating in one process; its memory
  offload_model       OFFLOAD=model
  offload_sequential  OFFLOAD=sequential
  ours_eager          COMPILE=0
  ours_bf16_copy      BF16_COPY=1, first start: makes the bf16 copy of the transformer (empty DATA_DIR)
  ours_bf16_copy_restart  BF16_COPY=1 again: loads the transformer from the copy
  enhancer            the prompt enhancer: a 20-word prompt to 200 new tokens on the text encoder with
                      its tied head, plain generation and the compiled decode step (CUDA)
  baseline_cold       baseline start-up with the page cache dropped (needs root; skipped otherwise)
  ours_cold           ours start-up (warm compile cache) with the page cache dropped
  ours_bf16_copy_cold the same from the bf16 copy (BF16_COPY=1) with the page cache dropped
  disk_read           raw read of every weight file with the page cache dropped
Variants (not in the default list): ours_dynamic (compile with dynamic=True), ours_cudnn
(ATTENTION_BACKEND=_native_cudnn), ours_fp8 (QUANTIZE=fp8) beside ours_bf16 (the same, in bf16).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.build_random_model import BENCH_REPO_ID, BENCH_SAFETY_REPO_ID, FULL_SIZE, TINY, repo_folder_name
from bench.measure import PhaseConfig
from bench.report import render_markdown

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Variables of the bot's configuration: a phase starts from none of them set, so "ours" runs on the
# defaults, and sets only what it is about.
BOT_VARIABLES = (
    "DISCORD_TOKEN",
    "MODEL_ID",
    "MODEL_REVISION",
    "OUTPUT_DIR",
    "DATA_DIR",
    "IMAGE_SIZES",
    "DEFAULT_STEPS",
    "MAX_QUEUE",
    "MAX_JOBS_PER_USER",
    "DEVICE",
    "DTYPE",
    "OFFLOAD",
    "ATTENTION_BACKEND",
    "COMPILE",
    "BF16_COPY",
    "SAFETY_MODEL",
    "SAFETY_THRESHOLD",
    "ENHANCER",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "HF_TOKEN",
)


@dataclass(frozen=True)
class Phase:
    kind: str  # baseline | service | enhancer | disk_read
    data: str | None = None  # DATA_DIR name; phases that share one share the compile cache
    fresh_data: bool = False  # start from an empty DATA_DIR (no compile cache)
    env: dict = field(default_factory=dict)
    cold: bool = False  # drop the page cache first
    only_first: bool = False
    repeats: int | None = None
    queue: bool = False
    latent_only: bool = False
    service_overrides: dict = field(default_factory=dict)
    experiments: bool = False
    safety_compare: bool = False
    image_to_image: bool = False


BF16_COPY = {"BF16_COPY": "1", "DTYPE": "bfloat16"}
PHASES = {
    "baseline": Phase("baseline"),
    "ours": Phase(
        "service", data="ours", fresh_data=True, queue=True, latent_only=True, experiments=True, image_to_image=True
    ),
    # Image-to-image at 1024x1024 and strength 0.6, and Upscale 1024 -> 2048, on the compiled service;
    # with OFFLOAD=model too (Upscale must work there).
    "img2img": Phase("service", data="ours", image_to_image=True, repeats=3),
    "baseline_img2img": Phase("baseline", image_to_image=True, repeats=3),
    "img2img_offload": Phase("service", data="offload", env={"OFFLOAD": "model"}, image_to_image=True, repeats=2),
    "ours_restart": Phase("service", data="ours", repeats=3),
    "ours_safety": Phase("service", data="ours", env={"SAFETY_MODEL": BENCH_SAFETY_REPO_ID}, safety_compare=True),
    "offload_model": Phase("service", data="offload", env={"OFFLOAD": "model"}, repeats=3),
    "offload_sequential": Phase("service", data="offload", env={"OFFLOAD": "sequential"}, repeats=3),
    "ours_eager": Phase("service", data="eager", env={"COMPILE": "0"}, repeats=3),
    # The opt-in bf16 copy (DTYPE named so that --tiny, on the CPU, runs in bf16 too; it is the GPU default).
    "ours_bf16_copy": Phase("service", data="bf16copy", fresh_data=True, env=BF16_COPY, only_first=True),
    "ours_bf16_copy_restart": Phase("service", data="bf16copy", env=BF16_COPY, repeats=3),
    "baseline_cold": Phase("baseline", cold=True, only_first=True),
    "ours_cold": Phase("service", data="ours", cold=True, only_first=True),
    "ours_bf16_copy_cold": Phase("service", data="bf16copy", env=BF16_COPY, cold=True, only_first=True),
    "disk_read": Phase("disk_read", cold=True),
    # Variants: one option changed from ours, to measure what it is worth.
    "ours_dynamic": Phase(
        "service",
        data="dynamic",
        fresh_data=True,
        service_overrides={"COMPILE_OPTIONS": {"fullgraph": True, "dynamic": True}},
    ),
    "ours_cudnn": Phase("service", data="cudnn", fresh_data=True, env={"ATTENTION_BACKEND": "_native_cudnn"}),
    # The FP8 opt-in, and the bf16 service measured the same way beside it (no queue or profile).
    "ours_fp8": Phase("service", data="fp8", fresh_data=True, env={"QUANTIZE": "fp8"}),
    "ours_bf16": Phase("service", data="bf16", fresh_data=True),
    # The prompt enhancer on the text encoder alone: 200 new tokens, plain and compiled.
    "enhancer": Phase("enhancer", repeats=3),
}
DEFAULT_PHASES = (
    "baseline",
    "ours",
    "ours_restart",
    "ours_safety",
    "offload_model",
    "offload_sequential",
    "ours_eager",
    "ours_bf16_copy",
    "ours_bf16_copy_restart",
    "enhancer",
    "baseline_cold",
    "ours_cold",
    "ours_bf16_copy_cold",
    "disk_read",
)


class Benchmark:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = args.work_dir.resolve()
        self.hub = self.work / "hf" / "hub"
        self.results_dir = args.results.resolve()
        self.started = time.monotonic()
        self.results: dict = {
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(),
            "settings": {
                "steps": args.steps,
                "repeats": args.repeats,
                "queue_jobs": args.queue_jobs,
                "tiny": args.tiny,
                "sizes": self.sizes(),
            },
            "phases": {},
        }

    # ----- steps -------------------------------------------------------------------------------

    def run(self, phases: list[str]) -> dict:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = self.results_dir / "phases.log"
        self.log_file.write_text("")
        self.build()
        if any(PHASES[name].env.get("SAFETY_MODEL") == BENCH_SAFETY_REPO_ID for name in phases):
            self.build_classifier()
        for name in phases:
            left = self.args.budget_s - (time.monotonic() - self.started)
            if left < 30:
                self.record(name, {"status": "skipped", "reason": "the run's time budget (--budget-s) was used up"})
                continue
            self.say(f"phase {name} ({left:.0f} s of the budget left)")
            self.record(name, self.run_phase(name, PHASES[name], timeout=min(self.args.phase_timeout_s, left)))
        return self.results

    def build(self) -> None:
        spec = TINY if self.args.tiny else FULL_SIZE
        marker = self.work / "built-model.json"
        built = marker.is_file() and marker.read_text() == spec.to_json()
        if built and not self.args.rebuild and (self.hub / repo_folder_name(BENCH_REPO_ID) / "refs" / "main").is_file():
            self.say(f"reusing the model built before in {self.hub}")
            self.record("build", {"status": "ok", "reused": True, "seconds": None})
            return
        shutil.rmtree(self.hub / repo_folder_name(BENCH_REPO_ID), ignore_errors=True)
        marker.unlink(missing_ok=True)
        self.hub.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "bench.build_random_model", str(self.hub), "--device", self.args.device]
        if self.args.tiny:
            command.append("--tiny")
        started = time.perf_counter()
        outcome = self.spawn("build", command, self.base_env(), timeout=self.args.phase_timeout_s)
        if outcome["status"] != "ok":
            self.record("build", outcome)
            raise SystemExit(f"building the model failed: {outcome}")
        marker.write_text(spec.to_json())
        self.record("build", {"status": "ok", "seconds": time.perf_counter() - started, "reused": False})

    def build_classifier(self) -> None:
        """The safety check's random-weight classifier, beside the pipeline (built once, like it)."""
        spec = "tiny" if self.args.tiny else "full"
        marker = self.work / "built-classifier.txt"
        repo = self.hub / repo_folder_name(BENCH_SAFETY_REPO_ID)
        if marker.is_file() and marker.read_text() == spec and (repo / "refs" / "main").is_file():
            return
        shutil.rmtree(repo, ignore_errors=True)
        command = [sys.executable, "-m", "bench.build_random_model", str(self.hub), "--classifier"]
        if self.args.tiny:
            command.append("--tiny")
        outcome = self.spawn("build_classifier", command, self.base_env(), timeout=self.args.phase_timeout_s)
        if outcome["status"] != "ok":
            self.record("build_classifier", outcome)
            raise SystemExit(f"building the safety classifier failed: {outcome}")
        marker.write_text(spec)

    def run_phase(self, name: str, phase: Phase, timeout: float) -> dict:
        if phase.cold:
            reason = drop_page_cache()
            if reason:
                return {"status": "skipped", "reason": reason}
        if phase.kind == "disk_read":
            return read_files(self.snapshot())
        env = self.base_env()
        data_dir = self.work / "data" / (phase.data or name)
        if phase.fresh_data:
            shutil.rmtree(data_dir, ignore_errors=True)
        env.update(DATA_DIR=str(data_dir), OUTPUT_DIR=str(self.work / "outputs" / name), MODEL_ID=BENCH_REPO_ID)
        if self.args.tiny:
            # The tiny model on the CPU: checks the whole benchmark end to end in seconds.
            env.update(DEVICE="cpu", IMAGE_SIZES=",".join(self.sizes()), DEFAULT_STEPS=str(self.args.steps))
        env.update(phase.env)
        config = PhaseConfig(
            kind=phase.kind,
            repo_id=BENCH_REPO_ID,
            steps=self.args.steps,
            repeats=phase.repeats or self.args.repeats,
            sizes=self.sizes(),
            queue_jobs=self.args.queue_jobs if phase.queue else 0,
            latent_only=phase.latent_only and not self.args.tiny,
            only_first=phase.only_first,
            service_overrides=phase.service_overrides,
            device="cpu" if self.args.tiny else "cuda",
            experiments=phase.experiments and not self.args.tiny,
            safety_compare=phase.safety_compare,
            image_to_image=phase.image_to_image,
        )
        env["BENCH_CONFIG"] = json.dumps(asdict(config))
        result_file = self.work / "phase-results" / f"{name}.json"
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.unlink(missing_ok=True)
        outcome = self.spawn(name, [sys.executable, "-m", "bench.measure", name, str(result_file)], env, timeout)
        if result_file.is_file():
            figures = json.loads(result_file.read_text())
            figures.pop("traceback", None)
            if outcome["status"] == "timeout":
                figures.update(outcome)
            return figures
        return outcome

    # ----- helpers ------------------------------------------------------------------------------

    def sizes(self) -> list[str]:
        return ["64x64", "96x64"] if self.args.tiny else ["1024x1024", "1344x576"]

    def snapshot(self) -> Path:
        repo = self.hub / repo_folder_name(BENCH_REPO_ID)
        return repo / "snapshots" / (repo / "refs" / "main").read_text()

    def base_env(self) -> dict:
        env = {key: value for key, value in os.environ.items() if key not in BOT_VARIABLES}
        env.update(
            HF_HOME=str(self.hub.parent),
            HF_HUB_CACHE=str(self.hub),
            HF_HUB_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            # The pipeline alone, as measured before the safety check existed; ours_safety adds the check.
            SAFETY_MODEL="",
            # Random weights write no text: the enhancer's start-up self-test would run on the compiled path, then
            # on plain generation, and turn it off, time in every warm-up. The enhancer phase measures it alone.
            ENHANCER="off",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        )
        return env

    def spawn(self, name: str, command: list[str], env: dict, timeout: float) -> dict:
        """Run one phase process; its output goes to phases.log. Kills its whole process group on timeout
        (inductor compiles in worker processes)."""
        env["BENCH_SPAWNED_AT"] = repr(time.time())
        with open(self.log_file, "a") as log:
            log.write(f"\n===== {name}: {' '.join(command)}\n")
            log.flush()
            process = subprocess.Popen(
                command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return {"status": "timeout", "error": f"stopped after {timeout:.0f} s"}
        if code != 0:
            return {"status": "failed", "error": f"exit status {code}; see phases.log"}
        return {"status": "ok"}

    def record(self, name: str, figures: dict) -> None:
        self.results["phases"][name] = figures
        gpu = figures.get("gpu")
        if gpu:
            self.results["machine"]["gpu"] = gpu
        (self.results_dir / "results.json").write_text(json.dumps(self.results, indent=2, default=str))
        (self.results_dir / "results.md").write_text(render_markdown(self.results))
        self.say(f"{name}: {figures.get('status')} {figures.get('error') or figures.get('reason') or ''}")

    def say(self, text: str) -> None:
        print(f"[bench {time.monotonic() - self.started:6.1f} s] {text}", flush=True)


def machine_info() -> dict:
    """Versions and the GPU, without importing torch here (a CUDA context in this process would stay)."""
    versions = {}
    for package in ("torch", "diffusers", "transformers", "huggingface_hub", "safetensors"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["python"] = sys.version.split()[0]
    info = {"versions": versions, "cpus": os.cpu_count()}
    try:
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        name, driver, memory = (part.strip() for part in query.stdout.splitlines()[0].split(","))
        info.update(gpu=name, driver=driver, gpu_memory=memory)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        info["gpu"] = "no NVIDIA GPU found"
    return info


def drop_page_cache() -> str | None:
    """Write dirty pages out and drop the page cache; the reason it could not, or None."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as error:
        return f"cannot drop the page cache here ({error.strerror or error}); needs root on Linux"
    return None


def read_files(snapshot: Path) -> dict:
    """Read every file of the model once, as loading from a cold disk must."""
    from bench.build_random_model import snapshot_files

    started = time.perf_counter()
    total = 0
    for path in snapshot_files(snapshot):
        with open(path, "rb", buffering=0) as file:
            while chunk := file.read(64 << 20):
                total += len(chunk)
    elapsed = time.perf_counter() - started
    return {"status": "ok", "bytes": total, "seconds": elapsed, "gb_per_s": total / 1e9 / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=PROJECT_ROOT / "bench" / "results" / "work",
        help="model cache, DATA_DIRs and outputs (about 35 GB)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=PROJECT_ROOT / "bench" / "results",
        help="where results.json, results.md and phases.log go",
    )
    parser.add_argument(
        "--phases", default=",".join(DEFAULT_PHASES), help=f"comma-separated, in order; known: {', '.join(PHASES)}"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="steady-state calls per size (median)")
    parser.add_argument("--queue-jobs", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=3600, help="start no phase after this many seconds")
    parser.add_argument("--phase-timeout-s", type=float, default=900)
    parser.add_argument("--rebuild", action="store_true", help="build the model even if one is there")
    parser.add_argument("--device", default="cuda", help="where the random weights are made")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: a smoke test of the benchmark")
    args = parser.parse_args(argv)
    if args.tiny:
        args.device = "cpu"
    phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    unknown = [name for name in phases if name not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(unknown)}")
    results = Benchmark(args).run(phases)
    print(render_markdown(results))
    return 0 if all(entry.get("status") in ("ok", "skipped") for entry in results["phases"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
