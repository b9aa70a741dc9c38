"""A GPU worker of a Ray cluster: an actor holding one resident PipelineService (WORKERS=ray).

The actor is threaded (max_concurrency above 1) so that progress questions and a cancel reach it while
a generation runs; the generations themselves still go one at a time through the service's single
thread. Images leave the actor as PNG bytes, the form they travel best in.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import ray

from bot.generation import CancelToken, GenerationRequest, StepProgress
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.model.pipeline_service import PipelineService

log = logging.getLogger(__name__)

ACTOR_NAME_PREFIX = "zimage-worker-"
NAMESPACE = "zimage-bot"
# Progress and cancel calls beside the running generation (and a status question or two).
ACTOR_CONCURRENCY = 4


@ray.remote(max_concurrency=ACTOR_CONCURRENCY)  # type: ignore[call-overload]
class GenerationActor:
    """One device of the cluster: Ray gives the actor its GPU (CUDA_VISIBLE_DEVICES), seen as cuda:0."""

    def __init__(self, settings: Settings, device: str) -> None:
        # Loaded and warmed up here: Ray runs no method before the constructor returns, so the bot's
        # first `describe()` answers once the worker is ready (or raises why it could not load).
        # Imported here, in the actor: the bot process that starts actors never imports torch.
        from bot.model.pipeline_service import PipelineService

        self.service: PipelineService = PipelineService(settings.for_device(device))
        self.load_report = asdict(self.service.load(warm_up=True))
        self._progress: dict[int, StepProgress] = {}
        self._cancels: dict[int, CancelToken] = {}
        self._lock = threading.Lock()

    def generate(self, job_key: int, request: GenerationRequest) -> tuple[list[bytes], dict[str, Any]]:
        """Make the images; returns the PNG bytes of each and the result's other fields."""
        cancel = CancelToken()
        with self._lock:
            self._cancels[job_key] = cancel

        def on_step(step: StepProgress) -> None:
            self._progress[job_key] = step

        try:
            result = self.service.generate(request, progress=on_step, cancel=cancel)
        finally:
            with self._lock:
                self._cancels.pop(job_key, None)
                self._progress.pop(job_key, None)
        encoded = []
        for image in result.images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=1)  # the bot re-encodes it with its parameters
            encoded.append(buffer.getvalue())
        # Plain values only: the result's images travel as PNG bytes, everything else as it is.
        details: dict[str, Any] = {
            "seeds": result.seeds,
            "seconds": result.seconds,
            "nsfw_scores": result.nsfw_scores,
            "safety_threshold": result.safety_threshold,
            "safety_seconds": result.safety_seconds,
            "prompt_used": result.prompt_used,
            "enhancement_note": result.enhancement_note,
        }
        return encoded, details

    def progress(self, job_key: int) -> StepProgress | None:
        return self._progress.get(job_key)

    def cancel(self, job_key: int) -> None:
        with self._lock:
            token = self._cancels.get(job_key)
        if token is not None:
            token.cancel()

    def estimate_seconds(self, request: GenerationRequest) -> float | None:
        return self.service.estimate_seconds(request)

    def describe(self) -> dict:
        """Where the actor runs and its GPU memory, for /status and the metrics."""
        memory = self.service.gpu_memory()
        return {
            "node": ray.get_runtime_context().get_node_id()[:8],
            "pid": os.getpid(),
            "device": str(self.service.device),
            "memory": asdict(memory) if memory is not None else None,
            "load": self.load_report,
        }


def start_actor(settings: Settings, name: str, *, gpu: bool) -> ray.actor.ActorHandle:
    """A named worker actor, loading: on a GPU of the cluster, or on a CPU (to try the shape)."""
    options = {"name": name, "namespace": NAMESPACE, "num_gpus": 1 if gpu else 0, "num_cpus": 1}
    return GenerationActor.options(**options).remote(settings, "cuda:0" if gpu else "cpu")  # type: ignore[attr-defined]
