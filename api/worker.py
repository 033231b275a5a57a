"""The worker: projection of the capture journal, and the scheduled jobs that
each context declares (:func:`declared_jobs`).

``strongroom worker`` runs them; the embedded ``strongroom serve`` runs one as a
child process (:func:`worker_process`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from api.bootstrap import Services, freeze_startup_heap
from archiver.audit import jobs as audit_jobs
from archiver.core.errors import InvalidInput
from archiver.core.jobs import Job, JobRunner, job_lock
from archiver.media import jobs as media_jobs
from archiver.media.jobs import FETCH_EVERY
from archiver.vault import jobs as vault_jobs
from policy import jobs as policy_jobs

log = structlog.get_logger("strongroom.worker")

# The demo says how long it waits for the media fetch.
MEDIA_EVERY_SECONDS = int(FETCH_EVERY.total_seconds())
# How often an idle projector looks for new journal entries (one indexed query).
PROJECTION_POLL_SECONDS = 0.2
# How often an idle dispatcher looks for due outbox items.
DISPATCH_POLL_SECONDS = 0.5
# How long a stopping worker lets the jobs in progress finish before it cancels
# them (a checkpoint takes milliseconds; a vault reconciliation may take hours).
JOB_FINISH_SECONDS = 10.0
# How long the embedded server waits for its worker to finish what it is doing.
WORKER_STOP_SECONDS = 30.0
# Added to the embedded worker's niceness: when the two compete for a core,
# acknowledging webhooks comes first and projection catches up afterwards.
EMBEDDED_WORKER_NICENESS = 10


def declared_jobs(services: Services) -> list[Job]:
    """Every context's scheduled jobs, each given only what it uses."""
    return [
        *audit_jobs.jobs(services.audit),
        *vault_jobs.jobs(services.vault, services.sessions),
        *media_jobs.jobs(services.media),
        *policy_jobs.jobs(services.reactions),
    ]


def schedule(scheduler: AsyncIOScheduler, jobs: Sequence[Job], runner: JobRunner) -> None:
    """Register each of ``jobs`` to run through ``runner`` at its interval.

    One run of a job at a time in this worker; runs missed while the event loop
    was busy are run once, however late.
    """
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"two jobs share a name: {sorted(names)}")
    for job in jobs:
        scheduler.add_job(
            runner.run,
            "interval",
            seconds=job.every.total_seconds(),
            args=(job,),
            id=job.name,
            name=job.name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )


@asynccontextmanager
async def background_jobs(services: Services) -> AsyncIterator[None]:
    """Run the journal projection loop and the declared jobs while inside."""
    # APScheduler logs every run at info; the audit checkpoint looks every second.
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    stop = asyncio.Event()
    projection = asyncio.create_task(
        services.capture.run_projection(stop, idle_seconds=PROJECTION_POLL_SECONDS)
    )
    # The outbox's loop: decide what was queued, send what is due.
    dispatch = asyncio.create_task(
        services.dispatcher.run(stop, idle_seconds=DISPATCH_POLL_SECONDS)
    )
    runner = JobRunner(job_lock(services.engine), audit_jobs.record_runs(services.audit))
    scheduler = AsyncIOScheduler(timezone="UTC")
    schedule(scheduler, declared_jobs(services), runner)
    scheduler.start()
    log.info("background jobs started", jobs=[job.id for job in scheduler.get_jobs()])
    try:
        yield
    finally:
        stop.set()
        scheduler.pause()
        await asyncio.gather(projection, dispatch, runner.finish(JOB_FINISH_SECONDS))
        scheduler.shutdown(wait=False)


class _StopWhenClosed(asyncio.Protocol):
    """Sets ``stop`` when the pipe it reads closes."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()


async def run_worker(services: Services, *, embedded: bool = False) -> None:
    """Run the background jobs until SIGINT or SIGTERM.

    ``embedded``: run as the embedded server's child (see :func:`worker_process`):
    stop also when stdin closes, and run at a lower CPU priority than the server.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if embedded:
        await loop.connect_read_pipe(lambda: _StopWhenClosed(stop), sys.stdin)
        # Linux gives each thread its own niceness: this lowers the event loop's
        # and that of the threads it starts from now on, but not the database
        # writers', started with the services. A niced writer held SQLite's one
        # write lock for longer whenever the server was busy, and the server's
        # writers waited for it.
        os.nice(EMBEDDED_WORKER_NICENESS)
    freeze_startup_heap()
    async with background_jobs(services):
        await stop.wait()
    log.info("worker stopped")


@asynccontextmanager
async def worker_process() -> AsyncIterator[None]:
    """Run ``strongroom worker`` as a child process (on the same settings, read from
    the same environment) while inside; on the way out, wait for it to stop.

    In a process of its own, projection neither holds the server's event loop nor
    shares its interpreter lock, and it runs on another core; at a lower CPU
    priority, it takes what acknowledging webhooks leaves. The child stops when its
    stdin closes: here, or when this process dies, however it dies (SIGKILL too).
    It finishes the batch in hand first, and projection is idempotent, so a child
    still finishing beside a restarted server does no harm.
    """
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli.main", "worker", "--embedded", stdin=asyncio.subprocess.PIPE
    )
    try:
        yield
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), WORKER_STOP_SECONDS)
        except TimeoutError:
            log.error("worker did not stop in time; killing it", pid=child.pid)
            child.kill()
            await child.wait()
