"""The Ray driver of WORKERS=ray, in a child process of the bot (started by bot.jobs.ray_workers).

Ray ends a driver whose head has been gone for its GCS reconnect timeout (and a driver that waits longer
crashes when a new head appears), so the driver lives here rather than in the bot: losing the head ends
this process only, and the bot starts another. This process connects to Ray, starts and adopts the
worker actors (bot/model/ray_worker.py), watches the cluster and runs jobs on the actors; it talks to
the bot over one pipe.

Messages to the bot (tuples, the first item names them):
    ("connected", address, gpus)           ray.init succeeded; the cluster has that many GPUs
    ("fatal", text)                        could not connect; the process ends
    ("nothing", text)                      the cluster has no GPU and no worker actor
    ("joined", name, description)          a worker actor is ready (description: node, device, memory, load)
    ("load_failed", name, text)            a worker actor could not load the model
    ("loading", name)                      a worker actor is loading
    ("left", name)                         a worker actor is gone
    ("memory", name, memory)               a worker's GPU memory (a dict of RemoteMemory's fields, or None)
    ("problem", reason or None)            the cluster could not be looked at, and why (None: it can again)
    ("watched",)                           one look at the cluster went well (calls to a lost head hang)
    ("progress", key, StepProgress)
    ("result", key, [png bytes], details)
    ("error", key, GenerationError)        the job failed (cancelled, out of memory, bad input, ...)
    ("lost", key, text)                    the job's worker is gone: the job should run again elsewhere
Messages from the bot:
    ("submit", key, worker name, GenerationRequest), ("cancel", key), ("stop",)
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import ray

from bot.generation import GenerationError, GenerationRequest, StepProgress
from bot.model.ray_worker import ACTOR_NAME_PREFIX, NAMESPACE, start_actor  # torch is imported by the actors only
from bot.settings import Settings, configure_logging
from bot.translations import Text

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # how often a running job's progress is asked for
_ACTOR_GONE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


def run_driver(connection: Connection, settings: Settings, watch_seconds: float) -> None:
    """The child process's entry point: connect, then serve the bot until it says stop or goes away."""
    configure_logging(settings.log_level)
    address = os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address, namespace=NAMESPACE, ignore_reinit_error=True, log_to_driver=False)
    except Exception as error:  # no head at RAY_ADDRESS (yet): the bot says so and tries again
        connection.send(("fatal", f"{type(error).__name__}: {error}"))
        connection.close()
        return
    driver = Driver(connection, settings)
    driver.send("connected", address or "a local instance", int(ray.cluster_resources().get("GPU", 0)))
    try:
        driver.serve(watch_seconds)
    finally:
        driver.stop_actors()
        ray.shutdown()


class Driver:
    """Keeps the actors in step with the cluster and runs the bot's jobs on them."""

    def __init__(self, connection: Connection, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self.gpu = not all(device == "cpu" for device in settings.devices)
        self._send_lock = threading.Lock()
        self._own: dict[str, Any] = {}  # actors this driver started, by name
        self._pending: dict[str, Any] = {}  # name -> describe() reference of a loading actor
        self._adopted: dict[str, Any] = {}  # name -> actor handle of a ready worker
        self._gone: set[str] = set()
        self._failed: set[str] = set()
        self._jobs: dict[int, tuple[Any, threading.Event]] = {}  # key -> (actor, cancel asked)
        self._runner = ThreadPoolExecutor(max_workers=64, thread_name_prefix="ray-job")
        self._problem: str | None = None

    def send(self, *message: Any) -> None:
        with self._send_lock:
            self.connection.send(message)

    def serve(self, watch_seconds: float) -> None:
        self.watch()
        if not self._pending and not self._adopted:
            self.send(
                "nothing",
                "the Ray cluster has no GPU and no zimage-worker actor: add a node with GPUs, or set DEVICE=cpu to "
                "try the bot on CPU workers",
            )
        next_look = time.monotonic() + min(watch_seconds, 0.2)
        while True:
            timeout = max(next_look - time.monotonic(), 0.0)
            if self.connection.poll(timeout):
                try:
                    message = self.connection.recv()
                except (EOFError, OSError):
                    return  # the bot is gone: nobody to make images for
                if message[0] == "stop":
                    return
                self.handle(message)
                continue
            self.watch()
            # Loading actors are looked at often, so a worker joins as soon as it is ready.
            next_look = time.monotonic() + (min(watch_seconds, 0.2) if self._pending else watch_seconds)

    def handle(self, message: tuple) -> None:
        if message[0] == "submit":
            _, key, name, request = message
            actor = self._adopted.get(name)
            if actor is None:
                self.send("lost", key, f"the Ray worker {name} is gone")
                return
            cancel = threading.Event()
            self._jobs[key] = (actor, cancel)
            self._runner.submit(self._run, key, name, actor, request, cancel)
        elif message[0] == "cancel":
            job = self._jobs.get(message[1])
            if job is not None:
                job[1].set()

    # ----- jobs ------------------------------------------------------------------------------------

    def _run(self, key: int, name: str, actor: Any, request: GenerationRequest, cancel: threading.Event) -> None:
        try:
            pngs, details = self._generate(key, actor, request, cancel)
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, GenerationError):
                self._send_error(key, cause)  # cancelled, out of memory, bad input: as on a local worker
            else:
                self._send_error(key, GenerationError(Text("the worker failed ({error})", error=type(cause).__name__)))
        except (*_ACTOR_GONE, ray.exceptions.GetTimeoutError) as error:
            self._leave(name)
            self.send("lost", key, f"the Ray worker {name} died ({type(error).__name__})")
        except Exception as error:
            # The cluster itself (the head, the network): the job waits for a worker rather than failing.
            self._leave(name)
            self.send("lost", key, f"lost contact with the Ray worker {name} ({type(error).__name__})")
        else:
            self.send("result", key, pngs, details)
        finally:
            self._jobs.pop(key, None)

    def _generate(self, key: int, actor: Any, request: GenerationRequest, cancel: threading.Event):
        reference = actor.generate.remote(key, request)
        last: StepProgress | None = None
        cancel_sent = False
        while not ray.wait([reference], timeout=POLL_SECONDS)[0]:
            if cancel.is_set() and not cancel_sent:
                actor.cancel.remote(key)
                cancel_sent = True
            step = ray.get(actor.progress.remote(key), timeout=10)
            if step is not None and step != last:
                self.send("progress", key, step)
                last = step
        return ray.get(reference)

    def _send_error(self, key: int, error: GenerationError) -> None:
        try:
            self.send("error", key, error)
        except Exception:  # an error that does not pickle still says what it was
            self.send("error", key, GenerationError(str(error)))

    def _leave(self, name: str) -> None:
        if self._adopted.pop(name, None) is not None:
            self._gone.add(name)
            log.warning("Ray worker %s left the cluster", name)
            self.send("left", name)

    # ----- the watcher ---------------------------------------------------------------------------------

    def watch(self) -> None:
        """One look at the cluster; a failure is a problem for /status, not the end of this process."""
        try:
            self.watch_once()
            for name, actor in list(self._adopted.items()):
                try:
                    memory = ray.get(actor.describe.remote(), timeout=10).get("memory")
                except _ACTOR_GONE:
                    self._leave(name)
                    continue
                self.send("memory", name, memory)
        except (EOFError, OSError, BrokenPipeError):
            raise
        except Exception as error:
            if self._problem is None:
                log.error("lost contact with the Ray cluster: %s", error)
                self.send("problem", type(error).__name__)
            self._problem = type(error).__name__
            return
        if self._problem is not None:
            log.info("the Ray cluster is reachable again")
            self.send("problem", None)
        self._problem = None
        self.send("watched")

    def watch_once(self) -> None:
        """Start actors for new GPUs, adopt ready actors, drop the gone ones."""
        self._start_missing_actors()
        names = {
            entry["name"]
            for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry.get("namespace") == NAMESPACE and entry["name"].startswith(ACTOR_NAME_PREFIX)
        }
        for name in sorted(names - set(self._adopted) - set(self._pending) - self._failed - self._gone):
            self._pending[name] = ray.get_actor(name, namespace=NAMESPACE).describe.remote()
            self.send("loading", name)
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
                self.send("load_failed", name, str(error))
                continue
            self._adopted[name] = ray.get_actor(name, namespace=NAMESPACE)
            log.debug("Ray worker %s is ready (%s/%s)", name, description["node"], description["device"])
            self.send("joined", name, description)
        for name in list(self._adopted):
            if name not in names:
                self._leave(name)

    def _start_missing_actors(self) -> None:
        # cpu,cpu: two CPU workers, to try the shape on one machine; otherwise one a GPU of the cluster.
        wanted = int(ray.cluster_resources().get("GPU", 0)) if self.gpu else len(self.settings.devices)
        alive = sum(1 for name in self._own if name not in self._failed and name not in self._gone)
        for _ in range(wanted - alive):
            name = f"{ACTOR_NAME_PREFIX}{uuid.uuid4().hex[:8]}"
            self._own[name] = start_actor(self.settings, name, gpu=self.gpu)
            log.info("starting Ray worker %s (%s)", name, "one GPU" if self.gpu else "CPU")

    def stop_actors(self) -> None:
        self._runner.shutdown(wait=False, cancel_futures=True)
        for actor in self._own.values():
            try:
                ray.kill(actor)
            except Exception:  # the cluster may be gone already
                log.debug("could not stop an actor", exc_info=True)
