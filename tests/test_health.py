"""TaskHealth: a background loop that fails is logged, recorded for /status and started again."""

from __future__ import annotations

import asyncio

from bot.jobs.health import TaskHealth


async def test_a_loop_that_fails_is_restarted_and_recorded(caplog):
    health = TaskHealth()
    runs: list[int] = []

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise OSError("disk full")

    await asyncio.wait_for(health.keep_running("GPU worker", loop), 10)
    assert runs == [0, 1]
    assert health.restarts == {"GPU worker": 1}
    (problem,) = health.problems()
    assert (problem.where, problem.error) == ("GPU worker", "OSError: disk full")
    assert any("the GPU worker stopped with an error" in r.message and r.exc_info for r in caplog.records)


async def test_a_fire_and_forget_task_that_fails_is_not_lost(caplog):
    health = TaskHealth()

    async def edit() -> None:
        raise RuntimeError("an edit went wrong")

    task = health.spawn(edit(), name="status-7")
    await asyncio.wait([task])
    await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
    assert [(p.where, p.error) for p in health.problems()] == [("status-7", "RuntimeError: an edit went wrong")]
    assert any("background task status-7 failed" in r.message for r in caplog.records)
