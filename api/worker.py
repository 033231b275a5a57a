"""The worker: projection of the capture journal and scheduled jobs."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from api.bootstrap import Services
from archiver.jobs import reconcile_vault

log = structlog.get_logger("strongroom.worker")

RECONCILE_EVERY_HOURS = 6
MEDIA_EVERY_SECONDS = 10
CHECKPOINT_EVERY_SECONDS = 60


def schedule(scheduler: AsyncIOScheduler, services: Services) -> None:
    """Register every recurring job."""
    common = {"max_instances": 1, "coalesce": True}
    scheduler.add_job(
        reconcile_vault,
        "interval",
        hours=RECONCILE_EVERY_HOURS,
        args=(services.vault, services.sessions),
        id="reconcile_vault",
        **common,
    )
    scheduler.add_job(
        services.media.fetch_due,
        "interval",
        seconds=MEDIA_EVERY_SECONDS,
        id="fetch_media",
        **common,
    )


@asynccontextmanager
async def background_jobs(services: Services) -> AsyncIterator[None]:
    """Run the journal projection loop and the scheduled jobs while inside."""
    stop = asyncio.Event()
    projection = asyncio.create_task(services.capture.run_projection(stop))
    scheduler = AsyncIOScheduler(timezone="UTC")
    schedule(scheduler, services)
    scheduler.start()
    log.info("background jobs started", jobs=[job.id for job in scheduler.get_jobs()])
    try:
        yield
    finally:
        stop.set()
        scheduler.shutdown(wait=False)
        await projection


async def run_worker(services: Services) -> None:
    """Run the background jobs until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with background_jobs(services):
        await stop.wait()
    log.info("worker stopped")
