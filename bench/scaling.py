"""Several workers: queue throughput per device list, the dispatch overhead, and fairness under load.

    python -m bench.scaling                          # cuda:0, then cuda:0,cuda:1, then every GPU
    python -m bench.scaling --configs cuda:0,all --jobs 40
    python -m bench.scaling --configs cuda:0,cuda:1 --workers ray
    python -m bench.scaling --tiny                   # CPU workers (cpu, then cpu,cpu), tiny model

Each configuration runs in a fresh process (start-to-ready includes loading every device in parallel,
from one model folder and one page cache) with the full-size random-weight model that
bench/run_benchmark.py builds (the same --work-dir shares it). Per configuration:

- a queue of --jobs jobs (1024x1024, 8 steps) accepted at once through the real JobRunner, store and
  PNG saving: images per second, and the dispatch overhead per job: the time workers were not
  generating while jobs waited, ((wall time x workers) - generation time) / jobs, an upper bound that
  also counts the last jobs' uneven finish;
- fairness: one user sends 20 jobs, then two users send 3 each (all in line before the first starts);
  whether all six light jobs started before the heavy user's fourth.

Writes --results (JSON) and prints a table; copy the figures into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.build_random_model import BENCH_REPO_ID, FULL_SIZE, TINY, repo_folder_name
from bench.run_benchmark import BOT_VARIABLES, PROJECT_ROOT, machine_info

FAIRNESS_HEAVY, FAIRNESS_LIGHT = 20, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", help="DEVICE values, separated by ';' (default: cuda:0;cuda:0,cuda:1;all)")
    parser.add_argument("--workers", default="local", choices=("local", "ray"), help="WORKERS for every run")
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--size", default=None, help="default 1024x1024 (64x64 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="default 8 (2 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on CPU workers: cpu;cpu,cpu")
    parser.add_argument("--work-dir", type=Path, default=PROJECT_ROOT / "bench-work")
    parser.add_argument("--results", type=Path, default=PROJECT_ROOT / "bench" / "results" / "scaling.json")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="for each configuration")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one configuration here
    args = parser.parse_args(argv)
    size = args.size or ("64x64" if args.tiny else "1024x1024")
    steps = args.steps or (2 if args.tiny else 8)
    if args.one is not None:
        figures = asyncio.run(measure(args.one, args.jobs, size, steps))
        print("RESULT " + json.dumps(figures), flush=True)
        return 0

    work = args.work_dir.resolve()
    hub = work / "hf" / "hub"
    build_model(work, hub, args.tiny)
    configs = (args.configs or ("cpu;cpu,cpu" if args.tiny else "cuda:0;cuda:0,cuda:1;all")).split(";")
    results: dict = {"machine": machine_info(), "jobs": args.jobs, "size": size, "steps": steps, "runs": {}}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for config in configs:
        env = {key: value for key, value in os.environ.items() if key not in BOT_VARIABLES}
        env.update(
            HF_HOME=str(hub.parent),
            HF_HUB_CACHE=str(hub),
            HF_HUB_OFFLINE="1",
            MODEL_ID=BENCH_REPO_ID,
            DEVICE=config,
            WORKERS=args.workers,
            SAFETY_MODEL="",  # throughput of the pipeline alone, comparable with the other phases
            IMAGE_SIZES=size,
            DEFAULT_STEPS=str(steps),
            DATA_DIR=str(work / "data" / "scaling"),  # the compile cache, shared by the runs
            PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        )
        if args.workers == "ray" and config.startswith("cuda:"):
            # Ray's workers take every GPU the (local) cluster has: show it only the listed ones.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(part.split(":")[1] for part in config.split(","))
        if args.tiny:
            # One thread a worker: on a busy CPU, torch's two-thread parallel regions wait on each other
            # (a tiny image took many times longer), and one worker would otherwise take every core.
            env.update(COMPILE="0", OMP_NUM_THREADS="1")
        command = [sys.executable, "-m", "bench.scaling", "--one", config, "--jobs", str(args.jobs)]
        command += ["--size", size, "--steps", str(steps)]
        print(f"scaling: DEVICE={config} WORKERS={args.workers}", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            done = subprocess.run(
                command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=args.timeout_s
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            run = json.loads(lines[-1][7:]) if lines else {"status": "failed", "log": done.stderr[-4000:]}
        except subprocess.TimeoutExpired:
            run = {"status": "failed", "log": f"timed out after {args.timeout_s} s"}
        run["process_s"] = time.monotonic() - started
        results["runs"][f"{args.workers}:{config}"] = run
        args.results.write_text(json.dumps(results, indent=2))
    print(render(results))
    return 0 if all(run.get("status") == "ok" for run in results["runs"].values()) else 1


def build_model(work: Path, hub: Path, tiny: bool) -> None:
    """The random-weight model, built once into the same place bench/run_benchmark.py keeps it."""
    spec = TINY if tiny else FULL_SIZE
    marker = work / "built-model.json"
    if marker.is_file() and marker.read_text() == spec.to_json() and (hub / repo_folder_name(BENCH_REPO_ID)).is_dir():
        return
    hub.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bench.build_random_model", str(hub), "--device", "cpu" if tiny else "cuda"]
    subprocess.run([*command, *(["--tiny"] if tiny else [])], cwd=PROJECT_ROOT, check=True)
    marker.write_text(spec.to_json())


# ----- one configuration, in its own process ---------------------------------------------------------


async def measure(config: str, jobs: int, size: str, steps: int) -> dict:
    from bot.generation import GenerationRequest
    from bot.image_size import ImageSize
    from bot.settings import Settings

    settings = Settings.from_env()
    begun = time.perf_counter()
    pool, close = await asyncio.to_thread(start_workers, settings)
    figures: dict = {"status": "ok", "workers": [worker.name for worker in pool.workers]}
    figures["ready_s"] = time.perf_counter() - begun
    try:
        request = GenerationRequest("a lighthouse on a cliff at sunset", ImageSize.parse(size), steps, seed=0)
        queue = await run_jobs(settings, pool, [(1, replace(request, seed=n)) for n in range(jobs)])
        figures["queue"] = queue
        heavy = [(1, replace(request, seed=n)) for n in range(FAIRNESS_HEAVY)]
        light = [(user, replace(request, seed=100 * user + n)) for user in (2, 3) for n in range(FAIRNESS_LIGHT)]
        fairness = await run_jobs(settings, pool, heavy + light, fairness=True)
        figures["fairness"] = fairness
    finally:
        await asyncio.to_thread(close)
    return figures


def start_workers(settings):
    """The workers as `zimage-bot run` starts them; returns the pool and how to close it."""
    from bot.jobs.workers import WorkerPool

    if settings.workers == "ray":
        from bot.jobs.ray_workers import RayWorkers

        pool = WorkerPool()
        cluster = RayWorkers(settings, pool)
        cluster.connect()
        cpus = all(device == "cpu" for device in settings.devices)
        wanted = len(settings.devices) if cpus else cluster.cluster_gpus
        cluster.start(wait_for=wanted)  # every worker ready: the same start line as the local runs
        return pool, cluster.stop
    from bot.model.devices import create_services, load_all, resolve_devices

    services = load_all(
        create_services(settings, resolve_devices(settings)), warm_up=True, allow_degraded=settings.allow_degraded
    )

    def close() -> None:
        for service in services:
            service.close()

    return WorkerPool.of(services), close


async def run_jobs(settings, pool, jobs: list, *, fairness: bool = False, timeout: float = 1800.0) -> dict:
    """Accept every job at once (in list order) into a JobRunner over `pool`; time until all are delivered."""
    import tempfile

    from bench.measure import RecordingPresenter
    from bot.jobs.runner import DEFAULT_ATTACHMENT_LIMIT, JobRunner, new_record
    from bot.jobs.store import JobStore

    if not jobs:
        return {}
    folder = Path(tempfile.mkdtemp(prefix="zimage-scaling-"))
    settings = replace(
        settings,
        data_dir=folder / "data",
        output_dir=folder / "outputs",
        max_queue=max(settings.max_queue, len(jobs)),
        max_jobs_per_user=max(settings.max_jobs_per_user, len(jobs)),
        retention_days=0,
    )
    store = JobStore(settings.data_dir)
    runner = JobRunner(settings, None, store, workers=pool)
    presenter = RecordingPresenter()
    await runner.start(presenter)
    try:
        # Every job is in line before the first starts: as if they came at once to busy workers, and the
        # time measured is the workers', not the store's accepting.
        await runner.set_paused(True)
        for user, request in jobs:
            record = new_record(request, user_id=user, channel_id=1)
            runner.reserve(user)
            await runner.accept(record, application_id=None, attachment_size_limit=DEFAULT_ATTACHMENT_LIMIT)
        started = time.perf_counter()
        await runner.set_paused(False)
        await presenter.wait_for(len(jobs), timeout)
        elapsed = time.perf_counter() - started
        users = sorted({user for user, _ in jobs})
        records = [r for user in users for r in await asyncio.to_thread(store.recent_for_user, user, len(jobs))]
    finally:
        await runner.stop(timeout=15.0)
        store.close()
    workers = max(len(pool.in_rotation()), 1)
    generation = sum(record.seconds or 0.0 for record in records)
    figures = {
        "jobs": len(jobs),
        "delivered": len(presenter.delivered),
        "failed": sorted(presenter.concluded.values()),
        "seconds": elapsed,
        "images_per_s": len(presenter.delivered) / elapsed if elapsed else None,
        "mean_generation_s": generation / len(records) if records else None,
        "dispatch_overhead_ms_per_job": 1000 * max(elapsed * workers - generation, 0.0) / len(jobs),
        "jobs_per_worker": [worker.jobs_done for worker in pool.workers],
    }
    if fairness:
        heavy_starts = sorted(record.started_at for record in records if record.user_id == 1)
        light_starts = [record.started_at for record in records if record.user_id != 1]
        figures["light_jobs_before_heavy_fourth"] = all(start < heavy_starts[3] for start in light_starts)
    return figures


def render(results: dict) -> str:
    machine = results["machine"]
    lines = [
        f"{machine.get('gpu')} x{len(results['runs'])} configurations, {machine.get('cpus')} CPUs; "
        f"{results['jobs']} jobs at {results['size']}, {results['steps']} steps",
        "",
        "| workers | devices | ready | images/s | dispatch overhead / job | light jobs before heavy's 4th |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in results["runs"].items():
        if run.get("status") != "ok":
            lines.append(f"| {name} | failed: {run.get('log', '')[-200:]!r} | | | | |")
            continue
        queue, fairness = run["queue"], run["fairness"]
        lines.append(
            f"| {name} | {', '.join(run['workers'])} | {run['ready_s']:.1f} s | {queue['images_per_s']:.3f} | "
            f"{queue['dispatch_overhead_ms_per_job']:.1f} ms | {fairness['light_jobs_before_heavy_fourth']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
