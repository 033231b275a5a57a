"""The worker's scheduled jobs on a real database (SQLite and PostgreSQL): the jobs
the contexts declare and the worker schedules, the timed audit checkpoint under a
fixed clock, and singleton jobs kept to one of two workers on one database."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import cast

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select
from structlog.testing import capture_logs

from api.bootstrap import Services, open_services
from api.settings import load_settings
from api.worker import declared_jobs, schedule
from archiver.audit.jobs import record_runs
from archiver.audit.models import AuditCheckpoint, AuditEvent
from archiver.audit.services import AuditEntry
from archiver.core.clock import FixedClock
from archiver.core.db import sqlite_file
from archiver.core.errors import InvalidInput
from archiver.core.jobs import Job, JobRun, JobRunner, LocalJobLock, job_lock
from archiver.media.jobs import fetch_media
from archiver.media.services import MediaFetcher

ANCHOR = timedelta(minutes=15)


@pytest.fixture
async def workers(
    database_url: str, tmp_path: Path, clock: FixedClock, root_key: bytes
) -> AsyncIterator[tuple[Services, Services]]:
    """Two workers' services on one database and one vault, as two worker
    processes would open them; their audit checkpoint is due every 15 minutes."""
    database = sqlite_file(database_url)
    if database is not None:
        os.chmod(database, 0o600)  # the archive refuses a database others can read
    env = {
        "STRONGROOM_DATA_DIR": str(tmp_path / "data"),
        "STRONGROOM_DATABASE_URL": database_url,
        "STRONGROOM_MASTER_KEY": root_key.hex(),
        "STRONGROOM_AUDIT_ANCHOR_SECONDS": str(int(ANCHOR.total_seconds())),
    }
    async with AsyncExitStack() as stack:
        opened = []
        for _ in range(2):
            services = await open_services(load_settings(env), clock)
            stack.push_async_callback(services.close)
            opened.append(services)
        yield opened[0], opened[1]


def _runner(services: Services) -> JobRunner:
    """The runner a worker on ``services`` runs its jobs with."""
    return JobRunner(job_lock(services.engine), record_runs(services.audit))


async def _unrecorded(run: JobRun) -> None:
    pass


async def _anchored(services: Services) -> list[int]:
    async with services.sessions() as session:
        return list(
            await session.scalars(select(AuditCheckpoint.seq).order_by(AuditCheckpoint.seq))
        )


async def _event(services: Services, n: int) -> None:
    entry = AuditEntry(actor="us_1", action="http.GET /", target=f"t:{n}", outcome="allowed")
    await services.audit.record(entry)
    await services.audit.flush()


# -- what the worker schedules ---------------------------------------------------------


async def test_the_worker_schedules_each_declared_job_at_its_interval(
    workers: tuple[Services, Services],
) -> None:
    services, _ = workers
    jobs = declared_jobs(services)
    runner = _runner(services)
    scheduler = AsyncIOScheduler(timezone="UTC")
    schedule(scheduler, jobs, runner)
    scheduled = {job.id: job for job in scheduler.get_jobs()}
    assert {name: job.trigger.interval for name, job in scheduled.items()} == {
        "audit_checkpoint": timedelta(seconds=1),
        "reconcile_vault": timedelta(hours=6),
        "fetch_media": timedelta(seconds=10),
        "policy_reactions": timedelta(seconds=2),
    }
    assert {job.name for job in jobs if job.singleton} == {
        "audit_checkpoint",
        "reconcile_vault",
        "policy_reactions",
    }
    for job in jobs:  # each runs through the runner, so a singleton takes its lock
        assert scheduled[job.name].func == runner.run
        assert scheduled[job.name].args == (job,)


def test_a_job_is_refused_a_bad_name_or_interval() -> None:
    async def nothing() -> None:
        pass

    with pytest.raises(InvalidInput, match="job name 'Fetch Media' must be lowercase"):
        Job(name="Fetch Media", every=timedelta(seconds=1), run=nothing)
    with pytest.raises(InvalidInput, match="job 'fetch' needs a positive interval"):
        Job(name="fetch", every=timedelta(0), run=nothing)
    job = Job(name="fetch", every=timedelta(seconds=1), run=nothing)
    runner = JobRunner(LocalJobLock(), _unrecorded)
    with pytest.raises(InvalidInput, match="two jobs share a name"):
        schedule(AsyncIOScheduler(timezone="UTC"), [job, job], runner)


# -- the timed audit checkpoint --------------------------------------------------------


async def test_the_worker_checkpoints_new_events_every_15_minutes(
    workers: tuple[Services, Services], clock: FixedClock
) -> None:
    services, _ = workers
    runner = _runner(services)
    # Those that run within a quiet hour (not the vault's reconciliation, every 6 h).
    jobs = [job for job in declared_jobs(services) if job.every <= ANCHOR]

    async def run_every_job() -> list[int]:
        """One look by each of those jobs; the seqs checkpointed so far."""
        for job in jobs:
            await runner.run(job)
        return await _anchored(services)

    assert await run_every_job() == []  # an empty chain has nothing to anchor
    await _event(services, 1)
    assert await run_every_job() == [1]  # the first events are anchored at once
    await _event(services, 2)
    clock.advance(ANCHOR - timedelta(seconds=1))
    assert await run_every_job() == [1]  # the last checkpoint is recent
    clock.advance(timedelta(seconds=1))
    assert await run_every_job() == [1, 2]  # 15 minutes on, with a new event
    clock.advance(ANCHOR * 4)
    assert await run_every_job() == [1, 2]  # a quiet hour: nothing new, no checkpoint


# -- job runs in the audit trail -------------------------------------------------------


async def _job_events(services: Services) -> list[tuple[str, str, str | None]]:
    await services.audit.flush()
    events = await services.audit.query(action="job.*")
    return [(e.action, e.outcome, e.reason) for e in events]


async def test_job_runs_that_did_something_or_failed_are_audited(
    workers: tuple[Services, Services],
) -> None:
    services, _ = workers
    runner = _runner(services)
    jobs = {job.name: job for job in declared_jobs(services)}
    for _ in range(3):  # idle looks: nothing due, nothing to anchor
        await runner.run(jobs["fetch_media"])
        await runner.run(jobs["audit_checkpoint"])
    assert await _job_events(services) == []

    await _event(services, 1)
    await runner.run(jobs["audit_checkpoint"])
    assert await _anchored(services) == [1]
    # A checkpoint is no event: the next would anchor it, and so on for ever.
    assert await _job_events(services) == []

    async def fail() -> str | None:
        raise RuntimeError("Ana's number +447700900222 is unreachable")

    async def did() -> str | None:
        return "sent 2 reminders"

    await runner.run(jobs["reconcile_vault"])
    await runner.run(Job(name="probe", every=timedelta(seconds=1), run=fail))
    await runner.run(Job(name="probe", every=timedelta(seconds=1), run=did))
    events = await _job_events(services)
    assert events == [
        ("job.reconcile_vault", "ok", "objects checked: 1, drifted: 0, unrecorded: 0"),
        ("job.probe", "failed", "failed: RuntimeError"),  # never the error's text
        ("job.probe", "ok", "sent 2 reminders"),
    ]
    async with services.sessions() as session:
        actors = set(await session.scalars(select(AuditEvent.actor).where(AuditEvent.seq > 1)))
    assert actors == {"system"}


class _Fetcher:
    """Stands in for the media fetcher: ``due`` items, then none."""

    def __init__(self, due: int) -> None:
        self.due = due

    async def fetch_due(self) -> int:
        processed, self.due = self.due, 0
        return processed


async def test_the_media_fetch_reports_only_a_fetch_that_processed_items() -> None:
    fetcher = cast(MediaFetcher, _Fetcher(due=3))
    assert await fetch_media(fetcher) == "processed 3 due media items"
    assert await fetch_media(fetcher) is None


# -- singleton jobs and two workers ----------------------------------------------------


class _Probe:
    """A job body that notes when each worker starts and ends it; a holding run
    waits for ``release`` in between."""

    def __init__(self) -> None:
        self.timeline: list[str] = []
        self.started = asyncio.Event()  # a holding run has started
        self.release = asyncio.Event()

    async def run(self, worker: str, hold: bool) -> None:
        self.timeline.append(f"{worker} start")
        if hold:
            self.started.set()
            await self.release.wait()
        self.timeline.append(f"{worker} end")

    def job(self, worker: str, *, hold: bool = False, singleton: bool = True) -> Job:
        run = partial(self.run, worker, hold)
        return Job(name="probe", every=timedelta(seconds=1), run=run, singleton=singleton)


async def test_two_workers_never_run_a_singleton_job_at_once(
    workers: tuple[Services, Services],
) -> None:
    one, two = (_runner(services) for services in workers)
    probe = _Probe()
    first = asyncio.create_task(one.run(probe.job("one", hold=True)))
    await probe.started.wait()
    assert await two.run(probe.job("two")) is False  # skipped: the other worker runs it
    probe.release.set()
    assert await first is True
    assert await two.run(probe.job("two")) is True  # its turn once the run has ended
    assert probe.timeline == ["one start", "one end", "two start", "two end"]


async def test_two_workers_share_a_job_that_is_no_singleton(
    workers: tuple[Services, Services],
) -> None:
    one, two = (_runner(services) for services in workers)
    probe = _Probe()
    first = asyncio.create_task(one.run(probe.job("one", hold=True, singleton=False)))
    await probe.started.wait()
    assert await two.run(probe.job("two", singleton=False)) is True
    probe.release.set()
    assert await first is True
    assert probe.timeline == ["one start", "two start", "two end", "one end"]


async def test_a_singleton_lock_is_let_go_when_its_run_fails_or_is_cancelled(
    workers: tuple[Services, Services],
) -> None:
    one, two = (_runner(services) for services in workers)

    async def fail() -> None:
        raise RuntimeError("Ana's number +447700900222 is unreachable")

    with capture_logs() as logs:
        assert await one.run(
            Job(name="probe", every=timedelta(seconds=1), run=fail, singleton=True)
        )
    # Only the kind of error: its text may quote what the job was working on.
    assert logs == [
        {"event": "job failed", "job": "probe", "error": "RuntimeError", "log_level": "error"}
    ]
    probe = _Probe()
    assert await two.run(probe.job("two")) is True  # the failed run let go of the lock
    cancelled = asyncio.create_task(one.run(probe.job("one", hold=True)))
    await probe.started.wait()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await two.run(probe.job("two")) is True  # and so did the cancelled one
    assert probe.timeline == ["two start", "two end", "one start", "two start", "two end"]


async def test_a_stopping_worker_lets_the_run_in_progress_finish(
    workers: tuple[Services, Services],
) -> None:
    runner = _runner(workers[0])
    probe = _Probe()
    running = asyncio.create_task(runner.run(probe.job("one", hold=True)))
    await probe.started.wait()
    finishing = asyncio.create_task(runner.finish(grace_seconds=60))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not finishing.done()
    probe.release.set()
    await finishing
    assert running.done()
    assert probe.timeline == ["one start", "one end"]
