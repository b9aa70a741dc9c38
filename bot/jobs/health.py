"""Background tasks that cannot end unnoticed: a failure is logged, kept for /status, and the loop restarted.

The GPU worker, the delivery line and retention are loops that must run as long as the bot does; a
status edit or a notice is a task nobody awaits. Both kinds go through here, so an exception in any
of them shows up in the log and in /status instead of vanishing with the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RESTART_DELAYS = (1.0, 5.0, 30.0)  # waits before restarting a loop that failed again and again
KEPT_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    where: str
    error: str
    at: float  # time.time()


class TaskHealth:
    def __init__(self) -> None:
        self._problems: deque[Problem] = deque(maxlen=KEPT_PROBLEMS)
        self._tasks: set[asyncio.Task] = set()  # references, so running tasks are not collected
        self.restarts: dict[str, int] = {}

    def note(self, where: str, error: BaseException) -> None:
        """Record a failure for /status (the caller logs it with its traceback)."""
        self._problems.append(Problem(where, f"{type(error).__name__}: {error}", time.time()))

    def problems(self) -> list[Problem]:
        return list(self._problems)

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Run a fire-and-forget task whose failure is logged and recorded rather than lost."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("background task %s failed", task.get_name(), exc_info=error)
            self.note(task.get_name(), error)

    async def keep_running(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run `loop` until it returns; if it raises, log it, record it and start it again."""
        failures = 0
        while True:
            try:
                await loop()
                return
            except Exception as error:
                delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
                failures += 1
                self.restarts[name] = self.restarts.get(name, 0) + 1
                log.exception("the %s stopped with an error; restarting it in %.0f s", name, delay)
                self.note(name, error)
                await asyncio.sleep(delay)
