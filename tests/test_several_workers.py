"""Several workers on one host: DEVICE lists, parallel loading, dispatch to the next free worker.

The workers are CPU workers on the tiny model (DEVICE=cpu,cpu tries the several-GPU shape on one
machine): two resident pipelines, two threads, one fair queue, the real bot against the Discord double.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace

import pytest
import pytest_asyncio

from bot.jobs.workers import MAX_FAILURES_IN_A_ROW, WorkerState
from bot.settings import ConfigError, Settings
from conftest import ADMIN_ID, tiny_env
from test_generation_cog import delivered, imagine, reply_text
from test_restart_recovery import delivered_at, deliveries, job_id_of, stored_states, submit
from test_restart_recovery import launch as launch

SLOW = {"size": "512x512", "steps": 50}  # a few seconds on the tiny model: long enough to act while it runs


# ----- DEVICE ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "devices"),
    [
        ("cuda:0,cuda:1", ("cuda:0", "cuda:1")),
        (" CUDA:1 , cuda:0 ", ("cuda:1", "cuda:0")),
        ("all", ("all",)),
        ("cpu,cpu", ("cpu", "cpu")),
        ("cuda:1", ("cuda:1",)),
    ],
)
def test_device_lists_are_parsed(value, devices):
    settings = Settings.from_env({"DEVICE": value})
    assert settings.devices == devices
    assert settings.device == ",".join(devices)
    assert settings.for_device(devices[0]).devices == (devices[0],)


def test_the_default_is_one_device():
    settings = Settings.from_env({})
    assert settings.devices == ("auto",) and settings.device == "auto"
    assert settings.workers == "local" and settings.metrics_port is None and not settings.allow_degraded


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("cuda:0,cuda:0", "cuda:0 named twice"),
        ("cpu,cuda:0", "cpu and cuda mixed"),
        ("cuda,cuda:1", "name each GPU as cuda:N"),
        ("auto,cuda:1", "name each GPU as cuda:N"),
        ("cuda:0,,cuda:1", "an empty entry"),
        ("mps,mps", "mps named twice"),
        ("gpu", "or a list such as cuda:0,cuda:1"),
    ],
)
def test_bad_device_lists_say_what_to_change(value, hint):
    with pytest.raises(ConfigError, match=hint) as caught:
        Settings.from_env({"DEVICE": value})
    assert caught.value.variable == "DEVICE"


def test_a_missing_gpu_is_a_configuration_error():
    from bot.model.devices import resolve_devices

    # This suite runs on CPUs: every GPU is missing.
    with pytest.raises(ConfigError, match=r"cuda:1 does not exist \(torch sees no CUDA GPU\)"):
        resolve_devices(Settings.from_env({"DEVICE": "cuda:0,cuda:1"}))
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        resolve_devices(Settings.from_env({"DEVICE": "all"}))
    assert resolve_devices(Settings.from_env({"DEVICE": "cpu,cpu"})) == ["cpu", "cpu"]


def test_run_with_a_missing_gpu_exits_2_with_one_line(tmp_path, hub_cache):
    env = tiny_env(tmp_path, hub_cache, DEVICE="cuda:0,cuda:1", DISCORD_TOKEN="x")
    done = subprocess.run(
        [sys.executable, "-m", "bot", "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "configuration error" in line]
    assert errors == [
        "zimage-bot: configuration error: DEVICE='cuda:0,cuda:1' is not valid: "
        "cuda:0, cuda:1 does not exist (torch sees no CUDA GPU)"
    ]
    assert "Traceback" not in done.stderr and "model ready" not in done.stderr


# ----- loading ------------------------------------------------------------------------------------


def test_two_devices_load_in_parallel_and_a_failing_one_is_named(tiny_settings):
    from bot.model.devices import create_services, load_all
    from bot.model.pipeline_service import ModelLoadError, PipelineService

    services = create_services(tiny_settings, ["cpu", "cpu"])
    assert [service.settings.devices for service in services] == [("cpu",), ("cpu",)]
    loaded = load_all(services, warm_up=False, allow_degraded=False)
    assert loaded == services and all(service.ready for service in services)
    for service in services:
        service.close()

    def pair():
        # The second cannot load: its revision is not in the (offline) cache.
        broken = replace(tiny_settings.for_device("cpu"), model_revision="no-such-revision")
        return [PipelineService(tiny_settings.for_device("cpu")), PipelineService(broken)]

    services = pair()
    with pytest.raises(ModelLoadError, match=r"could not load the model on cpu: .*ALLOW_DEGRADED=1"):
        load_all(services, warm_up=False, allow_degraded=False)
    assert not any(service.ready for service in services)  # the healthy one is closed too

    services = pair()
    loaded = load_all(services, warm_up=False, allow_degraded=True)
    assert loaded == services[:1] and loaded[0].ready
    loaded[0].close()


def meta_weights(service) -> list[str]:
    """The weights of a loaded service left on the meta device (no data): none when it loaded right."""
    import torch

    modules = service.call_on_worker(
        lambda pipe: {name: part for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)}
    )
    if service.safety_checker is not None:
        modules["safety"] = service.safety_checker.model
    if service.enhancer is not None:
        modules["enhancer"] = service.enhancer.model
    return [
        f"{name}.{weight}"
        for name, module in modules.items()
        for weight, tensor in [*module.named_parameters(), *module.named_buffers()]
        if tensor.is_meta
    ]


def test_devices_loading_side_by_side_build_every_module_with_its_weights(tiny_settings):
    """Loading patches torch for the whole process (every module built meanwhile lands on the meta
    device). Pairs of devices load at once, the second started a little later each time so that each
    step of one load meets the other's from_pretrained in some pair: a step that built modules outside
    the lock failed ("Cannot copy out of meta tensor") or silently left a weight without data."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from bot.model.pipeline_service import PipelineService

    for step in range(16):
        services = [PipelineService(tiny_settings.for_device("cpu")) for _ in range(2)]
        try:
            with ThreadPoolExecutor(max_workers=2) as pool:
                first = pool.submit(services[0].load, warm_up=False)
                time.sleep(step * 0.004)
                second = pool.submit(services[1].load, warm_up=False)
                first.result(), second.result()
            for service in services:
                assert service.safety_checker is not None and service.enhancer is not None
                assert meta_weights(service) == [], f"second device started {step * 4} ms later"
        finally:
            for service in services:
                service.close()


def test_a_device_builds_nothing_while_another_reads_its_weights(tiny_settings):
    """Held here as another device's from_pretrained holds it: the lock, and inside it accelerate's
    init_empty_weights, the process-wide patch that puts every new weight on the meta device. The
    device that loads meanwhile must wait for the lock, not build its safety classifier under the patch."""
    from concurrent.futures import ThreadPoolExecutor

    import accelerate

    from bot.model import pipeline_service

    service = pipeline_service.PipelineService(tiny_settings)
    with ThreadPoolExecutor(max_workers=1) as pool:
        with pipeline_service._LOAD_LOCK, accelerate.init_empty_weights():
            loading = pool.submit(service.load, warm_up=False)
            with pytest.raises(TimeoutError):
                loading.result(timeout=2)  # still waiting for the other device
        loading.result(timeout=60)
    try:
        assert service.ready and meta_weights(service) == []
    finally:
        service.close()


# ----- the bot with two workers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_service(hub_cache, tmp_path_factory):
    """A second tiny pipeline beside the session's: two CPU workers."""
    from bot.model.pipeline_service import PipelineService

    settings = Settings.from_env(tiny_env(tmp_path_factory.mktemp("second"), hub_cache))
    service = PipelineService(settings)
    service.load()
    yield service
    service.close()


@pytest_asyncio.fixture
async def start_two(discord_api, loaded_service, second_service, tmp_path):
    """The real bot with two workers (loaded_service and `second`, or a given pair)."""
    from bot.discord_bot.client import ZImageBot, point_at_discord, serve
    from bot.jobs.store import JobStore
    from bot.jobs.workers import WorkerPool
    from conftest import RunningBot

    started = []

    async def start(services=None, **overrides: str):
        services = services or [loaded_service, second_service]
        env = tiny_env(
            tmp_path,
            DISCORD_API_BASE=discord_api.api_base,
            DISCORD_GATEWAY_URL=discord_api.gateway_url,
            DEV_GUILD_ID=str(discord_api.guild_id),
            ADMIN_USER_IDS=str(ADMIN_ID),
            IMAGE_SIZES="64x64,512x512",
            MAX_JOBS_PER_USER="5",
        )
        env.update(overrides)
        settings = Settings.from_env(env)
        point_at_discord(settings)
        store = JobStore(settings.data_dir)
        workers = WorkerPool.of(services)
        bot = ZImageBot(settings, services[0], store, workers=workers, guild_ready_timeout=0.05)
        task = asyncio.create_task(serve(bot, discord_api.valid_token))
        await discord_api.wait_for(lambda: bot.is_ready() or task.done(), timeout=15)
        if task.done():
            task.result()
        running = RunningBot(bot, task, discord_api)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()
        running.bot.store.close()


async def accepted(discord_api, prompt, user, **options):
    """/imagine, then wait until the job is queued: jobs sent one after the other keep their order."""
    interaction = await imagine(discord_api, prompt, user, **options)
    await discord_api.wait_for(lambda: job_id_of(interaction), 15)
    return interaction


def status_fields(message) -> dict[str, str]:
    return {field["name"]: field["value"] for field in message.embeds[0]["fields"]}


async def test_two_workers_run_two_jobs_at_once_and_keep_each_users_order(start_two, discord_api):
    running = await start_two()
    queue, workers = running.runner.queue, running.runner.workers
    alice, bob = discord_api.make_user("alice"), discord_api.make_user("bob")
    # Alice's slow job, then her quick one: the quick one is made first by the other worker, but
    # delivered after the slow one.
    slow = await accepted(discord_api, "alice slow", alice, **SLOW)
    await discord_api.wait_for(lambda: len(queue.running_jobs) == 1, 10)
    quick = await accepted(discord_api, "alice quick", alice)
    both_busy = await discord_api.wait_for(lambda: len(queue.running_jobs) == 2 or slow.original.attachments, 30)
    assert both_busy is True, "the second worker did not take the second job while the first ran"
    assert {worker.state for worker in workers.workers} == {WorkerState.BUSY}
    assert {worker.job_id for worker in workers.workers} == {1, 2}
    # The quick job is made while the slow one still runs; its pictures wait for Alice's earlier job.
    quick_made = await discord_api.wait_for(lambda: sum(worker.jobs_done for worker in workers.workers), 60)
    assert quick_made == 1 and queue.running_jobs and queue.running_jobs[0].job_id == 1
    assert not quick.original.attachments
    status = await reply_text(discord_api, await discord_api.invoke("status", {}, user=bob))
    fields = status_fields(status)
    assert fields["Workers"].splitlines()[0].startswith("`cpu` busy (job 1) · ")
    assert fields["Throughput"].endswith("images/s (last 5 min)")
    await delivered(discord_api, slow, 120)
    await delivered(discord_api, quick, 60)
    assert delivered_at(slow.original) < delivered_at(quick.original)
    assert sorted(worker.jobs_done for worker in workers.workers) == [1, 1]
    await discord_api.wait_for(lambda: workers.images_per_second() > 0)


async def test_fair_order_and_cancel_with_two_workers(start_two, discord_api):
    running = await start_two(MAX_JOBS_PER_USER="6")
    queue = running.runner.queue
    heavy, light = discord_api.make_user("heavy"), discord_api.make_user("light")
    jobs = [await accepted(discord_api, f"heavy {n}", heavy, **SLOW) for n in range(4)]
    await discord_api.wait_for(lambda: len(queue.running_jobs) == 2, 30)
    late = await accepted(discord_api, "light 1", light)
    await discord_api.wait_for(lambda: queue.position(5) is not None, 10)
    assert queue.position(5) == 2  # after one more of the heavy user's jobs, before the others
    # Cancel one of the running jobs: its worker is free for the next job at once.
    cancel = await discord_api.invoke("cancel", {"job": 2}, user=heavy)
    await reply_text(discord_api, cancel)
    await discord_api.wait_for(lambda: running.bot.store.get(2).state.value == "cancelled", 60)
    await delivered(discord_api, late, 60)
    for job in (jobs[0], jobs[2], jobs[3]):
        await delivered(discord_api, job, 180)
    assert not jobs[1].original.attachments
    assert running.bot.store.get(5).started_at < running.bot.store.get(4).started_at


async def test_a_worker_that_fails_leaves_rotation_and_its_job_runs_elsewhere(
    start_two, discord_api, loaded_service, tiny_settings
):
    from bot.model.pipeline_service import PipelineService

    doomed = PipelineService(tiny_settings)
    doomed.load(warm_up=False)
    running = await start_two([loaded_service, doomed])
    workers = running.runner.workers
    assert len(workers.in_rotation()) == 2
    doomed.close()  # its device is gone while its worker waits for a job
    assert workers.in_rotation() == [workers.workers[0]]
    alice, bob = discord_api.make_user("alice"), discord_api.make_user("bob")
    # Two jobs: the broken worker may draw one; it goes back in line and the other worker makes both.
    first = await accepted(discord_api, "alice", alice, **SLOW)
    second = await accepted(discord_api, "bob", bob)
    for job in (first, second):
        message = await delivered(discord_api, job, 120)
        assert len(message.attachments) == 1
    assert not workers.workers[1].in_rotation and workers.workers[1].jobs_done == 0
    assert workers.workers[0].jobs_done == 2
    await discord_api.wait_for(lambda: {running.bot.store.get(n).state.value for n in (1, 2)} == {"delivered"})
    assert {job: len(messages) for job, messages in deliveries(discord_api).items()} == {1: 1, 2: 1}
    fields = status_fields(await reply_text(discord_api, await discord_api.invoke("status", {})))
    assert fields["State"] == "ready"
    assert fields["Workers"].splitlines()[1].startswith("`cpu` out of rotation · 0 jobs")


async def test_repeated_failures_take_a_worker_out(loaded_service, second_service):
    from bot.generation import GenerationError
    from bot.jobs.workers import WorkerPool

    pool = WorkerPool.of([loaded_service, second_service])
    first = pool.workers[0]
    for attempt in range(1, MAX_FAILURES_IN_A_ROW):
        assert pool.failed(first, GenerationError("the GPU ran out of memory")) is False
        assert first.failures_in_a_row == attempt and first.in_rotation
    assert pool.failed(first, GenerationError("the GPU ran out of memory")) is True
    assert first.state is WorkerState.OUT and first.why_out.startswith("3 failures in a row")
    assert pool.in_rotation() == [pool.workers[1]] and not pool.others_in_rotation(pool.workers[1])
    last = pool.workers[1]
    for _ in range(MAX_FAILURES_IN_A_ROW + 1):  # the last worker in rotation stays in it
        assert pool.failed(last, GenerationError("the GPU ran out of memory")) is False
    assert last.in_rotation and last.failures_in_a_row == MAX_FAILURES_IN_A_ROW + 1


# ----- the command line: two workers, killed, started again ----------------------------------------------


async def test_two_cpu_workers_from_the_command_line_survive_a_kill(launch, discord_api, tmp_path):
    import signal

    data_dir = tmp_path / "data"
    alice, bob = discord_api.make_user("alice"), discord_api.make_user("bob")
    first = await launch(DEVICE="cpu,cpu")
    await first.ready()
    assert "zimage-bot: device cpu, cpu," in first.stderr
    assert "on 2 devices, loaded in parallel" in first.stderr
    a1 = await submit(first, "alice 1", alice, seed=1, size="512x512", steps=50)
    b1 = await submit(first, "bob 1", bob, seed=2, size="512x512", steps=50)
    a2 = await submit(first, "alice 2", alice, seed=3)
    assert [job_id_of(i) for i in (a1, b1, a2)] == [1, 2, 3]
    await first.until(
        lambda: stored_states(data_dir).get(1) == "running" and stored_states(data_dir).get(2) == "running",
        60,
        "two jobs running at once",
    )
    first.kill()
    assert await first.exit_status() == -signal.SIGKILL

    second = await launch(DEVICE="cpu,cpu")
    await second.ready()
    await second.until(
        lambda: set(stored_states(data_dir).values()) == {"delivered"}, 180, "every job delivered after the restart"
    )
    posted = deliveries(discord_api)
    assert {job: len(messages) for job, messages in posted.items()} == {1: 1, 2: 1, 3: 1}
    assert delivered_at(posted[1][0]) < delivered_at(posted[3][0])  # alice's order
    second.terminate()
    assert await second.exit_status() == 0


# ----- the benchmark of several workers ---------------------------------------------------------------


def test_the_scaling_benchmark_runs_on_cpu_workers(tmp_path):
    import json

    from conftest import PROJECT_ROOT

    results = tmp_path / "scaling.json"
    command = [sys.executable, "-m", "bench.scaling", "--tiny", "--configs", "cpu,cpu", "--jobs", "6"]
    command += ["--work-dir", str(tmp_path / "work"), "--results", str(results)]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    run = json.loads(results.read_text())["runs"]["local:cpu,cpu"]
    assert run["status"] == "ok" and run["workers"] == ["cpu", "cpu"]
    queue, fairness = run["queue"], run["fairness"]
    assert queue["delivered"] == 6 and queue["failed"] == [] and sum(queue["jobs_per_worker"]) == 6
    assert queue["images_per_s"] > 0 and queue["dispatch_overhead_ms_per_job"] >= 0
    assert fairness["delivered"] == 26 and fairness["light_jobs_before_heavy_fourth"] is True
    assert "| local:cpu,cpu | cpu, cpu |" in done.stdout
