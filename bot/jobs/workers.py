"""The workers that make images: one per device, each driving one model service, one job at a time.

The one-GPU shape is a pool of one. With several, the runner runs one loop per worker over the same fair
queue, so the next job goes to the next worker that is free. A worker that keeps failing is taken out of
rotation (and shown so in /status); the jobs go on with the others.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.generation import CancelToken, GenerationError, GenerationRequest, GenerationResult, ProgressCallback
from bot.translations import Text

log = logging.getLogger(__name__)

# Failures in a row (jobs that raised, not cancels or bad input) after which a worker leaves rotation.
MAX_FAILURES_IN_A_ROW = 3
THROUGHPUT_WINDOW = 300.0  # seconds of finished jobs that /status's images per second looks at


class GenerationBackend(Protocol):
    """What a worker drives: the model side's PipelineService (or a remote stand-in for one). Only
    submit and estimate_seconds are needed; device, ready and gpu_memory are used when present."""

    @property
    def device(self) -> Any: ...

    @property
    def ready(self) -> bool: ...

    def submit(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        prompt_check: Callable[[str], Text | None] | None = None,
    ) -> Future[GenerationResult]: ...

    def estimate_seconds(self, request: GenerationRequest) -> float | None: ...

    def gpu_memory(self) -> Any: ...


class WorkerLost(GenerationError):
    """The worker itself is gone (a Ray actor or its node died): the job goes back in line, whole."""


class PoolObserver(Protocol):
    """Told what the workers and jobs do (the metrics, when METRICS_PORT is set)."""

    def job_started(self, worker: Worker, waited_seconds: float) -> None: ...

    def job_made(self, worker: Worker, result: GenerationResult) -> None: ...

    def job_state(self, state: str) -> None: ...

    def delivery_failed(self) -> None: ...


class WorkerState(str, enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    OUT = "out of rotation"


@dataclass(eq=False)
class Worker:
    backend: GenerationBackend
    name: str
    state: WorkerState = WorkerState.IDLE
    jobs_done: int = 0
    images_done: int = 0
    failures_in_a_row: int = 0
    job_id: int | None = None  # the job it is making
    why_out: str | None = None

    @property
    def in_rotation(self) -> bool:
        return self.state is not WorkerState.OUT and _ready(self.backend)

    async def generate(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressCallback,
        cancel: CancelToken,
        prompt_check: Callable[[str], Text | None] | None = None,
    ) -> GenerationResult:
        """Run one request on this worker's device; raises the backend's GenerationError subclasses.
        `prompt_check` vets an enhanced prompt on the GPU thread (the runner checks again afterwards)."""
        extra = {"prompt_check": prompt_check} if prompt_check is not None else {}
        return await asyncio.wrap_future(self.backend.submit(request, progress=progress, cancel=cancel, **extra))

    def gpu_memory(self) -> Any:
        reading = getattr(self.backend, "gpu_memory", None)
        return reading() if reading is not None else None


@dataclass
class WorkerPool:
    """Every worker the runner dispatches to, and what /status and the metrics say about them."""

    workers: list[Worker] = field(default_factory=list)
    _finished: deque[tuple[float, int]] = field(default_factory=deque)  # (time, images) of recent jobs
    _listeners: list[Callable[[Worker], None]] = field(default_factory=list)
    _started: float = field(default_factory=time.monotonic)
    observers: list[PoolObserver] = field(default_factory=list)
    problem: Text | None = None  # what keeps workers from joining (the Ray cluster out of reach)
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def of(cls, backends: list[GenerationBackend]) -> WorkerPool:
        pool = cls()
        for backend in backends:
            pool.add(backend)
        return pool

    def add(self, backend: GenerationBackend, name: str | None = None) -> Worker:
        """A worker joins (at start, or later: a new GPU of a cluster); the runner starts its loop."""
        worker = Worker(backend, name or str(getattr(backend, "device", f"worker {len(self.workers)}")))
        self.workers.append(worker)
        for listener in self._listeners:
            listener(worker)
        return worker

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the runner works on: workers that join from another thread join there."""
        self._loop = loop

    def add_threadsafe(self, backend: GenerationBackend, name: str | None = None) -> None:
        """`add`, from any thread (a watcher of a Ray cluster)."""
        if self._loop is None:
            self.add(backend, name)
        else:
            self._loop.call_soon_threadsafe(self.add, backend, name)

    def on_join(self, listener: Callable[[Worker], None]) -> None:
        self._listeners.append(listener)

    def in_rotation(self) -> list[Worker]:
        return [worker for worker in self.workers if worker.in_rotation]

    def others_in_rotation(self, worker: Worker) -> bool:
        return any(other is not worker and other.in_rotation for other in self.workers)

    # ----- what happened ---------------------------------------------------------------------

    def started(self, worker: Worker, job_id: int, waited_seconds: float = 0.0) -> None:
        worker.state, worker.job_id = WorkerState.BUSY, job_id
        for observer in self.observers:
            observer.job_started(worker, waited_seconds)

    def succeeded(self, worker: Worker, result: GenerationResult) -> None:
        worker.jobs_done += 1
        worker.images_done += len(result.images)
        worker.failures_in_a_row = 0
        self._finished.append((time.monotonic(), len(result.images)))
        self._forget_old()
        for observer in self.observers:
            observer.job_made(worker, result)

    def job_state(self, state: str) -> None:
        """A job moved to `state` (queued, running, done, delivered, failed, cancelled)."""
        for observer in self.observers:
            observer.job_state(state)

    def delivery_failed(self) -> None:
        for observer in self.observers:
            observer.delivery_failed()

    def failed(self, worker: Worker, error: BaseException) -> bool:
        """Count a failure of `worker`; True when that took it out of rotation."""
        worker.failures_in_a_row += 1
        if not _ready(worker.backend):
            self.take_out(worker, f"its model is no longer loaded ({error})")
        elif worker.failures_in_a_row >= MAX_FAILURES_IN_A_ROW and self.others_in_rotation(worker):
            # The last worker stays: with one GPU, a run of failed jobs (say, too large for its memory)
            # must not stop the jobs after them.
            self.take_out(worker, f"{worker.failures_in_a_row} failures in a row, the last: {error}")
        return not worker.in_rotation

    def take_out(self, worker: Worker, why: str) -> None:
        if worker.in_rotation:
            log.error("worker %s taken out of rotation: %s", worker.name, why)
        worker.state, worker.why_out = WorkerState.OUT, why

    def stopped(self, worker: Worker) -> None:
        worker.job_id = None
        if worker.in_rotation:
            worker.state = WorkerState.IDLE

    # ----- views -----------------------------------------------------------------------------

    def estimate_seconds(self, request: GenerationRequest) -> float | None:
        """A job's expected run time on one worker, from any worker that has measured something."""
        for worker in self.in_rotation():
            estimate = worker.backend.estimate_seconds(request)
            if estimate is not None:
                return estimate
        return None

    def images_per_second(self) -> float:
        """Images finished per second over the last few minutes, all workers together."""
        self._forget_old()
        span = min(max(time.monotonic() - self._started, 1.0), THROUGHPUT_WINDOW)
        return sum(images for _, images in self._finished) / span

    def _forget_old(self) -> None:
        horizon = time.monotonic() - THROUGHPUT_WINDOW
        while self._finished and self._finished[0][0] < horizon:
            self._finished.popleft()


def _ready(backend: GenerationBackend) -> bool:
    # A backend that does not say (a plain wrapper around a service) counts as ready.
    return bool(getattr(backend, "ready", True))
