"""The waiting line: fair between users, bounded, pausable."""

from __future__ import annotations

import asyncio

import pytest

from bot.jobs.queue import GenerationQueue, QueueEntry, QueueRefusal


def entry(job_id: int, user_id: int) -> QueueEntry:
    return QueueEntry(job_id, user_id)


async def test_round_robin_between_users_in_acceptance_order_per_user():
    queue = GenerationQueue(max_queue=50, max_jobs_per_user=10)
    for job_id in range(1, 6):
        await queue.put(entry(job_id, user_id=1))  # Alice floods the queue
    await queue.put(entry(10, user_id=2))  # then Bob
    await queue.put(entry(11, user_id=2))
    await queue.put(entry(20, user_id=3))  # then Carol
    promised = [job.job_id for job in queue.waiting()]
    assert promised == [1, 10, 20, 2, 11, 3, 4, 5]
    assert queue.position(20) == 3 and queue.position(5) == 8 and queue.position(99) is None
    served = []
    for _ in range(8):
        job = await queue.get()
        served.append(job.job_id)
        await queue.finished(job)
    assert served == promised  # positions shown to users are the real order


async def test_a_late_user_waits_for_at_most_one_job_of_each_other_user():
    queue = GenerationQueue(max_queue=50, max_jobs_per_user=10)
    for job_id in range(1, 8):
        await queue.put(entry(job_id, 1))
    first = await queue.get()
    await queue.put(entry(100, 2))
    assert first.job_id == 1
    assert queue.position(100) == 2  # only Alice's next job is ahead of Bob


async def test_limits_refuse_with_reasons():
    queue = GenerationQueue(max_queue=3, max_jobs_per_user=2)
    await queue.put(entry(1, 1))
    await queue.put(entry(2, 1))
    with pytest.raises(QueueRefusal, match="already have 2 jobs"):
        await queue.put(entry(3, 1))
    running = await queue.get()  # a running job still counts for its user
    with pytest.raises(QueueRefusal, match="already have 2 jobs"):
        queue.check_admission(1)
    await queue.finished(running)
    queue.check_admission(1)
    await queue.put(entry(4, 2))
    await queue.put(entry(5, 3))
    with pytest.raises(QueueRefusal, match="queue is full"):
        await queue.put(entry(6, 4))
    assert len(queue) == 3
    await queue.put(entry(7, 4), bypass_limits=True)  # jobs promised before a restart always come back
    assert len(queue) == 4
    queue.close()
    with pytest.raises(QueueRefusal, match="shutting down"):
        queue.check_admission(9)


async def test_pause_holds_jobs_until_resumed_and_remove_takes_one_out():
    queue = GenerationQueue(max_queue=10, max_jobs_per_user=10)
    await queue.put(entry(1, 1))
    await queue.put(entry(2, 1))
    await queue.set_paused(True)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0.05)
    assert not getter.done()
    assert (await queue.remove(1)).job_id == 1
    assert await queue.remove(1) is None
    await queue.set_paused(False)
    assert (await asyncio.wait_for(getter, 1)).job_id == 2
    assert queue.find(2) is queue.running


async def test_wait_for_times_out_or_sees_the_change():
    queue = GenerationQueue(max_queue=10, max_jobs_per_user=10)
    await queue.put(entry(1, 1))
    job = await queue.get()
    assert await queue.wait_for(lambda: queue.running is None, 0.05) is False
    asyncio.get_running_loop().call_later(0.02, lambda: asyncio.ensure_future(queue.finished(job)))
    assert await queue.wait_for(lambda: queue.running is None, 1.0) is True


async def test_a_users_jobs_keep_their_acceptance_order_whatever_order_they_arrive_in():
    queue = GenerationQueue(max_queue=10, max_jobs_per_user=10)
    for job_id in (2, 5, 3):
        await queue.put(entry(job_id, 1))
    await queue.put(entry(4, 2))
    assert [job.job_id for job in queue.waiting()] == [2, 4, 3, 5]
