"""The waiting line in front of the GPU: bounded, fair between users, pausable.

Fairness is round-robin by user: with Alice's ten jobs waiting, Bob's first job runs after at most
one of Alice's. Within one user's jobs the order is the order they were accepted.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from bot.translations import Text


class QueueRefusal(Exception):
    """The job was not accepted; the message (a Text) tells the user why and what to do."""


SHUTTING_DOWN = Text("The bot is shutting down and not taking new jobs; try again in a minute.")


@dataclass(eq=False)
class QueueEntry:
    job_id: int
    user_id: int


Entry = TypeVar("Entry", bound=QueueEntry)


class GenerationQueue(Generic[Entry]):
    def __init__(self, *, max_queue: int, max_jobs_per_user: int) -> None:
        self.max_queue = max_queue
        self.max_jobs_per_user = max_jobs_per_user
        self._waiting: OrderedDict[int, deque[Entry]] = OrderedDict()  # user id -> jobs, in rotation order
        self._running: list[Entry] = []  # one job per busy worker
        # Places promised to jobs that are being recorded but not yet queued: accepting a job awaits
        # the store, and two quick requests must not both squeeze into the last place.
        self._reserved: Counter[int] = Counter()
        self._paused = False
        self._closed = False
        self._changed = asyncio.Condition()

    # ----- admission -------------------------------------------------------------------------

    def check_admission(self, user_id: int) -> None:
        """Raise QueueRefusal if a new job from `user_id` would not be accepted right now."""
        if self._closed:
            raise QueueRefusal(SHUTTING_DOWN)
        if len(self) + sum(self._reserved.values()) >= self.max_queue:
            raise QueueRefusal(
                Text("The queue is full ({count} jobs waiting). Try again when it has gone down.", count=self.max_queue)
            )
        if self.jobs_of(user_id) + self._reserved[user_id] >= self.max_jobs_per_user:
            raise QueueRefusal(
                Text(
                    "You already have {count} jobs queued or running, the most allowed. "
                    "Wait for one to finish (or cancel one) and try again.",
                    count=self.max_jobs_per_user,
                )
            )

    def reserve(self, user_id: int) -> None:
        """Check admission and hold a place for a job about to be `put` (or `release`d)."""
        self.check_admission(user_id)
        self._reserved[user_id] += 1

    def release(self, user_id: int) -> None:
        self._reserved[user_id] -= 1
        if self._reserved[user_id] <= 0:
            del self._reserved[user_id]

    async def put(self, entry: Entry, *, reserved: bool = False, bypass_limits: bool = False) -> None:
        """Add a job: into a place `reserve`d for it, or after checking the limits now.
        `bypass_limits` is for jobs accepted before a restart, which were promised already.
        After `close` nothing new goes in: QueueRefusal (a reservation is given back)."""
        if self._closed and not bypass_limits:
            if reserved:
                self.release(entry.user_id)
            raise QueueRefusal(SHUTTING_DOWN)
        if reserved:
            self.release(entry.user_id)
        elif not bypass_limits:
            self.check_admission(entry.user_id)
        # A user's jobs run in acceptance order (their ids), also when two requests sent at once are
        # recorded in one order and reach the queue in the other: the order a restart would resume.
        jobs = self._waiting.setdefault(entry.user_id, deque())
        later = next((index for index, queued in enumerate(jobs) if queued.job_id > entry.job_id), len(jobs))
        jobs.insert(later, entry)
        await self._notify()

    # ----- the worker's side -----------------------------------------------------------------

    async def get(self) -> Entry:
        """Wait for the next job in fair order (not while paused) and mark it running; each worker
        calls it when it is free, so the next job goes to the next free worker."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._waiting) and not self._paused and not self._closed)
            user_id, jobs = next(iter(self._waiting.items()))
            entry = jobs.popleft()
            # The user goes to the back of the rotation; users with nothing left leave it.
            del self._waiting[user_id]
            if jobs:
                self._waiting[user_id] = jobs
            self._running.append(entry)
            self._changed.notify_all()
            return entry

    async def finished(self, entry: Entry) -> None:
        if entry in self._running:
            self._running.remove(entry)
        await self._notify()

    # ----- control ---------------------------------------------------------------------------

    async def remove(self, job_id: int) -> Entry | None:
        """Take a waiting job out of the line (a cancel); None if it is not waiting."""
        for user_id, jobs in self._waiting.items():
            for entry in jobs:
                if entry.job_id == job_id:
                    jobs.remove(entry)
                    if not jobs:
                        del self._waiting[user_id]
                    await self._notify()
                    return entry
        return None

    async def set_paused(self, paused: bool) -> None:
        self._paused = paused
        await self._notify()

    def close(self) -> list[Entry]:
        """Stop taking new jobs; returns the ones still waiting, in order."""
        self._closed = True
        return self.waiting()

    # ----- views -----------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> Entry | None:
        """The running job that started first (the only one with one worker)."""
        return self._running[0] if self._running else None

    @property
    def running_jobs(self) -> list[Entry]:
        return list(self._running)

    def __len__(self) -> int:
        return sum(len(jobs) for jobs in self._waiting.values())

    def jobs_of(self, user_id: int) -> int:
        running = sum(1 for entry in self._running if entry.user_id == user_id)
        return len(self._waiting.get(user_id, ())) + running

    def waiting(self) -> list[Entry]:
        """Waiting jobs in the order they will run."""
        return list(self._fair_order())

    def position(self, job_id: int) -> int | None:
        """1 for the job that runs next; None if the job is not waiting."""
        for index, entry in enumerate(self._fair_order(), start=1):
            if entry.job_id == job_id:
                return index
        return None

    def find(self, job_id: int) -> Entry | None:
        running = next((entry for entry in self._running if entry.job_id == job_id), None)
        if running is not None:
            return running
        return next((entry for entry in self._fair_order() if entry.job_id == job_id), None)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until `predicate()` holds after some change of the queue; False on timeout (None: no limit)."""

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        try:
            await asyncio.wait_for(wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _fair_order(self) -> Iterator[Entry]:
        queues = [list(jobs) for jobs in self._waiting.values()]
        depth = 0
        while any(depth < len(jobs) for jobs in queues):
            for jobs in queues:
                if depth < len(jobs):
                    yield jobs[depth]
            depth += 1

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
