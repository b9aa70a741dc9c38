"""From an accepted job to a delivered picture: the queue, the one GPU worker and the delivery line.

Every job is written to the store when it is accepted and moves QUEUED -> RUNNING -> DONE ->
DELIVERED there (or FAILED, CANCELLED, UNDELIVERABLE), so a restart resumes exactly what was promised.
Two asyncio loops do the work: the worker hands one job at a time to the model service's GPU thread;
the delivery line encodes, saves and posts results in acceptance order, off the GPU's critical path,
so the GPU starts the next job while the previous one is still being encoded and uploaded. Both run
under TaskHealth: a failure is logged, shown in /status, and the loop restarted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bot.generation import (
    CancelToken,
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    StepProgress,
)
from bot.image_files import save_png
from bot.image_size import ImageSize
from bot.jobs.health import TaskHealth
from bot.jobs.queue import GenerationQueue, QueueEntry, QueueRefusal
from bot.jobs.retention import apply_retention
from bot.jobs.store import JobRecord, JobState, JobStore
from bot.jobs.workers import Worker, WorkerLost, WorkerPool
from bot.moderation import asks_for_sexual_minors, blocked_word_in
from bot.settings import Settings
from bot.translations import Text, message_of

log = logging.getLogger(__name__)

# Discord attachments are limited per message; this is the unboosted server's limit.
DEFAULT_ATTACHMENT_LIMIT = 10 * 1024 * 1024
# Waits before trying a failed delivery again (Discord down, a network blip); after the last one the
# job stays DONE in the store and is tried again at the next start.
DELIVERY_RETRY_DELAYS = (10.0, 60.0, 300.0, 900.0)
# Fields a request and its stored record share by name: image-to-image and styles.
IMAGE_INPUT_FIELDS = ("source_image", "source_sha256", "strength", "style", "style_weight")

# Shutdown: the whole stop, notices included, ends within SHUTDOWN_TIMEOUT; the running job is cancelled
# CANCEL_BEFORE seconds before that, so it can stop at a step's end and its state be written.
SHUTDOWN_TIMEOUT = 25.0
CANCEL_BEFORE = 8.0
NOTICE_CONCURRENCY = 8  # "the bot is restarting" edits in flight at once: parallel, but polite to Discord


class Undeliverable(Exception):
    """Discord refused the result for good (no access to the channel, the channel is gone) and the
    requester could not be sent it directly either; the message says what happened."""


@dataclass(eq=False)
class ActiveJob(QueueEntry):
    """A job the process is working on: its stored record plus what only lives in memory."""

    record: JobRecord = field(default=None, repr=False)  # type: ignore[assignment]
    request: GenerationRequest = field(default=None, repr=False)  # type: ignore[assignment]
    cancel: CancelToken = field(default_factory=CancelToken, repr=False)
    application_id: int | None = None
    attachment_size_limit: int = DEFAULT_ATTACHMENT_LIMIT
    resumed: bool = False  # accepted before a restart: its result is posted to the channel
    position: int | None = None
    eta_seconds: float | None = None
    progress: StepProgress | None = None
    cancelled_by: int | None = None
    retried: bool = False  # ran once on a worker that failed; a second failure goes to the user
    notes: tuple[Text, ...] = ()  # what was changed in the requester's picture (shown with the job; not stored)

    @property
    def token_age(self) -> float:
        created = self.record.token_created_at
        return time.time() - created if created else float("inf")


@dataclass(frozen=True)
class OutputFile:
    path: Path
    seed: int


class JobPresenter(Protocol):
    """How jobs are shown to people; the Discord side implements it."""

    def show(self, job: ActiveJob) -> None:
        """Schedule a (throttled) update of the job's message from its live state."""

    async def deliver(self, job: ActiveJob, files: list[OutputFile]) -> int | None:
        """Post the result; returns the id of a new message that holds it (None when it went into the
        job's own message). Raises Undeliverable when it never can be posted, anything else when
        trying again later may work."""

    async def conclude(self, job: ActiveJob, text: Text) -> None:
        """Replace the job's message with a final text (cancelled, failed, shutting down), rendered in the
        requester's language (`job.record.locale`)."""

    def resumed(self, job: ActiveJob) -> None:
        """Say (in the background) that a job from before a restart is queued again."""


def record_to_request(record: JobRecord) -> GenerationRequest:
    return GenerationRequest(
        prompt=record.prompt,
        size=ImageSize(record.width, record.height),
        steps=record.steps,
        seed=record.seed,
        negative_prompt=record.negative_prompt,
        guidance=record.guidance,
        count=record.count,
        **{name: getattr(record, name) for name in IMAGE_INPUT_FIELDS},
        enhance=record.enhance,
    )


def new_record(request: GenerationRequest, *, user_id: int, channel_id: int, **fields) -> JobRecord:
    """A store record for a new job asking for `request`; `fields` are the other JobRecord fields."""
    return JobRecord(
        id=None,
        user_id=user_id,
        guild_id=fields.pop("guild_id", None),
        channel_id=channel_id,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=request.size.width,
        height=request.size.height,
        steps=request.steps,
        seed=request.seed,
        guidance=request.guidance,
        count=request.count,
        **{name: getattr(request, name) for name in IMAGE_INPUT_FIELDS},
        enhance=request.enhance,
        **fields,
    )


class JobRunner:
    def __init__(self, settings: Settings, service, store: JobStore, *, workers: WorkerPool | None = None) -> None:
        """`service` is the model service of the one-device shape; `workers`, when given, are all the
        workers (one per device) the jobs go to."""
        self.settings = settings
        self.service = service
        self.store = store
        self.workers = workers if workers is not None else WorkerPool.of([service])
        self.queue: GenerationQueue[ActiveJob] = GenerationQueue(
            max_queue=settings.max_queue, max_jobs_per_user=settings.max_jobs_per_user
        )
        self.presenter: JobPresenter | None = None
        self.health = TaskHealth()
        self._finished: asyncio.Queue[tuple[ActiveJob, GenerationResult | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self.delivery_retry_delays = DELIVERY_RETRY_DELAYS
        self._delivery_failures: dict[int, int] = {}  # job id -> failed attempts in this process
        self._retries: set[asyncio.Task] = set()
        # A requester's results are posted in their order, also when one needs a retry: later ones wait.
        self._retrying: dict[int, set[int]] = {}  # user id -> ids of their jobs waiting for a retry
        self._held: dict[int, list[ActiveJob]] = {}  # user id -> saved jobs waiting behind those
        self._handovers: set[asyncio.Task] = set()  # results waiting for the same user's earlier job
        self._stopping = False
        self.started_at = time.time()

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self, presenter: JobPresenter) -> None:
        self.presenter = presenter
        await self._resume_unfinished()
        keep = self.health.keep_running
        self._tasks = [
            asyncio.create_task(keep("delivery line", self._deliver_results), name="delivery"),
            asyncio.create_task(
                keep("retention", lambda: apply_retention(self.store, self.settings, self.health)), name="retention"
            ),
        ]
        self.workers.bind(asyncio.get_running_loop())
        for worker in self.workers.workers:
            self._start_worker(worker)
        self.workers.on_join(self._start_worker)

    def _start_worker(self, worker: Worker) -> None:
        keep = self.health.keep_running
        self._tasks.append(
            asyncio.create_task(
                keep(f"GPU worker {worker.name}", lambda: self._work(worker)), name=f"worker-{worker.name}"
            )
        )

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def stop(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop taking jobs, tell waiting users (in parallel, best effort), let the running job finish
        or cancel it (it stays queued in the store and runs after the next start), and deliver the
        results already made: all of it within `timeout` seconds."""
        if self._stopping:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def left(reserve: float = 0.0) -> float:
            return max(0.0, deadline - reserve - loop.time())

        waiting = self.queue.close()
        notices = asyncio.create_task(self._tell_waiting(waiting), name="shutdown-notices")
        if self.queue.running_jobs and not await self.queue.wait_for(
            lambda: not self.queue.running_jobs, left(CANCEL_BEFORE)
        ):
            for job in self.queue.running_jobs:
                log.info("cancelling job %d for shutdown; it will run again after restart", job.job_id)
                job.cancel.cancel()  # the GPU thread stops at the end of the current step
            await self.queue.wait_for(lambda: not self.queue.running_jobs, left(CANCEL_BEFORE / 2))
        if self._handovers:
            await asyncio.wait(self._handovers, timeout=left(CANCEL_BEFORE / 2))
        # Results already made are delivered before the process exits.
        try:
            await asyncio.wait_for(self._finished.join(), timeout=left(1.0))
        except asyncio.TimeoutError:
            log.warning("some results were not delivered before shutdown; they will be after restart")
        done, _ = await asyncio.wait([notices], timeout=left())
        if not done:
            log.warning("not every waiting user was told about the restart in time; their jobs are saved")
        for task in (notices, *self._tasks, *self._retries):
            task.cancel()
        await asyncio.gather(notices, *self._tasks, *self._retries, return_exceptions=True)

    async def _tell_waiting(self, waiting: list[ActiveJob]) -> None:
        limit = asyncio.Semaphore(NOTICE_CONCURRENCY)

        async def tell(job: ActiveJob) -> None:
            async with limit:
                await self._conclude(
                    job,
                    Text(
                        "⏸️ Job {job}: the bot is restarting. Your job is saved and will run when it is back.",
                        job=job.job_id,
                    ),
                )

        await asyncio.gather(*(tell(job) for job in waiting))

    # ----- accepting ---------------------------------------------------------------------------

    def reserve(self, user_id: int) -> None:
        """Hold a place in the queue for a job about to be accepted; raises QueueRefusal (with the
        reason for the user) when the limits say no. Then `record` the job, acknowledge it, and
        `accept` it (or `discard` it if the acknowledgement failed)."""
        self.queue.reserve(user_id)

    async def record(self, record: JobRecord) -> JobRecord:
        """Store a job before it is acknowledged: once the user sees it accepted, a crash cannot lose it."""
        try:
            return await asyncio.to_thread(self.store.add, record)
        except BaseException:
            self.queue.release(record.user_id)
            raise

    async def discard(self, record: JobRecord) -> None:
        """A recorded job whose acknowledgement failed: the user never saw it accepted."""
        self.queue.release(record.user_id)
        await self._cancel_unqueued(record)

    async def _cancel_unqueued(self, record: JobRecord) -> None:
        assert record.id is not None, "a recorded job has an id"
        await asyncio.to_thread(
            self.store.transition, record.id, [JobState.QUEUED], JobState.CANCELLED, finished_at=time.time()
        )

    async def accept(
        self,
        record: JobRecord,
        *,
        application_id: int | None,
        attachment_size_limit: int,
        status_message_id: int | None = None,
    ) -> ActiveJob:
        """Queue a recorded job in the place reserved for it (a job not yet recorded is recorded first).

        `status_message_id` is the job's own message, stored at once so that it can be found after a
        restart. Raises QueueRefusal (and cancels the job) when shutdown began since the reservation.
        """
        if record.id is None:
            record = await self.record(record)
        if status_message_id is not None:
            record = await self._remember_message(record, status_message_id)
        job = self._activate(record, application_id=application_id, attachment_size_limit=attachment_size_limit)
        try:
            await self.queue.put(job, reserved=True)
        except QueueRefusal:
            await self._cancel_unqueued(record)
            raise
        self._refresh_positions()
        return job

    async def _remember_message(self, record: JobRecord, message_id: int) -> JobRecord:
        assert record.id is not None
        try:
            return await asyncio.to_thread(self.store.update, record.id, status_message_id=message_id)
        except Exception as error:  # the job still runs; only a restart would have to post it anew
            log.warning("job %s: could not store its message id: %s", record.id, error)
            self.health.note("job store", error)
            return dataclasses.replace(record, status_message_id=message_id)

    def _activate(self, record: JobRecord, **kwargs) -> ActiveJob:
        assert record.id is not None
        return ActiveJob(record.id, record.user_id, record=record, request=record_to_request(record), **kwargs)

    # ----- control -----------------------------------------------------------------------------

    def find(self, job_id: int) -> ActiveJob | None:
        return self.queue.find(job_id)

    async def cancel(self, job_id: int, by_user: int) -> Text:
        """Cancel a waiting or running job; returns what happened, for the person who asked (a Text:
        `str()` is the English)."""
        job = await self.queue.remove(job_id)
        if job is not None:
            job.cancelled_by = by_user
            await self._mark(job, JobState.CANCELLED, finished_at=time.time())
            await self._conclude(job, Text("🚫 Job {job} cancelled before it started.", job=job_id))
            self._refresh_positions()
            return Text("cancelled before it started")
        running = next((job for job in self.queue.running_jobs if job.job_id == job_id), None)
        if running is not None:
            running.cancelled_by = by_user
            running.cancel.cancel()  # the GPU thread stops at the end of the current step
            return Text("stopping after the current step")
        return Text("already finished")

    async def set_paused(self, paused: bool) -> None:
        await self.queue.set_paused(paused)
        self._refresh_positions(force=True)

    # ----- the GPU worker ----------------------------------------------------------------------

    async def _work(self, worker: Worker) -> None:
        """One worker's loop: the next job in fair order whenever this worker is free."""
        while worker.in_rotation:
            job = await self.queue.get()
            if not worker.in_rotation:  # taken out while it waited (a remote worker that left)
                await self.queue.put(job, bypass_limits=True)
                await self.queue.finished(job)
                break
            self.workers.started(worker, job.job_id, waited_seconds=time.time() - job.record.created_at)
            try:
                self._refresh_positions()
                await self._run(job, worker)
            except Exception as error:
                # One bad job (or a store that refuses a write) must never stop the worker.
                log.exception("job %d failed unexpectedly", job.job_id)
                self.health.note(f"job {job.job_id}", error)
                await self._fail(
                    job,
                    Text("⚠️ Job {job} failed: something went wrong making it; the error was logged.", job=job.job_id),
                )
            finally:
                self.workers.stopped(worker)
                await self.queue.finished(job)

    async def _run(self, job: ActiveJob, worker: Worker) -> None:
        if job.cancel.cancelled:
            return
        loop = asyncio.get_running_loop()
        await self._mark(job, JobState.RUNNING, started_at=time.time())
        job.progress = StepProgress(0, job.request.steps_to_run, 0)
        self._show(job)

        def on_step(step: StepProgress) -> None:  # called on the GPU thread
            if not loop.is_closed():  # shutting down: nobody is left to show it
                loop.call_soon_threadsafe(self._on_progress, job, step)

        prompt_check = await self._prompt_check(job) if job.request.enhance else None
        try:
            result = await worker.generate(job.request, progress=on_step, cancel=job.cancel, prompt_check=prompt_check)
        except GenerationCancelled:
            if self._stopping and job.cancelled_by is None:
                await self._mark(job, JobState.QUEUED)  # not the user's doing: run it after restart
            else:
                await self._mark(job, JobState.CANCELLED, finished_at=time.time())
                await self._conclude(job, Text("🚫 Job {job} cancelled.", job=job.job_id))
            return
        except InvalidRequest as error:
            await self._fail(job, _failed(job, error))
            return
        except WorkerLost as error:
            # Not the job's fault: it runs again on the next worker, now or once one is back.
            self.workers.take_out(worker, str(error))
            log.warning("job %d lost its worker %s (%s); it waits for another", job.job_id, worker.name, error)
            job.progress = None
            await self._mark(job, JobState.QUEUED)
            await self.queue.put(job, bypass_limits=True)
            return
        except GenerationError as error:
            self.workers.failed(worker, error)
            if not job.retried and self.workers.others_in_rotation(worker):
                # Perhaps the worker's fault rather than the job's: one more try, on another worker.
                log.warning("job %d failed on %s (%s); running it again elsewhere", job.job_id, worker.name, error)
                job.retried, job.progress = True, None
                await self._mark(job, JobState.QUEUED)
                await self.queue.put(job, bypass_limits=True)
                return
            await self._fail(job, _failed(job, error))
            return
        self.workers.succeeded(worker, result)
        # A backend that could not run the check before drawing (a Ray actor in another process) is held
        # to it here: pictures of a prompt the server blocks are never posted.
        reason = prompt_check(result.prompt_used) if prompt_check is not None and result.enhanced else None
        if reason:
            await self._fail(
                job,
                Text(
                    "⚠️ Job {job} failed: {reason}. Nothing was posted; change the prompt.",
                    job=job.job_id,
                    reason=reason,
                ),
            )
            return
        self._hand_over(job, result)

    async def _prompt_check(self, job: ActiveJob):
        """The check an enhanced prompt must pass: the minors rule and the guild's blocked words, read now
        (on the event loop) so the check itself runs on the GPU thread without touching the store."""
        words: tuple[str, ...] = ()
        if job.record.guild_id is not None:
            guild = await asyncio.to_thread(self.store.guild_settings, job.record.guild_id)
            words = tuple(guild.blocked_words)
        return enhanced_prompt_check(words)

    def _hand_over(self, job: ActiveJob, result: GenerationResult) -> None:
        """Queue the result for delivery after the same user's earlier jobs that other workers still
        make: a requester's pictures arrive in the order they were asked for."""

        def earlier_running() -> bool:
            return any(other.user_id == job.user_id and other.job_id < job.job_id for other in self.queue.running_jobs)

        if not earlier_running():
            self._finished.put_nowait((job, result))
            return

        async def wait_then_hand_over() -> None:
            await self.queue.wait_for(lambda: not earlier_running(), None)
            await self._finished.put((job, result))

        task = asyncio.create_task(wait_then_hand_over(), name=f"handover-{job.job_id}")
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)

    def _on_progress(self, job: ActiveJob, step: StepProgress) -> None:
        job.progress = step
        self._show(job)

    # ----- delivery ----------------------------------------------------------------------------

    async def _deliver_results(self) -> None:
        while True:
            job, result = await self._finished.get()
            try:
                await self._handle_result(job, result)
            except Exception as error:  # one job's trouble must never stop the delivery line
                log.exception("delivering job %d went wrong; it stays in the store", job.job_id)
                self.health.note(f"delivery of job {job.job_id}", error)
            finally:
                self._finished.task_done()

    async def _handle_result(self, job: ActiveJob, result: GenerationResult | None) -> None:
        if result is not None:
            try:
                files = await asyncio.to_thread(self._write_files, result)
            except OSError as error:
                # Retrying cannot fix a full disk or a folder the bot may not write: end the job clearly.
                log.error(
                    "job %d: saving its images in OUTPUT_DIR %s failed: %s", job.job_id, self.settings.output_dir, error
                )
                self.health.note("saving images in OUTPUT_DIR", error)
                reason = error.strerror or type(error).__name__
                await self._fail(
                    job,
                    Text(
                        "⚠️ Job {job} failed: the server could not save the image ({reason}). "
                        "The bot's operator must fix OUTPUT_DIR (free space or permissions); try again after that.",
                        job=job.job_id,
                        reason=reason,
                    ),
                )
                return
            try:
                await self._mark(
                    job,
                    JobState.DONE,
                    output_files=[str(file.path) for file in files],
                    seeds=[file.seed for file in files],
                    # Stored with the files, so delivery after a restart applies the same channel policy.
                    flagged=list(result.flagged),
                    seconds=result.seconds,
                    finished_at=time.time(),
                    enhanced_prompt=result.prompt_used if result.enhanced else None,
                    enhancement_note=result.enhancement_note,
                )
            except Exception as error:
                self.health.note("job store", error)
                self._retry_later(job, result)
                return
        if self._behind_a_retry(job):
            self._held.setdefault(job.user_id, []).append(job)
            return
        try:
            await self._deliver(job, _files_of(job.record))
        except Undeliverable as error:
            self.workers.delivery_failed()
            log.warning("job %d cannot be delivered: %s", job.job_id, error)
            await self._mark(job, JobState.UNDELIVERABLE, error=str(error), finished_at=time.time())
            self._settle(job)
        except Exception:
            self._retry_later(job, None)
        else:
            self._settle(job)

    def _behind_a_retry(self, job: ActiveJob) -> bool:
        pending = self._retrying.get(job.user_id)
        return pending is not None and bool(pending) and min(pending) < job.job_id

    def _settle(self, job: ActiveJob) -> None:
        """The job's delivery is over, one way or another: let the same requester's later jobs go."""
        self._delivery_failures.pop(job.job_id, None)
        pending = self._retrying.get(job.user_id)
        if pending is None:
            return
        pending.discard(job.job_id)
        if pending:
            return
        del self._retrying[job.user_id]
        for held in sorted(self._held.pop(job.user_id, []), key=lambda held: held.job_id):
            self._finished.put_nowait((held, None))

    def _retry_later(self, job: ActiveJob, result: GenerationResult | None) -> None:
        self.workers.delivery_failed()
        failures = self._delivery_failures.get(job.job_id, 0)
        if self._stopping or failures >= len(self.delivery_retry_delays):
            log.exception(
                "delivering job %d failed; it stays in the store and is tried again at the next start", job.job_id
            )
            self._settle(job)
            return
        delay = self.delivery_retry_delays[failures]
        self._delivery_failures[job.job_id] = failures + 1
        self._retrying.setdefault(job.user_id, set()).add(job.job_id)
        log.warning(
            "delivering job %d failed (attempt %d); trying again in %.0f s",
            job.job_id,
            failures + 1,
            delay,
            exc_info=True,
        )

        async def retry() -> None:
            await asyncio.sleep(delay)
            await self._finished.put((job, result))

        task = self.health.spawn(retry(), name=f"retry-delivery-{job.job_id}")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _write_files(self, result: GenerationResult) -> list[OutputFile]:
        """Encode and write the PNGs (blocking, in a thread: CPU work of 100-150 ms a 1024x1024 image)."""
        outputs = []
        for image, seed in zip(result.images, result.seeds, strict=True):
            path, _ = save_png(
                image, result.request, seed, self.settings.model_id, self.settings.output_dir, result.prompt_used
            )
            outputs.append(OutputFile(path, seed))
        return outputs

    async def _deliver(self, job: ActiveJob, files: list[OutputFile]) -> None:
        assert self.presenter is not None
        attempts = job.record.delivery_attempts + 1
        await self._update(job, delivery_attempts=attempts)
        message_id = await self.presenter.deliver(job, files)
        where = {"result_message_id": message_id} if message_id is not None else {}
        # Compare-and-set: a job is marked delivered once, whoever gets here first.
        if await asyncio.to_thread(self.store.transition, job.job_id, [JobState.DONE], JobState.DELIVERED, **where):
            self.workers.job_state(JobState.DELIVERED.value)

    # ----- restart recovery --------------------------------------------------------------------

    async def _resume_unfinished(self) -> None:
        records = await asyncio.to_thread(self.store.unfinished)
        for record in records:
            job = self._activate(record, application_id=None, attachment_size_limit=DEFAULT_ATTACHMENT_LIMIT)
            job.resumed = True
            if record.state is JobState.DONE:
                log.info("job %d was made before the restart; delivering it", record.id)
                await self._finished.put((job, None))
            else:
                log.info("job %d was %s before the restart; queueing it again", record.id, record.state.value)
                await self._update(job, state=JobState.QUEUED)
                await self.queue.put(job, bypass_limits=True)
                if self.presenter is not None:
                    self.presenter.resumed(job)
        if records:
            log.info("resumed %d unfinished job(s) from before the restart", len(records))

    # ----- helpers -----------------------------------------------------------------------------

    def _refresh_positions(self, force: bool = False) -> None:
        """Recompute every waiting job's position and wait, and re-show those that changed."""
        if self._stopping:
            return  # the waiting jobs' messages say the bot is restarting: never show them over that
        estimate = self.workers.estimate_seconds
        # Work ahead is shared by the workers in rotation: with N of them a place in line waits about 1/N.
        sharing = max(len(self.workers.in_rotation()), 1)
        ahead = 0.0
        for running in self.queue.running_jobs:
            total = estimate(running.request) or 0.0
            done = running.progress.step / running.progress.total if running.progress else 0.0
            ahead += total * (1 - done)
        for position, job in enumerate(self.queue.waiting(), start=1):
            own = estimate(job.request)
            eta = ahead / sharing if own is not None else None
            if force or position != job.position:
                job.position, job.eta_seconds = position, eta
                self._show(job)
            ahead += own or 0.0

    def _show(self, job: ActiveJob) -> None:
        if self.presenter is not None and (not self._stopping or job is self.queue.running):
            self.presenter.show(job)

    async def _conclude(self, job: ActiveJob, text: Text) -> None:
        if self.presenter is None:
            return
        try:
            await self.presenter.conclude(job, text)
        except Exception:
            log.exception("could not update the message of job %d", job.job_id)

    async def _fail(self, job: ActiveJob, text: Text) -> None:
        """Mark the job FAILED and tell its requester; never raises. The store keeps the English text."""
        try:
            await self._mark(job, JobState.FAILED, error=str(text), finished_at=time.time())
        except Exception as error:
            # The store keeps it unfinished, so it runs again after the next start; say so.
            log.exception("job %d: could not record that it failed", job.job_id)
            self.health.note("job store", error)
            text = Text(
                "{text} It could not be recorded either, so it may run again after the bot restarts.", text=text
            )
        await self._conclude(job, text)

    async def _mark(self, job: ActiveJob, state: JobState, **fields) -> None:
        await self._update(job, state=state, **fields)
        self.workers.job_state(state.value)

    async def _update(self, job: ActiveJob, **fields) -> None:
        job.record = await asyncio.to_thread(self.store.update, job.job_id, **fields)


def enhanced_prompt_check(blocked_words: tuple[str, ...]) -> Callable[[str], Text | None]:
    """Why an enhanced prompt may not be drawn (the minors rule, a blocked word), or None. Pure: safe on any thread."""

    def check(prompt: str) -> Text | None:
        if asks_for_sexual_minors(prompt):
            return Text("the enhanced prompt asked for something this bot never makes")
        word = blocked_word_in([prompt], blocked_words)
        if word is not None:
            return Text('the enhanced prompt contained "{word}", which this server blocks', word=word)
        return None

    return check


def _failed(job: ActiveJob, error: BaseException) -> Text:
    return Text("⚠️ Job {job} failed: {reason}.", job=job.job_id, reason=message_of(error))


def _files_of(record: JobRecord) -> list[OutputFile]:
    return [OutputFile(Path(path), seed) for path, seed in zip(record.output_files, record.seeds, strict=True)]
