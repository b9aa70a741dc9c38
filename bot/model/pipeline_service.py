"""The resident Z-Image pipeline and the one thread that drives it.

This is the only module that imports torch or diffusers. Everything that touches the model (loading,
warm-up, every generation) runs on a single dedicated worker thread: the scheduler is not
thread-safe, CUDA work from one thread keeps memory use predictable, and callers on the event loop
only ever wait on futures.
"""

from __future__ import annotations

import enum
import gc
import logging
import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bot.generation import (
    CancelToken,
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    OutOfMemory,
    ProgressCallback,
    StepProgress,
    validate_request,
)
from bot.image_size import ImageSize
from bot.model.fp8 import Fp8Unsupported, check_fp8_support, quantize_to_fp8
from bot.model.offload import apply_offload
from bot.settings import MAX_STEPS, Settings

# Read by diffusers when it is imported: load the shards of each model in parallel.
os.environ.setdefault("HF_ENABLE_PARALLEL_LOADING", "yes")

import diffusers
import torch

# Imported here rather than on first use (diffusers imports the pipeline, and with it transformers,
# lazily), so that the 4-5 s this takes are paid with the other imports, not inside the model load.
from diffusers import ZImagePipeline

log = logging.getLogger(__name__)

# Two warm-up prompts whose captions differ in length (in tokens, and so in padded caption blocks of 32).
# Compiled blocks are specialised to the first shapes they see until a shape changes; then the
# compiler makes the changing dimension dynamic (automatic dynamic shapes), so that prompts of any
# length and every image size reuse the compiled code instead of recompiling, for seconds, on a
# user's request. With the real model the first call already generalises (the image and caption
# refiners share the block's code and differ in length); the second, 0.5 s, is insurance that the
# caption length is dynamic whatever the block order (with diffusers' tiny test model it is needed).
# compile_repeated_blocks(dynamic=True) would need one call, but compiles every dimension dynamic,
# which made steady generation many times slower (tiny model, CPU; bench/README.md).
WARMUP_PROMPTS = (
    "a lighthouse on a cliff at sunset, photograph",
    "an old harbour town at dawn seen from a fishing boat, fog over the water, gulls, warm light on "
    "the houses along the quay, film photograph, high detail, muted colours, 35 mm lens, soft grain",
)
# Steps of each compiling warm-up call: compiled code does not depend on the step count, and every
# step after the first only repeats work the compiler has already seen.
COMPILE_WARMUP_STEPS = 1
# Forwarded to torch.compile for each repeated transformer block (regional compilation): one graph
# for the 30 main blocks and the refiners instead of one for the whole model, so compiling costs
# seconds, not minutes. fullgraph: a graph break would silently cost speed.
COMPILE_OPTIONS: dict = {"fullgraph": True}


# Several devices load side by side (bot/model/devices.py), but from_pretrained builds each model on
# the meta device by patching torch.nn.Module for the whole process; two at once can leave the patch in
# place, and every later load fails. One from_pretrained at a time; warm-up still runs in parallel.
_FROM_PRETRAINED_LOCK = threading.Lock()


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to change."""


class ServiceState(str, enum.Enum):
    NEW = "not loaded"
    LOADING = "loading"
    WARMING_UP = "warming up"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True)
class GpuMemory:
    name: str
    allocated_bytes: int
    peak_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class LoadReport:
    from_cache: bool
    load_seconds: float
    warmup_seconds: float
    device: str
    dtype: str


class PipelineService:
    """Loads the pipeline once and runs every generation on its own single worker thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = _pick_device(settings.device)
        self.dtype = _pick_dtype(settings.dtype, self.device)
        self.compile = _pick_compile(settings, self.device)
        self.state = ServiceState.NEW
        self.load_report: LoadReport | None = None
        self.error: str | None = None
        self._pipe: ZImagePipeline | None = None
        self._state_lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zimage-gpu")
        # Measured seconds per image by (size, steps); feeds the queue's wait estimates.
        self._seconds_per_image: dict[tuple[ImageSize, int], float] = {}

    # ----- lifecycle -------------------------------------------------------------------------

    def load(self, *, warm_up: bool = True) -> LoadReport:
        """Load (and warm up) the model on the worker thread; blocks until it is ready."""
        with self._state_lock:
            if self.state is not ServiceState.NEW:
                raise RuntimeError(f"the model service was already started (state: {self.state.value})")
            self.state = ServiceState.LOADING
        try:
            self.load_report = self._worker.submit(self._load_and_warm_up, warm_up).result()
        except BaseException as error:
            self.state = ServiceState.FAILED
            self.error = str(error)
            raise
        self.state = ServiceState.READY
        return self.load_report

    def close(self) -> None:
        """Stop taking work; the running job (if any) finishes first."""
        self.state = ServiceState.CLOSED
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._pipe = None

    @property
    def ready(self) -> bool:
        return self.state is ServiceState.READY

    # ----- generation ------------------------------------------------------------------------

    def submit(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> Future[GenerationResult]:
        """Queue a validated request on the worker thread. Bad input raises InvalidRequest here."""
        request = validate_request(request, max_steps=MAX_STEPS)
        if not self.ready:
            raise GenerationError(f"the model is not ready (state: {self.state.value})")
        return self._worker.submit(self._generate, request, progress, cancel or CancelToken())

    def generate(self, request: GenerationRequest, **kwargs) -> GenerationResult:
        """Blocking convenience for the command line: submit and wait."""
        return self.submit(request, **kwargs).result()

    def estimate_seconds(self, request: GenerationRequest) -> float | None:
        """Expected run time of `request` from what was measured so far; None before any measurement.

        The same size and steps measured before give the answer; otherwise the most similar measured
        work is scaled by steps x pixels (fixed costs such as the text encoder make a far-off
        measurement misleading, so the nearest one is used)."""
        measured = dict(self._seconds_per_image)  # the GPU thread may add to it meanwhile
        if not measured:
            return None
        per_image = measured.get((request.size, request.steps))
        if per_image is None:
            work = request.steps * request.size.pixels
            (size, steps), seconds = min(
                measured.items(), key=lambda item: abs(math.log(item[0][1] * item[0][0].pixels / work))
            )
            per_image = seconds * work / (steps * size.pixels)
        return per_image * request.count

    def gpu_memory(self) -> GpuMemory | None:
        if self.device.type != "cuda":
            return None
        # Allocator statistics only: safe to read from any thread, no work is queued on the GPU.
        index = self.device.index or 0
        properties = torch.cuda.get_device_properties(index)
        return GpuMemory(
            name=properties.name,
            allocated_bytes=torch.cuda.memory_allocated(index),
            peak_bytes=torch.cuda.max_memory_allocated(index),
            total_bytes=properties.total_memory,
        )

    # ----- worker-thread side ----------------------------------------------------------------

    def _load_and_warm_up(self, warm_up: bool) -> LoadReport:
        from bot.model.cache_report import inspect_cache
        from bot.model.download import download_model

        settings = self.settings
        report = inspect_cache(settings.model_id, settings.model_revision)
        from_cache = report.complete
        if from_cache:
            log.info(
                "%s@%s is complete in the local cache (%s)",
                settings.model_id,
                settings.model_revision,
                report.snapshot_dir,
            )
        else:
            log.warning("model not complete in the cache (%s): downloading", "; ".join(report.problems))
            download_model(settings.model_id, settings.model_revision)

        started = time.perf_counter()
        self._pipe = self._from_pretrained()
        load_seconds = time.perf_counter() - started
        log.info(
            "loaded in %.1f s (%s) on %s as %s",
            load_seconds,
            "local cache" if from_cache else "downloaded",
            self.device,
            _dtype_name(self.dtype),
        )

        warmup_seconds = 0.0
        if warm_up:
            self.state = ServiceState.WARMING_UP
            started = time.perf_counter()
            self._warm_up()
            warmup_seconds = time.perf_counter() - started
            log.info("warm-up took %.1f s", warmup_seconds)
        return LoadReport(from_cache, load_seconds, warmup_seconds, str(self.device), _dtype_name(self.dtype))

    def _from_pretrained(self) -> ZImagePipeline:
        settings = self.settings
        offload = settings.offload if self.device.type == "cuda" else "none"
        if settings.offload != "none" and offload == "none":
            log.warning("OFFLOAD=%s ignored: offloading needs a CUDA device", settings.offload)
        kwargs: dict = {"revision": settings.model_revision, "local_files_only": True}
        kwargs["dtype" if _diffusers_at_least(0, 42) else "torch_dtype"] = self.dtype
        if offload == "none" and self.device.type == "cuda":
            # Straight onto the GPU, shard by shard (in parallel: HF_ENABLE_PARALLEL_LOADING above),
            # cast to bf16 on the way: no copy of the model in host memory. H100: 5.9 s, against about
            # 8 s for loading on the CPU and then .to("cuda") (bench/RESULTS.md).
            kwargs["device_map"] = str(self.device)
        try:
            with _FROM_PRETRAINED_LOCK:
                pipe = ZImagePipeline.from_pretrained(settings.model_id, **kwargs)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"could not load {settings.model_id}@{settings.model_revision} from the cache: {error}. "
                "Run `zimage-bot cache-check` to see what is missing."
            ) from error
        if offload == "none" and self.device.type != "cuda":
            pipe.to(self.device)
        elif offload != "none":
            apply_offload(pipe, offload, self.device)
        pipe.set_progress_bar_config(disable=True)
        if settings.attention_backend:
            try:
                pipe.transformer.set_attention_backend(settings.attention_backend)
            except (ValueError, ImportError, RuntimeError) as error:
                raise ModelLoadError(f"ATTENTION_BACKEND={settings.attention_backend!r}: {error}") from error
        if settings.quantize == "fp8":
            if offload != "none":
                log.warning("QUANTIZE=fp8 ignored: it does not combine with OFFLOAD=%s", offload)
            else:
                try:
                    check_fp8_support(self.device)
                except Fp8Unsupported as error:
                    raise ModelLoadError(str(error)) from error
                count = quantize_to_fp8(pipe.transformer)
                log.info("QUANTIZE=fp8: %d linear layers of the transformer's blocks run in FP8", count)
        if self.compile:
            _use_persistent_compile_cache(settings.data_dir / "compile-cache")
            pipe.transformer.compile_repeated_blocks(**COMPILE_OPTIONS)
        return pipe

    def _warm_up(self) -> None:
        """Real generations, so the first user's image is as fast as every later one.

        Without compilation one image at the default size pays the first-call costs (CUDA kernels
        loaded, cuBLAS and cuDNN set up, allocator grown) and measures the speed. With it, two
        one-step generations compile the blocks for every image size and caption length (see
        WARMUP_PROMPTS). The other offered sizes are not warmed: they reuse the compiled code
        (measured, no recompilation), and the first image at a new size or caption length costs
        0.1-0.2 s more, once (per-shape set-up outside the compiled code, such as cuDNN's), while
        warming the 10 other default sizes would cost about 0.5 s each at every start.
        """
        size = self.settings.default_size
        if not self.compile:
            request = GenerationRequest(WARMUP_PROMPTS[0], size, self.settings.default_steps, seed=0)
            self._generate(request, None, CancelToken())
            return
        steps = min(COMPILE_WARMUP_STEPS, self.settings.default_steps)
        for number, prompt in enumerate(WARMUP_PROMPTS, start=1):
            result = self._generate(GenerationRequest(prompt, size, steps, seed=0), None, CancelToken())
            log.info("warm-up call %d of %d (compiling) took %.1f s", number, len(WARMUP_PROMPTS), result.seconds)
        # Those calls were mostly compilation: no speed figure is better than a badly wrong one.
        # The first real job measures it (queue estimates are missing only until then).
        self._seconds_per_image.clear()

    def _generate(
        self, request: GenerationRequest, progress: ProgressCallback | None, cancel: CancelToken
    ) -> GenerationResult:
        if cancel.cancelled:
            raise GenerationCancelled("cancelled before it started")
        pipe = self._pipe
        assert pipe is not None, "generation before load"
        images = []
        step_seconds: list[float] = []
        started = time.perf_counter()
        try:
            for index, seed in enumerate(request.seeds()):
                images.append(self._generate_one(pipe, request, seed, index, progress, cancel, step_seconds))
        except (GenerationCancelled, OutOfMemory):
            raise
        except torch.OutOfMemoryError as error:
            self._free_memory()
            raise OutOfMemory(
                f"the GPU ran out of memory at {request.size} ({request.count} image(s)); "
                "try a smaller size or fewer images"
            ) from error
        except Exception as error:
            log.exception("generation failed for %r", request)
            self._free_memory()
            raise GenerationError(f"the model failed on this request ({type(error).__name__})") from error
        seconds = time.perf_counter() - started
        self._record_speed(request, seconds)
        return GenerationResult(request, images, request.seeds(), seconds, step_seconds)

    def _generate_one(self, pipe, request, seed, index, progress, cancel, step_seconds):
        last_step_at = time.perf_counter()

        def on_step_end(_pipe, step: int, _timestep, callback_kwargs: dict) -> dict:
            nonlocal last_step_at
            now = time.perf_counter()
            step_seconds.append(now - last_step_at)
            last_step_at = now
            if progress is not None:
                progress(StepProgress(step + 1, request.steps, index))
            if cancel.cancelled:
                # Raising leaves the pipeline at once; setting pipe._interrupt would still decode.
                raise GenerationCancelled("cancelled while running")
            return callback_kwargs

        # A CPU generator gives the same starting noise, and so the same image, on any machine.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        output = pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            height=request.size.height,
            width=request.size.width,
            num_inference_steps=request.steps,  # Turbo settings on every call: the defaults are 50 / 5.0
            guidance_scale=request.guidance,
            generator=generator,
            output_type="pil",
            callback_on_step_end=on_step_end,
        )
        return output.images[0]

    def _record_speed(self, request: GenerationRequest, seconds: float) -> None:
        key = (request.size, request.steps)
        sample = seconds / request.count
        previous = self._seconds_per_image.get(key)
        self._seconds_per_image[key] = sample if previous is None else 0.7 * previous + 0.3 * sample

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"DEVICE={name} but torch sees no CUDA GPU (is the CUDA build of torch installed?)")
    return device


def _pick_compile(settings: Settings, device: torch.device) -> bool:
    """Compile by default on CUDA when the model is resident; COMPILE=0/1 decides otherwise.

    Offloading streams each block's weights in through hooks around the block's forward, which
    compiled blocks (fullgraph) cannot trace; it is not compiled, even with COMPILE=1.
    """
    offloading = settings.offload != "none" and device.type == "cuda"
    if offloading:
        if settings.compile:
            log.warning("COMPILE=1 ignored: OFFLOAD=%s runs uncompiled", settings.offload)
        return False
    return settings.compile if settings.compile is not None else device.type == "cuda"


def _use_persistent_compile_cache(cache_dir: Path) -> None:
    """Keep inductor's compiled kernels and graphs in DATA_DIR, so a restart loads them instead of
    compiling again (H100: warm-up 21 s at the first start, 9 s at a restart, bench/RESULTS.md;
    what remains is dynamo tracing the blocks again, which no cache of this torch version skips).

    An operator's own TORCHINDUCTOR_CACHE_DIR wins. The directory is read when compiling starts,
    so setting it here, after import, still takes effect; the caches are switched on explicitly
    because their environment switches are read when torch._inductor is first imported.
    """
    import torch._functorch.config
    import torch._inductor.config

    cache_dir = cache_dir.resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # bf16 on GPUs (fp16 overflows in this model and gives black images); fp32 on the CPU.
        return torch.bfloat16 if device.type in ("cuda", "mps") else torch.float32
    return getattr(torch, name)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _diffusers_at_least(major: int, minor: int) -> bool:
    parts = diffusers.__version__.split(".")
    return (int(parts[0]), int(parts[1])) >= (major, minor)
