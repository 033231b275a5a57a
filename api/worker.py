"""The worker process: APScheduler jobs over the shared services."""

from __future__ import annotations

import asyncio
import signal

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from api.bootstrap import Services
from archiver.jobs import reconcile_vault

log = structlog.get_logger("strongroom.worker")

RECONCILE_EVERY_HOURS = 6


def schedule(scheduler: AsyncIOScheduler, services: Services) -> None:
    """Register every recurring job."""
    scheduler.add_job(
        reconcile_vault,
        "interval",
        hours=RECONCILE_EVERY_HOURS,
        args=(services.vault, services.sessions),
        id="reconcile_vault",
        max_instances=1,
        coalesce=True,
    )


def start_scheduler(services: Services) -> AsyncIOScheduler:
    """Start every recurring job on the running event loop."""
    scheduler = AsyncIOScheduler(timezone="UTC")
    schedule(scheduler, services)
    scheduler.start()
    log.info("scheduler started", jobs=[job.id for job in scheduler.get_jobs()])
    return scheduler


async def run_worker(services: Services) -> None:
    """Run the scheduled jobs until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    scheduler = start_scheduler(services)
    try:
        await stop.wait()
    finally:
        scheduler.shutdown(wait=True)
        log.info("worker stopped")
