"""Scheduled jobs: how a context declares one, and how one runs.

Each context declares its jobs beside the code they run, as a ``jobs(...)``
function that returns :class:`Job` descriptions (``archiver.audit.jobs``,
``archiver.vault.jobs``, ``archiver.media.jobs``); the worker (``api.worker``)
collects them and schedules each through a :class:`JobRunner`.

A *singleton* job runs in one worker at a time, across processes and hosts: the
runner tries the job's lock and skips the run if another worker holds it (the
next run tries again). The lock is a session-level advisory lock on PostgreSQL,
held on a connection of its own for the run, and an ``flock`` of a file beside
the database on SQLite (``<database>-job-<name>``). Both are let go when their
holder dies, so a crashed worker never keeps a job from running.

A run that failed, or that reports what it did (a job's ``run`` returns a short
summary, or ``None`` when it found nothing to do), is handed to the runner's
:data:`RunRecorder`, which the worker points at the audit trail
(``archiver.audit.jobs.record_runs``): the trail holds each run that did
something, not each idle look.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.core.db import advisory_lock_key, sqlite_file
from archiver.core.errors import InvalidInput

log = structlog.get_logger("strongroom.jobs")

_JOB_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A recurring job: ``run`` is called every ``every``.

    ``singleton``: at most one worker runs it at a time (see the module docstring).
    A job that many workers may share (one that claims its own work, such as the
    media fetch) is not one.
    """

    name: str
    every: timedelta
    run: Callable[[], Awaitable[str | None]]
    """Does one run; returns a short summary of what it did (no personal data),
    or ``None`` when there was nothing to do."""
    singleton: bool = False

    def __post_init__(self) -> None:
        if not _JOB_NAME.fullmatch(self.name):
            raise InvalidInput(
                f"job name {self.name!r} must be lowercase letters, digits and _ (at most 63)"
            )
        if self.every <= timedelta(0):
            raise InvalidInput(f"job {self.name!r} needs a positive interval, not {self.every}")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRun:
    """A run worth recording: one that did something, or failed."""

    job: str
    summary: str | None = None
    """What the run reported it did."""
    error: str | None = None
    """The kind of error the run failed with (never its text, which may quote data)."""


RunRecorder = Callable[[JobRun], Awaitable[None]]
"""Records a :class:`JobRun` (the worker's recorder writes it to the audit trail)."""


class JobLock(Protocol):
    """Keeps a singleton job to one worker at a time."""

    def hold(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Try to take the lock of job ``name`` without waiting; yield whether it
        was taken, and let it go on the way out."""
        ...


class AdvisoryJobLock:
    """Job locks of a PostgreSQL database: ``pg_try_advisory_lock``, held by a
    connection checked out for the run, in autocommit so no transaction stays open
    (a long run would otherwise hold back vacuum)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[bool]:
        key = advisory_lock_key("job:" + name)
        async with self._engine.connect() as connection:
            conn = await connection.execution_options(isolation_level="AUTOCOMMIT")
            if not await conn.scalar(select(func.pg_try_advisory_lock(key))):
                yield False
                return
            try:
                yield True
            finally:
                try:
                    await conn.scalar(select(func.pg_advisory_unlock(key)))
                except BaseException:
                    # The lock is the connection's until it closes: never pool it.
                    await conn.invalidate()
                    raise


class FileJobLock:
    """Job locks of an SQLite file: a non-blocking ``flock`` of a file beside it.
    Each hold opens the file anew, so two workers in one process exclude each
    other too."""

    def __init__(self, database: str) -> None:
        self._database = database

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[bool]:
        fd = os.open(f"{self._database}-job-{name}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the flock


class LocalJobLock:
    """Job locks within one process, for a database only this process can open
    (SQLite in memory)."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[bool]:
        if name in self._held:
            yield False
            return
        self._held.add(name)
        try:
            yield True
        finally:
            self._held.discard(name)


def job_lock(engine: AsyncEngine) -> JobLock:
    """The job lock that fits ``engine``'s database."""
    if engine.dialect.name == "postgresql":
        return AdvisoryJobLock(engine)
    database = sqlite_file(engine.url.render_as_string(hide_password=False))
    return FileJobLock(database) if database else LocalJobLock()


class JobRunner:
    """Runs declared jobs: a singleton one only under its lock, and a failure is
    logged (its kind only: an error's text may quote data) rather than raised, so
    the next run simply tries again. Each run that failed or did something is
    handed to ``record``."""

    def __init__(self, lock: JobLock, record: RunRecorder) -> None:
        self._lock = lock
        self._record = record
        self._running: set[asyncio.Task[object]] = set()

    async def run(self, job: Job) -> bool:
        """Run ``job`` once; return whether it ran (``False``: it is a singleton
        that another worker is running)."""
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            if not job.singleton:
                await self._call(job)
                return True
            async with self._lock.hold(job.name) as held:
                if not held:
                    log.debug("job running in another worker; skipped", job=job.name)
                    return False
                await self._call(job)
                return True
        finally:
            if task is not None:
                self._running.discard(task)

    async def _call(self, job: Job) -> None:
        try:
            summary = await job.run()
        except Exception as exc:  # the database or the vault is away; the next run retries
            log.error("job failed", job=job.name, error=type(exc).__name__)
            run = JobRun(job=job.name, error=type(exc).__name__)
        else:
            if summary is None:
                return
            run = JobRun(job=job.name, summary=summary)
        try:
            await self._record(run)
        except Exception as exc:  # the run is done either way; the recorder logs its own losses
            log.error("job run not recorded", job=job.name, error=type(exc).__name__)

    async def finish(self, grace_seconds: float) -> None:
        """Wait up to ``grace_seconds`` for the runs in progress to end."""
        running = {task for task in self._running if task is not asyncio.current_task()}
        if running:
            await asyncio.wait(running, timeout=grace_seconds)
