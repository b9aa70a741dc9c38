"""WORKERS=ray: the bot keeps Discord, the store and the fair queue; Ray actors make the images.

Every worker is a named actor (bot/model/ray_worker.py) in the `zimage-bot` namespace. The Ray driver
(ray.init, the actor handles, the watcher that starts and adopts actors) runs in a child process
(bot/jobs/ray_driver.py), because Ray ends a driver whose head has been gone for a while: losing the
head ends the child, never the bot. Here, one proxy backend per worker the child reports sends jobs down
the pipe and turns the answers into futures. When the child ends, every job in flight goes back in line
(WorkerLost), its workers leave rotation, /status says the cluster is out of reach, and a new child is
started every few seconds until one connects; its workers then join and the waiting jobs run.
"""

from __future__ import annotations

import io
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from PIL import Image

from bot.generation import (
    CancelToken,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    ProgressCallback,
)
from bot.jobs.ray_driver import NAMESPACE, run_driver
from bot.jobs.workers import WorkerLost, WorkerPool
from bot.settings import Settings
from bot.translations import Text

__all__ = ["NAMESPACE", "RayBackend", "RayWorkers", "RemoteMemory"]

log = logging.getLogger(__name__)

WATCH_SECONDS = 5.0  # how often the child looks at the cluster for workers that joined or left
RETRY_SECONDS = 5.0  # how long after losing the driver a new one is started (and between tries)
CONNECT_SECONDS = 60.0  # a driver child not connected by then is ended (at start: an error; later: another is tried)
CANCEL_SECONDS = 0.1  # how often the jobs in flight are looked at for a cancel
# A driver whose looks at the cluster stop coming back is waiting on a lost head (Ray ends it later).
SILENT_SECONDS = 20.0


@dataclass(frozen=True)
class RemoteMemory:
    """A worker's GPU memory as its actor last reported it (the fields of the model side's GpuMemory)."""

    name: str
    allocated_bytes: int
    peak_bytes: int
    total_bytes: int


@dataclass
class _Job:
    future: Future[GenerationResult]
    backend: RayBackend
    request: GenerationRequest
    progress: ProgressCallback | None
    cancel: CancelToken
    cancel_sent: bool = False


class RayBackend:
    """One actor seen as a generation backend: submit() returns a future, as PipelineService's does."""

    def __init__(self, cluster: RayWorkers, name: str, description: dict) -> None:
        self.cluster = cluster
        self.actor_name = name
        self.device = f"{description['node']}/{description['device']}"
        self.ready = True
        self.load_report = description.get("load")
        self._memory = _memory_of(description.get("memory"))
        self._seconds_per_image: dict[tuple, float] = {}

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
        return self.cluster.submit(self, request, progress, cancel or CancelToken())

    def finished(self, request: GenerationRequest, seconds: float) -> None:
        self._seconds_per_image[(request.size, request.steps)] = seconds / max(request.count, 1)

    def estimate_seconds(self, request: GenerationRequest) -> float | None:
        per_image = self._seconds_per_image.get((request.size, request.steps))
        return per_image * request.count if per_image is not None else None

    def gpu_memory(self) -> RemoteMemory | None:
        return self._memory

    def refresh(self, memory: dict | None = None) -> None:
        """The actor's GPU memory, as the driver last asked it."""
        self._memory = _memory_of(memory)

    def close(self) -> None:
        self.ready = False


class RayWorkers:
    """Starts the Ray driver child, keeps the pool in step with what it reports, and starts a new one
    when it ends (once watch_in_background() was called; before that, its end is a start-up error)."""

    def __init__(
        self,
        settings: Settings,
        pool: WorkerPool,
        *,
        watch_seconds: float = WATCH_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        connect_seconds: float = CONNECT_SECONDS,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.watch_seconds = watch_seconds
        self.retry_seconds = retry_seconds
        self.connect_seconds = connect_seconds
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no Ray state inherited
        self._process: Any = None
        self._connection: Any = None
        self._outbox: queue.Queue[tuple | None] = queue.Queue()
        self._lock = threading.Lock()
        self._backends: dict[str, RayBackend] = {}
        self._jobs: dict[int, _Job] = {}
        self._keys = itertools.count(1)
        self._loading: set[str] = set()
        self._failed: set[str] = set()
        self._fatal: str | None = None  # why start() cannot go on
        self._last_watch = time.monotonic()  # when the driver last looked at the cluster
        self._silent = False  # the problem shown is the driver's silence (its next look clears it)
        self.cluster_gpus = 0  # the GPUs of the cluster when the driver connected
        self._supervise = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def driver_pid(self) -> int | None:
        """The process id of the Ray driver child (None while there is none)."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    # ----- start and stop ----------------------------------------------------------------------------

    def connect(self) -> None:
        """Start the driver child; RAY_ADDRESS (Ray's own variable) names the cluster, without it the child
        starts a local Ray instance. Raises GenerationError when it cannot connect."""
        where = self._start_child()
        log.info("connected to Ray (%s)", where)
        self._thread = threading.Thread(target=self._follow, name="ray-driver-link", daemon=True)
        self._thread.start()

    def start(self, *, wait_for: int = 1, timeout: float = 3600.0) -> None:
        """Wait until `wait_for` workers are ready (the child starts and adopts the actors)."""
        deadline = time.monotonic() + timeout
        while len(self.pool.in_rotation()) < wait_for:
            if self._fatal:
                raise GenerationError(self._fatal)
            if time.monotonic() > deadline:
                raise GenerationError(f"no Ray worker was ready after {timeout:.0f} s")
            with self._lock:
                all_failed = not self._loading and not self._backends and self._failed
            if all_failed:
                raise GenerationError(f"every Ray worker failed to load ({', '.join(sorted(self._failed))})")
            time.sleep(0.1)

    def watch_in_background(self) -> None:
        """From now on, a driver child that ends is replaced (and the bot keeps serving meanwhile)."""
        self._supervise = True

    def stop(self) -> None:
        self._stop.set()
        self._outbox.put(("stop",))
        process = self._process
        if process is not None:
            process.join(timeout=30)  # it stops the actors it started
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for backend in self._backends.values():
                backend.close()

    # ----- jobs --------------------------------------------------------------------------------------

    def submit(
        self,
        backend: RayBackend,
        request: GenerationRequest,
        progress: ProgressCallback | None,
        cancel: CancelToken,
    ) -> Future[GenerationResult]:
        future: Future[GenerationResult] = Future()
        with self._lock:
            if not backend.ready:
                raise WorkerLost(f"the Ray worker {backend.actor_name} is gone")
            key = next(self._keys)
            self._jobs[key] = _Job(future, backend, request, progress, cancel)
        # Sent by the link's own thread: a request with a picture in it never waits on the event loop.
        self._outbox.put(("submit", key, backend.actor_name, request))
        return future

    # ----- the child ---------------------------------------------------------------------------------

    def _start_child(self) -> str:
        """Start a driver child and wait for it to connect; returns where to. Raises GenerationError."""
        receiving, sending = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=run_driver,
            args=(sending, self.settings, self.watch_seconds),
            name="zimage-ray-driver",
            daemon=True,
        )
        process.start()
        sending.close()  # only the child holds that end now: its death reads as EOF here
        deadline = time.monotonic() + self.connect_seconds
        try:
            while not receiving.poll(0.5):
                if not process.is_alive() or self._stop.is_set() or time.monotonic() > deadline:
                    raise EOFError
            message = receiving.recv()
        except (EOFError, OSError):
            if process.is_alive():  # asked to stop, or still not connected: ray.init may wait a long time
                process.kill()
                process.join(timeout=5)
                receiving.close()
                raise GenerationError(f"Ray did not answer within {self.connect_seconds:.0f} s") from None
            process.join(timeout=5)
            receiving.close()
            raise GenerationError(f"the Ray driver process ended (exit code {process.exitcode})") from None
        if message[0] != "connected":
            process.join(timeout=30)
            receiving.close()
            raise GenerationError(f"could not connect to Ray: {message[1]}")
        self._process, self._connection = process, receiving
        self.cluster_gpus = int(message[2])
        self._last_watch = time.monotonic()
        self._outbox = queue.Queue()
        threading.Thread(
            target=self._send_all, args=(receiving, self._outbox), name="ray-driver-send", daemon=True
        ).start()
        return str(message[1])

    def _send_all(self, connection: Any, outbox: queue.Queue[tuple | None]) -> None:
        while (message := outbox.get()) is not None:
            try:
                connection.send(message)
            except (OSError, ValueError):
                return  # the child is gone: the reading side notices and fails the jobs

    def _follow(self) -> None:
        """Read the child's messages; when it ends, fail its jobs and start another (if supervising)."""
        while True:
            self._read(self._connection)
            self._lost()
            if self._stop.is_set():
                return
            if not self._supervise:
                self._fatal = "the Ray driver process ended while starting"
                return
            while not self._stop.wait(self.retry_seconds):
                try:
                    where = self._start_child()
                except GenerationError as error:
                    log.debug("Ray is still out of reach: %s", error)
                    continue
                log.info("in contact with the Ray cluster again (%s)", where)
                self.pool.problem = None
                break
            else:
                return

    def _read(self, connection: Any) -> None:
        while True:  # until the child ends (after a stop, too: it stops its actors first)
            try:
                if connection.poll(CANCEL_SECONDS):
                    self._handle(connection.recv())
            except (EOFError, OSError):
                return
            except Exception:  # one bad message must not end the link
                log.exception("could not handle a message of the Ray driver")
            self._send_cancels()
            self._notice_silence()

    def _lost(self) -> None:
        """The child ended: its jobs go back in line, its workers out of rotation."""
        self._outbox.put(None)
        if self._connection is not None:
            self._connection.close()
        process = self._process
        if process is not None:
            process.join(timeout=5)
        self._process = None
        with self._lock:
            jobs, self._jobs = self._jobs, {}
            for backend in self._backends.values():
                backend.ready = False
            self._backends.clear()
            self._loading.clear()
        for job in jobs.values():
            _settle(job.future, error=WorkerLost("lost contact with the Ray cluster"))
        if self._stop.is_set():
            return
        exit_code = process.exitcode if process is not None else None
        if self.pool.problem is None:
            log.error("lost contact with the Ray cluster: its driver process ended (exit code %s)", exit_code)
        else:  # already said: the driver stopped answering first
            log.info("the Ray driver process ended (exit code %s)", exit_code)
        self._silent = False
        self.pool.problem = out_of_reach(Text("its driver process ended"))

    def _notice_silence(self) -> None:
        silent = time.monotonic() - self._last_watch
        if self._supervise and self.pool.problem is None and silent > max(3 * self.watch_seconds, SILENT_SECONDS):
            log.error("lost contact with the Ray cluster: no answer for %.0f s", silent)
            self._silent = True
            self.pool.problem = out_of_reach(Text("no answer"))

    def _send_cancels(self) -> None:
        with self._lock:
            wanted = [key for key, job in self._jobs.items() if job.cancel.cancelled and not job.cancel_sent]
            for key in wanted:
                self._jobs[key].cancel_sent = True
        for key in wanted:
            self._outbox.put(("cancel", key))

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind in ("progress", "result", "error", "lost"):
            self._answer(kind, message[1], message[2:])
        elif kind == "joined":
            _, name, description = message
            backend = RayBackend(self, name, description)
            with self._lock:
                self._loading.discard(name)
                self._backends[name] = backend
            log.info("Ray worker %s joins (%s)", name, backend.device)
            self.pool.add_threadsafe(backend, name=backend.device)
        elif kind == "loading":
            with self._lock:
                self._loading.add(message[1])
        elif kind == "load_failed":
            with self._lock:
                self._loading.discard(message[1])
                self._failed.add(message[1])
        elif kind == "left":
            with self._lock:
                gone = self._backends.pop(message[1], None)
            if gone is not None:
                gone.ready = False  # its worker is taken out when the runner next looks (or uses it)
        elif kind == "memory":
            reported = self._backends.get(message[1])
            if reported is not None:
                reported.refresh(message[2])
        elif kind == "watched":
            self._last_watch = time.monotonic()
            if self._silent:
                log.info("the Ray cluster answers again")
                self._silent = False
                self.pool.problem = None
        elif kind == "problem":
            self._silent = False
            self.pool.problem = out_of_reach(message[1]) if message[1] else None
        elif kind == "nothing":
            if self._supervise:  # /status says no worker is available; one may still join
                log.warning("%s", message[1])
            else:
                self._fatal = message[1]

    def _answer(self, kind: str, key: int, values: tuple) -> None:
        with self._lock:
            job = self._jobs.get(key) if kind == "progress" else self._jobs.pop(key, None)
        if job is None:
            return
        if kind == "progress":
            if job.progress is not None:
                job.progress(values[0])
        elif kind == "result":
            pngs, details = values
            images: list[Image.Image] = []
            for data in pngs:
                image = Image.open(io.BytesIO(data))
                image.load()
                images.append(image)
            job.backend.finished(job.request, details["seconds"])
            _settle(job.future, GenerationResult(job.request, images, **details))
        elif kind == "error":
            _settle(job.future, error=values[0])
        else:
            job.backend.ready = False
            _settle(job.future, error=WorkerLost(values[0]))


def out_of_reach(why: str | Text) -> Text:
    """What /status says while no Ray driver can reach the cluster."""
    return Text("the Ray cluster is out of reach ({why}); retrying", why=why)


def _settle(future: Future, result: Any = None, *, error: BaseException | None = None) -> None:
    """Give a job's future its outcome, unless it was cancelled meanwhile (the bot shutting down)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        log.debug("a Ray job's answer came after its future was cancelled")


def _memory_of(memory: dict | None) -> RemoteMemory | None:
    return RemoteMemory(**memory) if memory else None
