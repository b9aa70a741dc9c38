"""METRICS_PORT: the Prometheus endpoint, scraped after real jobs and parsed with the client's own parser."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from test_generation_cog import admin_command, delivered, imagine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from the text Prometheus would read."""

    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()

    text = await asyncio.to_thread(fetch)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_after_real_jobs(start_bot, discord_api):
    port = free_port()
    running = await start_bot(METRICS_PORT=str(port))
    running.runner.delivery_retry_delays = (0.2,)
    alice, bob = discord_api.make_user("alice"), discord_api.make_user("bob")
    await delivered(discord_api, await imagine(discord_api, "one", alice, count=2))
    # A delivery that fails once (Discord is briefly unavailable) and then goes through.
    await admin_command(discord_api, "pause")
    second = await imagine(discord_api, "two", bob)
    await discord_api.wait_for(lambda: len(running.runner.queue) == 1)
    paused = await scrape(port)
    discord_api.expire_token(second)
    # The token has expired, so the result goes into the job's own message by its id, with the bot token.
    discord_api.fail_next("PATCH", r"/channels/\d+/messages/\d+", status=503, message="Service Unavailable")
    await admin_command(discord_api, "resume")
    await discord_api.wait_for(lambda: running.bot.store.get(2).state.value == "delivered", 30)

    assert paused[("zimage_queue_length", ())] == 1
    assert paused[("zimage_jobs", (("state", "queued"),))] == 1
    assert paused[("zimage_queue_paused", ())] == 1

    delivered_twice = ("zimage_job_transitions_total", (("state", "delivered"),))
    for _ in range(50):  # the store says delivered a moment before the runner has counted it
        metrics = await scrape(port)
        if metrics.get(delivered_twice) == 2:
            break
        await asyncio.sleep(0.1)
    worker = (("worker", "0"),)
    assert metrics[("zimage_images_total", worker)] == 3
    assert metrics[("zimage_generation_seconds_count", worker)] == 2
    assert metrics[("zimage_generation_seconds_sum", worker)] > 0
    assert metrics[("zimage_queue_wait_seconds_count", ())] == 2
    assert metrics[delivered_twice] == 2
    assert metrics[("zimage_job_transitions_total", (("state", "running"),))] == 2
    assert metrics[("zimage_delivery_failures_total", ())] == 1
    assert metrics[("zimage_queue_length", ())] == 0 and metrics[("zimage_queue_paused", ())] == 0
    assert metrics[("zimage_jobs", (("state", "running"),))] == 0
    assert metrics[("zimage_images_per_second", ())] > 0
    assert metrics[("zimage_workers_in_rotation", ())] == 1
    assert metrics[("zimage_worker_state", (("device", "cpu"), ("state", "idle"), ("worker", "0")))] == 1
    assert metrics[("zimage_worker_jobs_done", (("device", "cpu"), ("worker", "0")))] == 2
    # A CPU worker has no GPU memory to report; the family is there, empty.
    assert not [key for key in metrics if key[0] == "zimage_worker_gpu_memory_bytes"]


async def test_metrics_are_off_by_default_and_a_taken_port_does_not_stop_the_bot(start_bot, discord_api, caplog):
    running = await start_bot()
    assert running.bot.metrics is None
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        running.bot.start_metrics(port)
    assert running.bot.metrics is None
    assert any(f"METRICS_PORT={port} cannot be served" in record.message for record in caplog.records)
    await delivered(discord_api, await imagine(discord_api, "still working", None))
