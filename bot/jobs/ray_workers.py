"""WORKERS=ray: the bot keeps Discord, the store and the fair queue; Ray actors make the images.

Every worker is a named actor (bot/model/ray_worker.py) in the `zimage-bot` namespace. A watcher thread
keeps the pool in step with the cluster: it starts an actor for each GPU the cluster has (so a node
that joins with GPUs gets workers), adopts named worker actors started by anyone else, and takes out
workers whose actor is gone. A job whose actor dies mid-way goes back in line and runs on another
worker; with none left, jobs wait (bounded by MAX_QUEUE) and /status says why. If the Ray head cannot
be reached for a moment, /status says so and the watcher keeps trying; Ray itself ends this process once
the head has been gone for its GCS reconnect timeout (a driver cannot outlive its cluster), and the jobs
wait in the store for the next start.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray
from PIL import Image

from bot.generation import (
    CancelToken,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    ProgressCallback,
    StepProgress,
)
from bot.jobs.workers import WorkerLost, WorkerPool
from bot.settings import Settings
from bot.translations import Text

log = logging.getLogger(__name__)

NAMESPACE = "zimage-bot"  # the same as bot.model.ray_worker's (not imported: that would import torch here)
ACTOR_NAME_PREFIX = "zimage-worker-"
POLL_SECONDS = 0.25  # how often a running job's progress is asked for
WATCH_SECONDS = 5.0  # how often the cluster is looked at for workers that joined or left
_ACTOR_GONE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


@dataclass(frozen=True)
class RemoteMemory:
    """A worker's GPU memory as its actor last reported it (the fields of the model side's GpuMemory)."""

    name: str
    allocated_bytes: int
    peak_bytes: int
    total_bytes: int


class RayBackend:
    """One actor seen as a generation backend: submit() returns a future, as PipelineService's does."""

    def __init__(self, actor, name: str, description: dict) -> None:
        self.actor = actor
        self.actor_name = name
        self.device = f"{description['node']}/{description['device']}"
        self.ready = True
        self.load_report = description.get("load")
        self._memory = _memory_of(description)
        self._keys = itertools.count(1)
        self._seconds_per_image: dict[tuple, float] = {}
        # One thread per worker waits on Ray for its job (the runner gives each worker one job at a time).
        self._waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ray-{name}")

    def submit(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        prompt_check=None,
    ) -> Future[GenerationResult]:
        # `prompt_check` (a closure) is not sent to the actor in another process; the runner applies it
        # to the result's enhanced prompt before anything is posted.
        if not self.ready:
            raise WorkerLost(f"the Ray worker {self.actor_name} is gone")
        return self._waiter.submit(self._run, request, progress, cancel or CancelToken())

    def _run(self, request: GenerationRequest, progress: ProgressCallback | None, cancel: CancelToken):
        key = next(self._keys)
        try:
            reference = self.actor.generate.remote(key, request)
            last: StepProgress | None = None
            cancel_sent = False
            while not ray.wait([reference], timeout=POLL_SECONDS)[0]:
                if cancel.cancelled and not cancel_sent:
                    self.actor.cancel.remote(key)
                    cancel_sent = True
                if progress is not None:
                    step = ray.get(self.actor.progress.remote(key), timeout=10)
                    if step is not None and step != last:
                        progress(step)
                        last = step
            pngs, details = ray.get(reference)
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, GenerationError):
                raise cause from None  # cancelled, out of memory, bad input: the same as on a local worker
            raise GenerationError(Text("the worker failed ({error})", error=type(cause).__name__)) from None
        except (*_ACTOR_GONE, ray.exceptions.GetTimeoutError) as error:
            self.ready = False
            raise WorkerLost(f"the Ray worker {self.actor_name} died ({type(error).__name__})") from None
        except ray.exceptions.RayError as error:
            # The cluster itself (the head, the network): the job waits for a worker rather than failing.
            self.ready = False
            raise WorkerLost(f"lost contact with the Ray worker {self.actor_name} ({type(error).__name__})") from None
        images: list[Image.Image] = []
        for data in pngs:
            image = Image.open(io.BytesIO(data))
            image.load()
            images.append(image)
        key_of = (request.size, request.steps)
        self._seconds_per_image[key_of] = details["seconds"] / max(request.count, 1)
        return GenerationResult(request, images, **details)

    def estimate_seconds(self, request: GenerationRequest) -> float | None:
        per_image = self._seconds_per_image.get((request.size, request.steps))
        return per_image * request.count if per_image is not None else None

    def gpu_memory(self) -> RemoteMemory | None:
        return self._memory

    def refresh(self) -> None:
        """Ask the actor for its GPU memory (the watcher does, off the event loop)."""
        self._memory = _memory_of(ray.get(self.actor.describe.remote(), timeout=10))

    def close(self) -> None:
        self._waiter.shutdown(wait=False, cancel_futures=True)


class RayWorkers:
    """Connects to Ray, starts and adopts worker actors, and keeps the pool in step with the cluster."""

    def __init__(self, settings: Settings, pool: WorkerPool, *, watch_seconds: float = WATCH_SECONDS) -> None:
        self.settings = settings
        self.pool = pool
        self.watch_seconds = watch_seconds
        self.gpu = not all(device == "cpu" for device in settings.devices)
        self._own: dict[str, Any] = {}  # actors this bot started, by name
        self._pending: dict[str, Any] = {}  # name -> describe() reference of a loading actor
        self._adopted: dict[str, RayBackend] = {}
        self._failed: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def connect(self) -> None:
        """RAY_ADDRESS (Ray's own variable) names the cluster; without it, a local Ray instance starts."""
        address = os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, namespace=NAMESPACE, ignore_reinit_error=True, log_to_driver=False)
        log.info("connected to Ray (%s)", address or "a local instance")

    def start(self, *, wait_for: int = 1, timeout: float = 3600.0) -> None:
        """Start the actors for what the cluster has now and wait until `wait_for` of them are ready."""
        self.watch_once()
        if not self._pending and not self.pool.workers:
            raise GenerationError(
                "the Ray cluster has no GPU and no zimage-worker actor: add a node with GPUs, or set DEVICE=cpu to try "
                "the bot on CPU workers"
            )
        deadline = time.monotonic() + timeout
        while len(self.pool.in_rotation()) < wait_for:
            if time.monotonic() > deadline:
                raise GenerationError(f"no Ray worker was ready after {timeout:.0f} s")
            if not self._pending and not self.pool.workers and self._failed:
                raise GenerationError(f"every Ray worker failed to load ({', '.join(sorted(self._failed))})")
            time.sleep(0.2)
            self.watch_once()

    def watch_in_background(self) -> None:
        """Keep looking at the cluster, every `watch_seconds`, until stop()."""
        self._thread = threading.Thread(target=self._watch, name="ray-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for backend in self._adopted.values():
            backend.close()
        for actor in self._own.values():
            try:
                ray.kill(actor)
            except Exception:  # the cluster may be gone already
                log.debug("could not stop an actor", exc_info=True)

    # ----- the watcher -------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_seconds):
            try:
                self.watch_once()
                for backend in list(self._adopted.values()):
                    if backend.ready:
                        backend.refresh()
                if self.pool.problem:
                    log.info("the Ray cluster is reachable again")
                self.pool.problem = None
            except Exception as error:
                if not self.pool.problem:
                    log.error("lost contact with the Ray cluster: %s", error)
                self.pool.problem = f"the Ray cluster is out of reach ({type(error).__name__}); retrying"

    def watch_once(self) -> None:
        """One look at the cluster: start actors for new GPUs, adopt ready actors, drop the gone ones."""
        self._start_missing_actors()
        names = {
            entry["name"]
            for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry.get("namespace") == NAMESPACE and entry["name"].startswith(ACTOR_NAME_PREFIX)
        }
        for name in sorted(names - set(self._adopted) - set(self._pending) - self._failed):
            self._pending[name] = ray.get_actor(name, namespace=NAMESPACE).describe.remote()
        for name, reference in list(self._pending.items()):
            if not ray.wait([reference], timeout=0)[0]:
                continue
            del self._pending[name]
            try:
                description = ray.get(reference)
            except ray.exceptions.RayError as error:
                log.error("Ray worker %s could not load the model: %s", name, error)
                self._failed.add(name)
                self._own.pop(name, None)
                continue
            backend = RayBackend(ray.get_actor(name, namespace=NAMESPACE), name, description)
            self._adopted[name] = backend
            log.info("Ray worker %s joins (%s)", name, backend.device)
            self.pool.add_threadsafe(backend, name=backend.device)
        for name, backend in self._adopted.items():
            if backend.ready and name not in names:
                backend.ready = False  # its worker is taken out when the runner next looks (or uses it)
                log.warning("Ray worker %s left the cluster", name)

    def _start_missing_actors(self) -> None:
        from bot.model.ray_worker import start_actor  # the model side: torch is imported by the actors

        # cpu,cpu: two CPU workers, to try the shape on one machine; otherwise one a GPU of the cluster.
        wanted = int(ray.cluster_resources().get("GPU", 0)) if self.gpu else len(self.settings.devices)
        alive = sum(1 for name in self._own if name not in self._failed and self._alive(name))
        for _ in range(wanted - alive):
            name = f"{ACTOR_NAME_PREFIX}{uuid.uuid4().hex[:8]}"
            self._own[name] = start_actor(self.settings, name, gpu=self.gpu)
            log.info("starting Ray worker %s (%s)", name, "one GPU" if self.gpu else "CPU")

    def _alive(self, name: str) -> bool:
        backend = self._adopted.get(name)
        return backend is None or backend.ready


def _memory_of(description: dict) -> RemoteMemory | None:
    memory = description.get("memory")
    return RemoteMemory(**memory) if memory else None
