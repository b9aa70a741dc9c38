"""WORKERS=ray on a local Ray instance: two CPU worker actors on the tiny model, the real bot and Discord double.

One Ray instance for the module (starting one takes seconds). An actor killed mid-job has its job run
again on another worker and delivered once; the worker that replaces it joins while the bot runs, and so
does a worker actor started by someone else.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import pytest_asyncio

ray = pytest.importorskip("ray")

from bot.jobs.ray_workers import NAMESPACE, RayWorkers  # noqa: E402
from bot.jobs.workers import WorkerPool, WorkerState  # noqa: E402
from bot.settings import Settings  # noqa: E402
from conftest import ADMIN_ID, PROJECT_ROOT, tiny_env  # noqa: E402
from test_generation_cog import delivered, imagine, reply_text  # noqa: E402
from test_restart_recovery import deliveries, job_id_of  # noqa: E402

SLOW = {"size": "512x512", "steps": 50}


@pytest.fixture(scope="module")
def ray_instance():
    # The actors' processes inherit this environment: the project importable, the test's offline cache.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])
    context = ray.init(address="local", num_cpus=4, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    # The bot's Ray driver is a child process: it joins this instance rather than starting its own.
    os.environ["RAY_ADDRESS"] = context.address_info["gcs_address"]
    yield
    del os.environ["RAY_ADDRESS"]
    ray.shutdown()


@pytest_asyncio.fixture
async def ray_bot(ray_instance, discord_api, hub_cache, tmp_path):
    from bot.discord_bot.client import ZImageBot, point_at_discord, serve
    from bot.jobs.store import JobStore
    from conftest import RunningBot

    env = tiny_env(
        tmp_path,
        hub_cache,
        DISCORD_API_BASE=discord_api.api_base,
        DISCORD_GATEWAY_URL=discord_api.gateway_url,
        DEV_GUILD_ID=str(discord_api.guild_id),
        ADMIN_USER_IDS=str(ADMIN_ID),
        IMAGE_SIZES="64x64,512x512",
        DEVICE="cpu,cpu",
        WORKERS="ray",
    )
    settings = Settings.from_env(env)
    pool = WorkerPool()
    cluster = RayWorkers(settings, pool, watch_seconds=0.5, retry_seconds=2.0)
    cluster.connect()
    await asyncio.to_thread(cluster.start, wait_for=2, timeout=180)
    point_at_discord(settings)
    store = JobStore(settings.data_dir)
    bot = ZImageBot(settings, None, store, workers=pool, guild_ready_timeout=0.05)
    task = asyncio.create_task(serve(bot, discord_api.valid_token))
    await discord_api.wait_for(lambda: bot.is_ready() or task.done(), timeout=15)
    if task.done():
        task.result()
    cluster.watch_in_background()
    running = RunningBot(bot, task, discord_api)
    yield running, cluster, settings
    await running.stop()
    await asyncio.to_thread(cluster.stop)
    store.close()


async def accepted(discord_api, prompt, user, **options):
    interaction = await imagine(discord_api, prompt, user, **options)
    await discord_api.wait_for(lambda: job_id_of(interaction), 15)
    return interaction


async def test_ray_workers_dispatch_survive_a_killed_actor_and_take_in_new_ones(ray_bot, discord_api):
    running, _cluster, settings = ray_bot
    pool, queue = running.runner.workers, running.runner.queue
    assert len(pool.workers) == 2 and all(worker.name.endswith("/cpu") for worker in pool.workers)
    alice, bob = discord_api.make_user("alice"), discord_api.make_user("bob")

    # Dispatch: one job each, at once, on the two actors; progress comes back from them.
    first = await accepted(discord_api, "alice on ray", alice, **SLOW)
    second = await accepted(discord_api, "bob on ray", bob, **SLOW)
    await discord_api.wait_for(lambda: len(queue.running_jobs) == 2, 60)
    assert {worker.job_id for worker in pool.workers} == {1, 2}
    await discord_api.wait_for(lambda: any(job.progress and job.progress.step > 0 for job in queue.running_jobs), 60)

    # Kill the actor making Alice's job: it runs again on the other worker, and is delivered once.
    doomed = next(worker for worker in pool.workers if worker.job_id == 1)
    ray.kill(ray.get_actor(doomed.backend.actor_name, namespace=NAMESPACE))
    for job in (first, second):
        message = await delivered(discord_api, job, 240)
        assert len(message.attachments) == 1
    assert not doomed.in_rotation
    await discord_api.wait_for(lambda: {running.bot.store.get(n).state.value for n in (1, 2)} == {"delivered"})
    assert {job: len(messages) for job, messages in deliveries(discord_api).items()} == {1: 1, 2: 1}

    # A replacement for the dead actor joins while the bot runs; so does an actor someone else started.
    from bot.model.ray_worker import start_actor

    # (Held here: Ray removes an actor nobody holds a handle to; one started on its own is `detached`.)
    elsewhere = start_actor(settings, "zimage-worker-from-elsewhere", gpu=False)
    await discord_api.wait_for(lambda: len(pool.in_rotation()) == 3, 120)
    status = await reply_text(discord_api, await discord_api.invoke("status", {}, user=bob))
    fields = {field["name"]: field["value"] for field in status.embeds[0]["fields"]}
    assert fields["State"] == "ready" and fields["Device"] == "Ray: 3 worker(s) in rotation"
    assert fields["Workers"].count("out of rotation") == 1 and fields["Workers"].count("idle") == 3
    jobs = [await accepted(discord_api, f"after {n}", user) for n, user in enumerate((alice, bob, alice))]
    for job in jobs:
        await delivered(discord_api, job, 120)
    assert all(worker.state is not WorkerState.BUSY for worker in pool.workers)
    assert sum(worker.jobs_done for worker in pool.workers) == 5
    ray.kill(elsewhere)


def test_the_bot_process_of_a_ray_cluster_never_imports_torch():
    import subprocess
    import sys

    # Everything the bot process runs with WORKERS=ray, the code that starts actors included.
    script = (
        "import sys, bot.cli, bot.jobs.ray_workers, bot.discord_bot.client, cogs.generation, cogs.status\n"
        "from bot.model.ray_worker import start_actor\n"
        "print(sorted(name for name in ('torch', 'diffusers', 'transformers') if name in sys.modules))\n"
    )
    shown = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]", shown.stderr


async def test_the_bot_outlives_its_ray_driver_and_resumes_with_a_new_one(ray_bot, discord_api):
    import signal

    running, cluster, _settings = ray_bot
    pool, queue = running.runner.workers, running.runner.queue
    alice = discord_api.make_user("alice")
    job = await accepted(discord_api, "through a lost driver", alice, **SLOW)
    await discord_api.wait_for(lambda: any(job.progress and job.progress.step > 0 for job in queue.running_jobs), 60)

    # The driver child killed as Ray kills a driver whose head is gone: the bot keeps serving and says why.
    first_driver = cluster.driver_pid
    assert first_driver is not None
    os.kill(first_driver, signal.SIGKILL)
    await discord_api.wait_for(lambda: pool.problem is not None, 15)
    status = await reply_text(discord_api, await discord_api.invoke("status", {}, user=alice))
    fields = {field["name"]: field["value"] for field in status.embeds[0]["fields"]}
    assert "the Ray cluster is out of reach" in fields["State"] and "jobs wait" in fields["State"]
    assert not pool.in_rotation()

    # A new driver connects, its workers join, and the job runs again: delivered once.
    message = await delivered(discord_api, job, 240)
    assert len(message.attachments) == 1
    assert cluster.driver_pid not in (None, first_driver)
    await discord_api.wait_for(lambda: running.bot.store.get(1).state.value == "delivered")
    assert {job: len(messages) for job, messages in deliveries(discord_api).items()} == {1: 1}
    await discord_api.wait_for(lambda: len(pool.in_rotation()) == 2, 120)
    status = await reply_text(discord_api, await discord_api.invoke("status", {}, user=alice))
    fields = {field["name"]: field["value"] for field in status.embeds[0]["fields"]}
    assert fields["State"] == "ready" and fields["Device"] == "Ray: 2 worker(s) in rotation"
    assert fields["Workers"].count("idle") == 2 and fields["Workers"].count("out of rotation") == 2
    assert pool.problem is None
