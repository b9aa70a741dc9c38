"""Prometheus metrics on METRICS_PORT (off by default; needs the `metrics` extra: prometheus-client).

Imported only when METRICS_PORT is set. Events (a job started, an image made, a delivery failed) come
from the worker pool as they happen; what is true at one moment (queue length, worker states, GPU
memory) is read when Prometheus scrapes, on the HTTP server's thread, from plain attributes and the
allocator's statistics: nothing there waits on the event loop or the GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.generation import GenerationResult
from bot.jobs.workers import Worker

log = logging.getLogger(__name__)

# Seconds: a 1024x1024 image takes about one on a data-center GPU, many on smaller ones; waits can be minutes.
GENERATION_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0, 180.0)
WAIT_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class BotMetrics(Collector):
    """Everything /metrics shows about one runner; registered in its own registry."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue_wait = Histogram(
            "zimage_queue_wait_seconds",
            "Time from acceptance until a worker started the job",
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.generation = Histogram(
            "zimage_generation_seconds",
            "Time a worker spent making one job (all its images)",
            ["worker"],
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "zimage_images", "Images made; rate() of it is images per second", ["worker"], registry=self.registry
        )
        self.jobs = Counter("zimage_job_transitions", "Jobs that reached each state", ["state"], registry=self.registry)
        self.delivery_failures = Counter(
            "zimage_delivery_failures",
            "Failed attempts to post a result (each is retried)",
            registry=self.registry,
        )
        self.registry.register(self)
        self._server: Any = None

    # ----- events, from the worker pool (on the event loop) -------------------------------------

    def job_started(self, worker: Worker, waited_seconds: float) -> None:
        self.queue_wait.observe(max(waited_seconds, 0.0))

    def job_made(self, worker: Worker, result: GenerationResult) -> None:
        self.generation.labels(worker=self._label(worker)).observe(result.seconds)
        self.images.labels(worker=self._label(worker)).inc(len(result.images))

    def job_state(self, state: str) -> None:
        self.jobs.labels(state=state).inc()

    def delivery_failed(self) -> None:
        self.delivery_failures.inc()

    # ----- the moment's state, read at each scrape ------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        runner = self.runner
        queue, pool = runner.queue, runner.workers
        yield _gauge("zimage_queue_length", "Jobs waiting for a worker", len(queue))
        jobs = GaugeMetricFamily("zimage_jobs", "Jobs in the queue by state", labels=["state"])
        jobs.add_metric(["queued"], len(queue))
        jobs.add_metric(["running"], len(queue.running_jobs))
        yield jobs
        yield _gauge("zimage_queue_paused", "1 while an admin has paused the queue", int(queue.paused))
        yield _gauge(
            "zimage_images_per_second",
            "Images per second, last 5 minutes, all workers",
            pool.images_per_second(),
        )
        yield _gauge("zimage_workers_in_rotation", "Workers taking jobs", len(pool.in_rotation()))
        states = GaugeMetricFamily(
            "zimage_worker_state", "1 for each worker's current state", labels=["worker", "device", "state"]
        )
        done = GaugeMetricFamily("zimage_worker_jobs_done", "Jobs each worker has made", labels=["worker", "device"])
        memory = GaugeMetricFamily(
            "zimage_worker_gpu_memory_bytes", "GPU memory of each worker", labels=["worker", "device", "kind"]
        )
        for worker in pool.workers:
            label, device = self._label(worker), worker.name
            states.add_metric([label, device, worker.state.name.lower()], 1)
            done.add_metric([label, device], worker.jobs_done)
            try:
                reading = worker.gpu_memory() if worker.in_rotation else None
            except Exception:  # a GPU that has gone away must not break the scrape
                log.debug("no memory reading for worker %s", worker.name, exc_info=True)
                reading = None
            if reading is not None:
                memory.add_metric([label, device, "allocated"], reading.allocated_bytes)
                memory.add_metric([label, device, "peak"], reading.peak_bytes)
                memory.add_metric([label, device, "total"], reading.total_bytes)
        yield states
        yield done
        yield memory

    # ----- the server -----------------------------------------------------------------------------

    def serve(self, port: int) -> None:
        """Serve /metrics on `port` (all interfaces) from a daemon thread; OSError if the port is taken."""
        self._server, _ = start_http_server(port, registry=self.registry)
        self.runner.workers.observers.append(self)
        log.info("Prometheus metrics on port %d (/metrics)", port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self in self.runner.workers.observers:
            self.runner.workers.observers.remove(self)

    def _label(self, worker: Worker) -> str:
        # Device names repeat with cpu,cpu and across Ray hosts; the position in the pool does not.
        return str(self.runner.workers.workers.index(worker))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
