"""Several devices on one host: which GPUs DEVICE names, and loading one pipeline on each, in parallel.

Each device gets its own PipelineService (its own resident pipeline and its own single thread), so the
one-device shape is simply the list of one.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import torch

from bot.model.pipeline_service import LoadReport, ModelLoadError, PipelineService
from bot.settings import ConfigError, Settings

log = logging.getLogger(__name__)


def resolve_devices(settings: Settings) -> list[str]:
    """The devices to load on: `all` becomes every visible GPU; a GPU that is not there is a ConfigError."""
    devices = list(settings.devices)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if devices == ["all"]:
        if gpus == 0:
            raise ConfigError("DEVICE", "all", "torch sees no CUDA GPU; use cpu, or install the CUDA build of torch")
        return [f"cuda:{index}" for index in range(gpus)]
    missing = [device for device in devices if device.startswith("cuda:") and int(device.split(":")[1]) >= gpus]
    if missing:
        seen = f"GPUs cuda:0 to cuda:{gpus - 1}" if gpus else "no CUDA GPU"
        raise ConfigError("DEVICE", settings.device, f"{', '.join(missing)} does not exist (torch sees {seen})")
    return devices


def create_services(settings: Settings, devices: list[str]) -> list[PipelineService]:
    """One (not yet loaded) service per device; the one-device shape keeps the settings as they are."""
    if len(devices) == 1 and devices[0] == settings.device:
        return [PipelineService(settings)]
    return [PipelineService(settings.for_device(device)) for device in devices]


def load_all(services: list[PipelineService], *, warm_up: bool, allow_degraded: bool) -> list[PipelineService]:
    """Load and warm up every service at once, one thread each: the warm-ups (compiling, first calls)
    run in parallel; reading the weights and building modules go one device at a time (see the lock
    in pipeline_service).
    Returns the services that loaded.

    A device that fails stops start-up with its name, unless `allow_degraded` and another one loaded;
    the failed ones are closed either way."""
    if len(services) == 1:
        services[0].load(warm_up=warm_up)
        return services
    with ThreadPoolExecutor(max_workers=len(services), thread_name_prefix="zimage-load") as pool:
        futures = [pool.submit(service.load, warm_up=warm_up) for service in services]
        failures: list[tuple[PipelineService, BaseException]] = []
        for service, future in zip(services, futures, strict=True):
            error = future.exception()
            if error is not None:
                failures.append((service, error))
    if not failures:
        return services
    healthy = [service for service in services if service.ready]
    for service, error in failures:
        log.error("%s failed to load: %s", service.device, error)
        service.close()
    named = "; ".join(f"{service.device}: {error}" for service, error in failures)
    if healthy and allow_degraded:
        log.warning("ALLOW_DEGRADED: starting with %d of %d devices (%s failed)", len(healthy), len(services), named)
        return healthy
    for service in healthy:
        service.close()
    hint = "" if allow_degraded else " (ALLOW_DEGRADED=1 starts with the devices that loaded)"
    raise ModelLoadError(f"could not load the model on {named}{hint}")


def combined_report(services: list[PipelineService]) -> LoadReport:
    """What `model ready` says for several devices: they loaded side by side, so the slowest counts."""
    reports = [service.load_report for service in services if service.load_report is not None]
    slowest = max(reports, key=lambda report: report.load_seconds + report.warmup_seconds)
    return LoadReport(
        from_cache=all(report.from_cache for report in reports),
        load_seconds=slowest.load_seconds,
        warmup_seconds=slowest.warmup_seconds,
        enhancer=slowest.enhancer,
    )
