"""Retention: finished jobs older than RETENTION_DAYS go from the store, with their images.

Jobs still to be run or delivered are never touched. The store deletes in small batches, each its
own short transaction, so a write that answers a user never waits behind a whole pass.
"""

from __future__ import annotations

import asyncio
import logging

from bot.jobs.health import TaskHealth
from bot.jobs.store import JobStore
from bot.settings import Settings

log = logging.getLogger(__name__)

RETENTION_INTERVAL = 6 * 3600  # how often old jobs and their images are pruned


async def prune_once(store: JobStore, settings: Settings) -> int:
    """One retention pass, off the event loop; returns how many jobs went."""
    report = await asyncio.to_thread(
        store.prune, older_than_days=settings.retention_days, output_dir=settings.output_dir
    )
    if report.jobs_removed:
        log.info("retention: removed %d old job(s) and %d image(s)", report.jobs_removed, report.files_removed)
    return report.jobs_removed


async def apply_retention(
    store: JobStore, settings: Settings, health: TaskHealth, interval: float = RETENTION_INTERVAL
) -> None:
    """Prune now and then every `interval` seconds, for as long as the bot runs."""
    if settings.retention_days <= 0:
        return
    while True:
        try:
            await prune_once(store, settings)
        except Exception as error:
            log.exception("retention pass failed; trying again in %.0f s", interval)
            health.note("retention", error)
        await asyncio.sleep(interval)
