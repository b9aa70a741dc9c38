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
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from bot.generation import (
    CancelToken,
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    OutOfMemory,
    ProgressCallback,
    StepProgress,
    validate_request,
)
from bot.image_input import load_source
from bot.image_size import ImageSize
from bot.model import OPERATOR_INDUCTOR_CACHE_DIR, bf16_copy
from bot.model.compile_artifacts import CompileArtifacts, artifact_key
from bot.model.enhancer import EnhancedPrompt, PromptEnhancer
from bot.model.errors import one_line
from bot.model.fp8 import Fp8Unsupported, check_fp8_support, quantize_to_fp8
from bot.model.img2img import image_to_image_pipeline, vae_tiling_for
from bot.model.offload import apply_offload
from bot.model.safety import SafetyChecker, SafetyModelError, fetch_classifier
from bot.model.styles import StyleBank, StyleError
from bot.settings import MAX_STEPS, Settings
from bot.translations import Text

# Read by diffusers when it is imported: load the shards of each model in parallel.
os.environ.setdefault("HF_ENABLE_PARALLEL_LOADING", "yes")

import diffusers
import torch

# Imported here rather than on first use (diffusers imports the pipeline, and with it transformers,
# lazily), so that the seconds this takes are paid with the other imports, not inside the model load.
from diffusers import ZImagePipeline
from diffusers.image_processor import VaeImageProcessor

log = logging.getLogger(__name__)

T = TypeVar("T")

# Two warm-up prompts whose captions differ in length (in tokens, and so in padded caption blocks of 32).
# Compiled blocks are specialised to the first shapes they see until a shape changes; then the
# compiler makes the changing dimension dynamic (automatic dynamic shapes), so that prompts of any
# length and every image size reuse the compiled code instead of recompiling, for seconds, on a
# user's request. With the real model the first call already generalises (the image and caption
# refiners share the block's code and differ in length); the second, a short one, is insurance that the
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


# Checks a prompt the enhancer wrote against what the requester's guild allows (blocked words, the
# minors rule): returns why it may not be used (a Text, shown in the requester's language), or None.
# Called on the GPU thread.
PromptCheck = Callable[[str], "Text | None"]

# Several devices load side by side (bot/model/devices.py), but from_pretrained builds each model on
# the meta device by patching torch.nn.Module for the whole process: any module built or weight set in
# another thread meanwhile lands on the meta device too (the safety classifier, the enhancer's head,
# LoRA layers). So every step that builds or moves modules holds this lock; warm-up runs in parallel.
_LOAD_LOCK = threading.Lock()


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to change."""


class _CompileSetupFailed(Exception):
    """torch.compile refused the transformer's blocks before any warm-up call."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


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
    enhancer: str = "off"  # "on", "off", or why it was turned off at start-up
    # "loaded": compiled code saved by an earlier start was used (bot/model/compile_artifacts.py);
    # "compiled": none usable, compiled afresh; "off": not compiled.
    compiled_code: str = "off"
    # "used": the transformer came from the local bf16 copy (BF16_COPY); "made": this start made it; "off".
    transformer_copy: str = "off"


class PipelineService:
    """Loads the pipeline once and runs every generation on its own single worker thread."""

    def __init__(self, settings: Settings, *, enhancer_options: Mapping | None = None) -> None:
        """`enhancer_options`: keyword arguments for the PromptEnhancer (limits, extra stop tokens)."""
        self.settings = settings
        self.device = _pick_device(settings.device)
        self.dtype = _pick_dtype(settings.dtype, self.device)
        self.compile = _pick_compile(settings, self.device)
        self.state = ServiceState.NEW
        self.load_report: LoadReport | None = None
        self._pipe: ZImagePipeline | None = None
        # The image safety classifier (SAFETY_MODEL), run on the worker thread after each job; None when off.
        self.safety_checker: SafetyChecker | None = None
        self._img2img: Any = None  # a ZImageImg2ImgPipeline over the same modules
        self.styles = StyleBank(settings.loras)
        self.enhancer: PromptEnhancer | None = None  # None with ENHANCER=off, or when the self-test failed
        self.enhancer_problem: Text | None = None  # why the self-test turned it off
        self._enhancer_options = dict(enhancer_options or {})
        self._state_lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zimage-gpu")
        # Measured seconds per image by (size, steps); feeds the queue's wait estimates.
        self._seconds_per_image: dict[tuple[ImageSize, int], float] = {}
        # The commit and snapshot folder the revision resolved to in the cache (keys of the artifacts
        # and of the bf16 copy), and what this start did with them.
        self._commit: str | None = None
        self._snapshot_dir: Path | None = None
        self._artifacts: CompileArtifacts | None = None
        self._transformer_copy = "off"

    # ----- lifecycle -------------------------------------------------------------------------

    def load(self, *, warm_up: bool = True) -> LoadReport:
        """Load (and warm up) the model on the worker thread; blocks until it is ready."""
        with self._state_lock:
            if self.state is not ServiceState.NEW:
                raise RuntimeError(f"the model service was already started (state: {self.state.value})")
            self.state = ServiceState.LOADING
        try:
            self.load_report = self._worker.submit(self._load_and_warm_up, warm_up).result()
        except BaseException:
            self.state = ServiceState.FAILED
            raise
        self.state = ServiceState.READY
        return self.load_report

    def close(self) -> None:
        """Stop taking work; the running job (if any) finishes first."""
        self.state = ServiceState.CLOSED
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._pipe = self._img2img = None
        self.safety_checker = None

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
        prompt_check: PromptCheck | None = None,
    ) -> Future[GenerationResult]:
        """Queue a validated request on the worker thread. Bad input raises InvalidRequest here.

        A request with `enhance` has its prompt rewritten first, on the same thread; `prompt_check`
        vets the rewrite (the original is used, with a note, when it returns a reason)."""
        request = validate_request(request, max_steps=MAX_STEPS)
        if request.style is not None:
            if request.style not in self.styles.names:
                if not self.styles.names:
                    raise InvalidRequest(
                        Text(
                            "Style {style} is not offered: no styles are set up on this bot.", style=repr(request.style)
                        )
                    )
                offered = ", ".join(self.styles.names)
                raise InvalidRequest(
                    Text(
                        "Style {style} is not offered; choose one of: {offered}.",
                        style=repr(request.style),
                        offered=offered,
                    )
                )
            if request.style_weight is None:
                # Recorded in the PNG's parameters, so the picture can be made again with the same weight.
                request = replace(request, style_weight=self.styles.default_weight(request.style))
        if not self.ready:
            raise GenerationError(Text("the model is not ready (state: {state})", state=self.state.value))
        return self._worker.submit(self._generate, request, progress, cancel or CancelToken(), prompt_check)

    def generate(self, request: GenerationRequest, **kwargs) -> GenerationResult:
        """Blocking convenience for the command line: submit and wait."""
        return self.submit(request, **kwargs).result()

    def enhance(self, prompt: str, seed: int) -> EnhancedPrompt:
        """Rewrite a prompt on the worker thread (blocking); the original, with a note, when it cannot."""
        if not self.ready:
            raise GenerationError(Text("the model is not ready (state: {state})", state=self.state.value))
        return self._worker.submit(self._enhance, prompt, seed).result()

    @property
    def enhancer_status(self) -> str:
        """`on`, `off` (ENHANCER=off) or why the start-up self-test turned it off."""
        if self.enhancer is not None:
            return "on"
        return f"off: {self.enhancer_problem}" if self.enhancer_problem else "off"

    def estimate_seconds(self, request: GenerationRequest) -> float | None:
        """Expected run time of `request` from what was measured so far; None before any measurement.

        The same size and steps measured before give the answer; otherwise the most similar measured
        work is scaled by steps x pixels (fixed costs such as the text encoder make a far-off
        measurement misleading, so the nearest one is used)."""
        measured = dict(self._seconds_per_image)  # the GPU thread may add to it meanwhile
        if not measured:
            return None
        per_image = measured.get((request.size, request.steps_to_run))
        if per_image is None:
            work = request.steps_to_run * request.size.pixels
            (size, steps), seconds = min(
                measured.items(), key=lambda item: abs(math.log(item[0][1] * item[0][0].pixels / work))
            )
            per_image = seconds * work / (steps * size.pixels)
        return per_image * request.count

    def call_on_worker(self, function: Callable[[ZImagePipeline], T]) -> T:
        """Run `function(pipeline)` on the worker thread and wait for it: for measurements and checks
        that need the pipeline itself (the benchmark), without a second thread ever touching it."""
        pipe = self._pipe
        if pipe is None or not self.ready:
            raise GenerationError(Text("the model is not ready (state: {state})", state=self.state.value))
        return self._worker.submit(function, pipe).result()

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
        # The small safety classifier first: a missing or unusable one stops start-up in seconds,
        # before the pipeline's minutes of loading.
        safety_seconds = self._load_safety_checker() if settings.safety_model else 0.0
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
            report = inspect_cache(settings.model_id, settings.model_revision)
        self._commit, self._snapshot_dir = report.commit, report.snapshot_dir

        started = time.perf_counter()
        self._load_pipeline()
        load_seconds = time.perf_counter() - started + safety_seconds
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
            if self.safety_checker is not None:
                try:
                    self.safety_checker.warm_up()
                except SafetyModelError as error:
                    raise ModelLoadError(str(error)) from error
            self._warm_up()
        if settings.enhancer:
            self._build_enhancer(self_test=warm_up)
        compiled_code = "off"
        if self.compile and self._artifacts is not None:
            compiled_code = "loaded" if self._artifacts.loaded and self._artifacts.loaded.loaded else "compiled"
            if warm_up:
                # Only after a warm-up that compiled without error: what it compiled is known good.
                self._artifacts.save()
        if warm_up:
            warmup_seconds = time.perf_counter() - started
            log.info(
                "warm-up took %.1f s%s",
                warmup_seconds,
                " (compiled code loaded from DATA_DIR)" if compiled_code == "loaded" else "",
            )
        return LoadReport(
            from_cache, load_seconds, warmup_seconds, self.enhancer_status, compiled_code, self._transformer_copy
        )

    def _load_pipeline(self) -> None:
        """Load the pipeline and its image-to-image twin (self._pipe, self._img2img)."""
        try:
            with _LOAD_LOCK:
                self._pipe = self._from_pretrained()
                self._img2img = image_to_image_pipeline(self._pipe)
        except _CompileSetupFailed as failed:
            # Some blocks may be wrapped already: a fresh, uncompiled copy is the one clean state.
            self._give_up_compiling(failed.error)
            self._free_memory()
            self._load_pipeline()
        except ModelLoadError:
            raise
        except Exception as error:
            if not _out_of_memory(error):
                raise
            self._free_memory()
            raise ModelLoadError(self._out_of_memory_advice("while loading the model")) from error

    def _out_of_memory_advice(self, when: str) -> str:
        """What to change when the model does not fit: the next lighter OFFLOAD mode, or more memory."""
        if self.device.type != "cuda":
            return (
                f"the computer ran out of memory {when} on {self.device}; free some memory or use a machine with more"
            )
        total = torch.cuda.get_device_properties(self.device.index or 0).total_memory / 2**30
        fix = {
            "none": "set OFFLOAD=model (the transformer streams from system RAM) or use a GPU with more memory",
            "model": "set OFFLOAD=sequential (the text encoder streams too) or use a GPU with more memory",
        }.get(self.settings.offload, "use a GPU with more memory, or stop other programs that use it")
        return f"the GPU ({total:.0f} GiB) ran out of memory {when} with OFFLOAD={self.settings.offload}: {fix}"

    def _load_safety_checker(self) -> float:
        """Fetch (if needed) and load SAFETY_MODEL onto the pipeline's device; returns the seconds it took."""
        model_id = self.settings.safety_model
        assert model_id is not None
        snapshot, from_cache = fetch_classifier(model_id)
        started = time.perf_counter()
        try:
            with _LOAD_LOCK:
                self.safety_checker = SafetyChecker.load(model_id, snapshot, self.device, self.dtype)
        except SafetyModelError as error:
            raise ModelLoadError(str(error)) from error
        seconds = time.perf_counter() - started
        log.info(
            "safety model %s loaded in %.1f s (%s; label %r, threshold %g)",
            model_id,
            seconds,
            "local cache" if from_cache else "downloaded",
            self.safety_checker.model.config.id2label[self.safety_checker.nsfw_index],
            self.settings.safety_threshold,
        )
        return seconds

    def _build_enhancer(self, *, self_test: bool) -> None:
        """The enhancer on the resident text encoder; with `self_test`, one fixed rewrite (which also
        compiles its decoding on CUDA) decides whether it may be used."""
        pipe: Any = self._pipe
        assert pipe is not None
        # Offloaded weights live on the CPU between uses; compiled decoding cannot follow them.
        compile_decoding = self.compile and self.settings.offload == "none"
        try:
            with _LOAD_LOCK:  # it builds a model and sets its head's weight
                enhancer = PromptEnhancer(
                    pipe.text_encoder, pipe.tokenizer, compile=compile_decoding, **self._enhancer_options
                )
        except (ValueError, AttributeError, TypeError) as error:
            self.enhancer_problem = Text("it cannot be built on this text encoder ({error})", error=str(error))
            log.warning("prompt enhancer turned off: %s", self.enhancer_problem)
            return
        if self_test:
            started = time.perf_counter()
            problem = enhancer.self_test()
            if problem is not None:
                self.enhancer_problem = problem
                log.warning("prompt enhancer turned off: %s (ENHANCER=off silences this)", problem)
                return
            log.info(
                "prompt enhancer ready (self-test %.1f s, %s decoding)",
                time.perf_counter() - started,
                "compiled" if enhancer.fast else "plain",
            )
        self.enhancer = enhancer

    def _from_pretrained(self) -> ZImagePipeline:
        settings = self.settings
        offload = settings.offload if self.device.type == "cuda" else "none"
        if settings.offload != "none" and offload == "none":
            log.warning("OFFLOAD=%s ignored: offloading needs a CUDA device", settings.offload)
        kwargs: dict = {"revision": settings.model_revision, "local_files_only": True}
        kwargs["dtype" if _diffusers_at_least(0, 42) else "torch_dtype"] = self.dtype
        if offload == "none" and self.device.type == "cuda":
            # Straight onto the GPU, shard by shard (in parallel: HF_ENABLE_PARALLEL_LOADING above),
            # cast to bf16 on the way: no copy of the model in host memory, faster than loading on the
            # CPU and then .to("cuda") (bench/RESULTS.md).
            kwargs["device_map"] = str(self.device)
        transformer = self._bf16_transformer(kwargs)
        if transformer is not None:
            kwargs["transformer"] = transformer
        try:
            pipe = ZImagePipeline.from_pretrained(settings.model_id, **kwargs)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"could not load {settings.model_id}@{settings.model_revision} from the cache: {error}. "
                "Run `zimage-bot cache-check` to see what is missing."
            ) from error
        if offload == "none" and self.device.type != "cuda":
            pipe.to(self.device)
        elif offload != "none":
            try:
                apply_offload(pipe, offload, self.device)
            except Exception as error:
                if _out_of_memory(error):
                    raise
                log.debug("OFFLOAD=%s failed", offload, exc_info=True)
                raise ModelLoadError(
                    f"OFFLOAD={offload} could not be set up ({one_line(error)}); set OFFLOAD=none, "
                    "or update diffusers and accelerate"
                ) from error
        pipe.set_progress_bar_config(disable=True)
        if settings.attention_backend:
            try:
                pipe.transformer.set_attention_backend(settings.attention_backend)
            except (ValueError, ImportError, RuntimeError) as error:
                raise ModelLoadError(f"ATTENTION_BACKEND={settings.attention_backend!r}: {error}") from error
        if settings.quantize == "fp8" and offload == "none" and settings.loras:
            # The FP8 layers replace the Linear layers that LoRA adapters attach to.
            raise ModelLoadError("LORAS does not combine with QUANTIZE=fp8: set QUANTIZE=none to use styles")
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
        try:
            # Before compiling: with compilation the LoRAs go into a slot prepared for hot-swapping.
            self.styles.load(pipe, hotswap=self.compile)
        except StyleError as error:
            raise ModelLoadError(str(error)) from error
        if self.compile:
            _use_persistent_compile_cache(settings.data_dir / "compile-cache")
            self._load_compile_artifacts(settings.data_dir / "compile-cache")
            try:
                pipe.transformer.compile_repeated_blocks(**COMPILE_OPTIONS)
            except Exception as error:
                raise _CompileSetupFailed(error) from error
        return pipe

    def _load_compile_artifacts(self, cache_dir: Path) -> None:
        """Hand the compiled code an earlier start saved (same software, GPU, model and settings) to
        torch before anything compiles; see bot/model/compile_artifacts.py."""
        settings = self.settings
        key = artifact_key(
            model_id=settings.model_id,
            commit=self._commit,
            device=self.device,
            dtype=self.dtype,
            compile_options=COMPILE_OPTIONS,
            attention_backend=settings.attention_backend,
            quantize=settings.quantize,
            styles=tuple(source.name for source in settings.loras),
            warmup_sizes=(str(settings.default_size),),
            enhancer=settings.enhancer,
        )
        self._artifacts = CompileArtifacts(cache_dir, key)
        if torch.compiler.config.job_id is None:
            # torch keeps its profile of which dimensions are dynamic only under a job id; with it, a
            # restart compiles them dynamic at once instead of learning it again from the warm-up.
            torch.compiler.config.job_id = self._artifacts.job_id
        self._artifacts.load()

    def _bf16_transformer(self, kwargs: Mapping) -> Any:
        """The transformer from the local bf16 copy (BF16_COPY=1; made first if needed), or None for
        the usual path: the copy is off, unusable here, or could not be made or read."""
        settings = self.settings
        if not settings.bf16_copy:
            return None
        if self.dtype != torch.bfloat16:
            log.warning("BF16_COPY=1 ignored: the model runs in %s, the copy is bf16", _dtype_name(self.dtype))
            return None
        if self._commit is None or self._snapshot_dir is None:
            log.warning("BF16_COPY=1 ignored: the cache has no commit for revision %s", settings.model_revision)
            return None
        copy = bf16_copy.prepare(settings.data_dir, settings.model_id, self._commit, self._snapshot_dir)
        if copy is None:
            return None
        from diffusers import ZImageTransformer2DModel

        options = {name: value for name, value in kwargs.items() if name in ("dtype", "torch_dtype", "device_map")}
        try:  # the caller holds _LOAD_LOCK
            transformer = ZImageTransformer2DModel.from_pretrained(copy.transformer_dir, **options)
        except Exception as error:
            if _out_of_memory(error):
                raise
            log.warning(
                "BF16_COPY: the copy in %s could not be loaded (%s); deleting it and loading the model as usual",
                copy.transformer_dir,
                one_line(error),
            )
            bf16_copy.discard(copy.transformer_dir)
            return None
        self._transformer_copy = "made" if copy.made else "used"
        return transformer

    def _warm_up(self) -> None:
        """Warm up; a compiler failure (a missing C++ compiler, a Triton error) falls back to the
        uncompiled model with a warning instead of stopping the bot, and running out of memory says
        which OFFLOAD mode to use."""
        try:
            self._warm_up_calls()
        except Exception as error:
            if _out_of_memory(error):
                self._free_memory()
                size = self.settings.default_size
                raise ModelLoadError(self._out_of_memory_advice(f"while warming up at {size}")) from error
            if not self.compile:
                log.debug("warm-up failed", exc_info=True)
                raise ModelLoadError(f"the warm-up generation failed ({one_line(error)})") from error
            self._give_up_compiling(error)
            # A fresh, uncompiled copy: no compiled block and no half-built compiler state survives.
            self._pipe = self._img2img = None
            self._free_memory()
            self._load_pipeline()
            self._warm_up()

    def _give_up_compiling(self, error: Exception) -> None:
        log.warning(
            "compiling the transformer failed (%s); running it uncompiled (slower). Set COMPILE=0 to skip "
            "compiling, or fix the compiler (LOG_LEVEL=DEBUG shows the details)",
            one_line(error),
        )
        log.debug("the compile failure", exc_info=True)
        if self._artifacts is not None:
            self._artifacts.discard()
        torch.compiler.reset()
        self.compile = False

    def _warm_up_calls(self) -> None:
        """Real generations, so the first user's image is as fast as every later one.

        Without compilation one image at the default size pays the first-call costs (CUDA kernels
        loaded, cuBLAS and cuDNN set up, allocator grown) and measures the speed. With it, two
        one-step generations compile the blocks for every image size and caption length (see
        WARMUP_PROMPTS). The other offered sizes are not warmed: they reuse the compiled code
        (measured, no recompilation), and the first image at a new size or caption length costs
        a little more, once (per-shape set-up outside the compiled code, such as cuDNN's), while
        warming the other default sizes would cost a generation each at every start (bench/README.md).
        """
        size = self.settings.default_size
        self._warm_up_image_to_image(size)
        if not self.compile:
            request = GenerationRequest(WARMUP_PROMPTS[0], size, self.settings.default_steps, seed=0)
            self._run(request, None, CancelToken())
            return
        steps = min(COMPILE_WARMUP_STEPS, self.settings.default_steps)
        for number, prompt in enumerate(WARMUP_PROMPTS, start=1):
            result = self._run(GenerationRequest(prompt, size, steps, seed=0), None, CancelToken())
            log.info("warm-up call %d of %d (compiling) took %.1f s", number, len(WARMUP_PROMPTS), result.seconds)
        # Those calls were mostly compilation: no speed figure is better than a badly wrong one.
        # The first real job measures it (queue estimates are missing only until then).
        self._seconds_per_image.clear()

    def _warm_up_image_to_image(self, size: ImageSize) -> None:
        """One step of image-to-image at the default size and one of its Upscale: the VAE encoder's
        first-call set-up, the upscale size's shapes (and, with compilation, the transformer's
        sequence length at the largest size) are paid here rather than by a user. The style slot is
        run once too, so its compiled code exists before the first styled job."""
        from PIL import Image

        from bot.image_input import save_input, upscale_size

        source = save_input(Image.new("RGB", (size.width, size.height), (128, 128, 128)), self.settings.output_dir)
        base = GenerationRequest(WARMUP_PROMPTS[0], size, 1, seed=0, source_image=str(source.path), strength=1.0)
        jobs = [base, replace(base, size=upscale_size(size))]
        if self.styles.names:
            jobs.append(
                replace(base, style=self.styles.names[0], style_weight=self.styles.default_weight(self.styles.names[0]))
            )
        for job in jobs:
            result = self._run(job, None, CancelToken())
            log.info("warm-up: image-to-image at %s took %.1f s", job.size, result.seconds)
            # First calls are no speed figure for the queue's estimates.
            self._seconds_per_image.pop((job.size, job.steps_to_run), None)

    def _enhance(self, prompt: str, seed: int, prompt_check: PromptCheck | None = None) -> EnhancedPrompt:
        if self.enhancer is None:
            note = Text("the prompt enhancer is turned off on this bot")
            if self.enhancer_problem:
                note = Text("the prompt enhancer was turned off at start-up ({reason})", reason=self.enhancer_problem)
            return EnhancedPrompt(prompt, prompt, note)
        try:
            result = self.enhancer.enhance(prompt, seed)
        except torch.OutOfMemoryError:
            # The picture may still fit once the rewrite's cache is freed: draw the original prompt.
            log.warning("the prompt enhancer ran out of GPU memory; drawing the original prompt")
            self._free_memory()
            return EnhancedPrompt(prompt, prompt, Text("the enhancer ran out of GPU memory"))
        if result.enhanced and prompt_check is not None:
            reason = prompt_check(result.text)
            if reason:
                return EnhancedPrompt(prompt, prompt, reason, result.seconds, result.raw, result.token_ids)
        return result

    def _generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None,
        cancel: CancelToken,
        prompt_check: PromptCheck | None = None,
    ) -> GenerationResult:
        if cancel.cancelled:
            raise GenerationCancelled("cancelled before it started")
        if request.source_image is not None and not Path(request.source_image).is_file():
            # Retention removed it while the job waited (or the operator cleaned OUTPUT_DIR).
            raise GenerationError(
                Text("the picture this job starts from was removed (old pictures are deleted after a while)")
            )
        try:
            return self._run(request, progress, cancel, prompt_check)
        except GenerationError:  # cancelled, a missing style, ...: already says what happened
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
            raise GenerationError(
                Text("the model failed on this request ({error})", error=type(error).__name__)
            ) from error

    def _run(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None,
        cancel: CancelToken,
        prompt_check: PromptCheck | None = None,
    ) -> GenerationResult:
        pipe = self._pipe
        assert pipe is not None, "generation before load"
        started = time.perf_counter()
        enhanced: EnhancedPrompt | None = None
        drawn = request
        if request.enhance:
            # The job's seed seeds the rewrite too: the same job gives the same prompt and pixels.
            enhanced = self._enhance(request.prompt, request.seed, prompt_check)
            drawn = replace(request, prompt=enhanced.text)
            if cancel.cancelled:
                raise GenerationCancelled("cancelled while running")
        decoded = [
            self._generate_one(pipe, drawn, seed, index, progress, cancel) for index, seed in enumerate(request.seeds())
        ]
        # The same conversion as the pipeline's own PIL output (same pixels); it waits for the VAE's work,
        # so the check's time below is its own.
        images = [VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(tensor[None]))[0] for tensor in decoded]
        nsfw_scores: list[float | None] = [None] * len(images)
        threshold = None
        safety_started = time.perf_counter()
        if self.safety_checker is not None:
            # Never raises: an image whose check failed keeps None, and the result flags it. The decoded
            # tensors are still on the device: the check preprocesses them there, not on the CPU.
            nsfw_scores = self.safety_checker.scores(images, decoded)
            threshold = self.settings.safety_threshold
        safety_seconds = time.perf_counter() - safety_started
        seconds = time.perf_counter() - started
        # The rewrite's time is not drawing time: it would skew the queue's estimates by size and steps.
        self._record_speed(request, seconds - (enhanced.seconds if enhanced else 0.0))
        return GenerationResult(
            request,
            images,
            request.seeds(),
            seconds,
            nsfw_scores=nsfw_scores,
            safety_threshold=threshold,
            safety_seconds=safety_seconds,
            prompt_used=drawn.prompt,
            enhancement_note=enhanced.note if enhanced else None,
        )

    def _generate_one(
        self,
        pipe: Any,  # a ZImagePipeline: its decorated __call__ is opaque to type checkers
        request: GenerationRequest,
        seed: int,
        index: int,
        progress: ProgressCallback | None,
        cancel: CancelToken,
    ) -> torch.Tensor:
        """One image as the VAE decoded it: (C, H, W), values in [0, 1], on the pipeline's device."""

        def on_step_end(_pipe: Any, step: int, _timestep: Any, callback_kwargs: dict) -> dict:
            if progress is not None:
                progress(StepProgress(step + 1, request.steps_to_run, index))
            if cancel.cancelled:
                # Raising leaves the pipeline at once; setting pipe._interrupt would still decode.
                raise GenerationCancelled("cancelled while running")
            return callback_kwargs

        # A CPU generator gives the same starting noise, and so the same image, on any machine.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        arguments: dict = dict(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            height=request.size.height,
            width=request.size.width,
            num_inference_steps=request.steps,  # Turbo settings on every call: the defaults are 50 / 5.0
            guidance_scale=request.guidance,
            generator=generator,
            output_type="pt",  # the safety check reads the tensor on the device; _run makes the PIL image
            callback_on_step_end=on_step_end,
        )
        self.styles.apply(pipe, request.style, request.style_weight)
        if request.source_image is None:
            return pipe(**arguments).images[0]
        assert self._img2img is not None
        # Upscale asks for a larger size than the saved picture: it is enlarged here, then redrawn.
        arguments.update(image=load_source(request.source_image, request.size), strength=request.strength)
        try:
            with vae_tiling_for(pipe.vae, request.size, self.device):
                return self._img2img(**arguments).images[0]
        except torch.OutOfMemoryError:
            # The estimate of what the VAE needs was short: once more, tiled, from the same seed.
            self._free_memory()
            log.warning("out of memory at %s without VAE tiling; trying again with it", request.size)
        arguments["generator"] = torch.Generator(device="cpu").manual_seed(seed)
        with vae_tiling_for(pipe.vae, request.size, self.device, force=True):
            return self._img2img(**arguments).images[0]

    def _record_speed(self, request: GenerationRequest, seconds: float) -> None:
        key = (request.size, request.steps_to_run)
        sample = seconds / request.count
        previous = self._seconds_per_image.get(key)
        self._seconds_per_image[key] = sample if previous is None else 0.7 * previous + 0.3 * sample

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _out_of_memory(error: BaseException) -> bool:
    """CUDA's out-of-memory error, or the CPU allocator's (which torch raises as a RuntimeError)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


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
    """Keep inductor's compiled kernels and graphs, and dynamo's profile of dynamic dimensions, in
    DATA_DIR, so a restart (and a host reboot, which empties the temporary folder torch uses by default)
    loads them instead of compiling again (bench/RESULTS.md compares the warm-up of a first start and
    a restart; the compile artifacts, bot/model/compile_artifacts.py, add what these caches miss).

    An operator's own TORCHINDUCTOR_CACHE_DIR wins. torch has already set the variable to its default
    when torch._dynamo was imported, so it is set here, not defaulted; inductor reads it whenever it
    looks for its cache. The caches are switched on explicitly because their environment switches are
    read when torch._inductor is first imported.
    """
    import torch._functorch.config
    import torch._inductor.config

    cache_dir = cache_dir.resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = OPERATOR_INDUCTOR_CACHE_DIR or str(cache_dir)
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
