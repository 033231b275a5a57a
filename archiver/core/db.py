"""Database base, column types and engine factory shared by every context, and the
one way a service writes.

The transaction style: a service method is one unit of work and owns its
transaction; a handler or job never opens one. Every write goes through the
:class:`Writer`, which on SQLite admits one writer at a time through the write
gate. A service writes either in ``async with writer.transaction() as session``
(async ORM code on the event loop) or, on a hot path, with
``await writer.run(work)`` (a synchronous function of a ``Session``, which on an
SQLite file runs in a writer thread). Whatever a service changes, it records in
the audit trail inside that same transaction (``AuditLog.record_in``), so the
change and its event commit together or not at all. Reads use the ``Reader`` or
a session of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
BIGINT_PK = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    """Declarative base for every Strongroom table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, on SQLite as on PostgreSQL.

    SQLite has no timezone type, so values are normalised to UTC on the way in
    and marked UTC on the way out; naive datetimes are refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # WAL lets readers work during a write; synchronous=FULL makes every commit
    # durable across power loss, which "acknowledged is never lost" requires.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _configure_sqlite(engine: Engine) -> None:
    """Set up every connection of an SQLite ``engine`` as Strongroom needs it."""
    event.listen(engine, "connect", _sqlite_pragmas)
    # An executemany makes the driver step once per row, and it lets go of the
    # GIL at each step; while the event loop's thread keeps the GIL busy, taking
    # it back can cost a switch interval every time. 500 audit rows took 960 ms
    # that way beside a busy thread, against 31 ms as multi-row INSERTs.
    engine.dialect.use_insertmanyvalues_wo_returning = True


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """Create the async engine for ``url`` with the settings Strongroom relies on."""
    if url.startswith("sqlite"):
        database = sqlite_file(url)
        if database is not None:
            # SQLite creates the -wal and -shm files with the database's own
            # mode, so one file made 0600 here keeps all three private.
            os.close(os.open(database, os.O_RDWR | os.O_CREAT, 0o600))
        engine = create_async_engine(url, echo=echo)
        _configure_sqlite(engine.sync_engine)
        return engine
    return create_async_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)


def advisory_lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit int) for the lock ``name``;
    each user of advisory locks gives its names a prefix of its own."""
    digest = hashlib.blake2b(b"strongroom-lock\n" + name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class WriteGate:
    """Admits one writer at a time to an SQLite database, across processes.

    SQLite has one write lock, and a writer that finds it taken polls for it,
    sleeping 1, 2, 5, 10, 15, 20, 25 ms (then 50 and 100) between tries: writers
    wait for each other longer than they write, and a busy one can starve the
    others. Writers that pass through the gate queue instead, on an asyncio lock
    within a process, then on an exclusive ``flock`` of a file beside the
    database, which the kernel hands to the next process as soon as it is
    released (or its holder dies).

    Hold it from before a transaction's first write until its commit, and never
    wait for it with a write transaction open: that transaction's lock would
    stop the holder. Writers that do not use it still work, by polling.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = asyncio.Lock()
        self._fd: int | None = None

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        try:
            if self._path is not None:
                self._fd = await self._flock(self._path)
        except BaseException:
            self._lock.release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
        self._lock.release()

    @staticmethod
    async def _flock(path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass  # another process writes: wait for it in a thread
        except BaseException:
            os.close(fd)
            raise
        waiting = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
        try:
            await asyncio.shield(waiting)
        except BaseException:
            # Cancelled or failed: the thread may still take the lock; release it then.
            waiting.add_done_callback(lambda _: os.close(fd))
            raise
        return fd


def sqlite_file(url: str | None) -> str | None:
    """The database file of an SQLite ``url``; ``None`` in memory, for a URI
    filename, for another database, or without a URL."""
    if url is None or not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _gate_path(database: str) -> Path:
    return Path(f"{database}-gate")


def write_gate(url: str) -> AbstractAsyncContextManager[None]:
    """The :class:`WriteGate` of an SQLite database; PostgreSQL, which locks rows,
    needs none (every writer is admitted at once)."""
    if not url.startswith("sqlite"):
        return contextlib.nullcontext()
    database = sqlite_file(url)
    # In memory, or a URI filename: the gate then stays within this process.
    return WriteGate(None if database is None else _gate_path(database))


T = TypeVar("T")


class Writer:
    """Runs short write transactions, each a synchronous function of a
    :class:`~sqlalchemy.orm.Session`; ``gate`` admits async writers.

    On an SQLite file, :meth:`run` takes the gate's ``flock`` and runs the whole
    transaction in one of this process's writer threads, on a connection of its
    own. Run from the event loop instead, every statement waits for the loop to
    come round, which under load took longer than the statements; and since
    SQLite has one write lock, every other writer waited as long. Elsewhere
    (PostgreSQL, SQLite in memory) :meth:`run` calls the function through
    ``run_sync`` inside the gate, on the event loop.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], url: str | None = None) -> None:
        self._sessions = sessions
        self.gate = write_gate(url) if url else contextlib.nullcontext()
        database = sqlite_file(url)
        self._file = _FileWriter(database) if database else None

    async def run(
        self, work: Callable[[Session], T], prepare: Callable[[], object] | None = None
    ) -> T:
        """Run ``work`` in a transaction, commit it, and return what it returned.

        ``prepare``, when given, runs first, in a thread and outside the write lock:
        it writes and fsyncs the files that ``work`` then records. On an SQLite
        file both run in one writer thread, one hop from the event loop: a hop back
        between them waited for the busy loop longer than the transaction took.

        The objects ``work`` loads or adds stay usable after the commit. If the
        caller is cancelled, a transaction already started still runs to its end.
        """
        if self._file is not None:
            return await self._file.run(work, prepare)
        if prepare is not None:
            await asyncio.to_thread(prepare)
        async with self.gate, self._sessions() as session, session.begin():
            return await session.run_sync(work)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One write transaction on the event loop, behind the write gate: it commits
        when the block ends and rolls back if the block raises."""
        async with self.gate, self._sessions() as session, session.begin():
            if session.get_bind().dialect.name == "sqlite":
                # Python's sqlite3 begins a transaction only before a data change, so
                # a SAVEPOINT (begin_nested) that comes first starts one of its own,
                # and its RELEASE commits whatever the block did before the block
                # ends. Beginning here keeps the whole block one transaction; as a
                # write it takes SQLite's write lock now, which the gate admits.
                await session.execute(text("BEGIN IMMEDIATE"))
            yield session

    async def close(self) -> None:
        """Finish the transactions in progress and release the writer's connections."""
        if self._file is not None:
            await self._file.close()


class _SqliteThreads:
    """Threads that work on one SQLite file through a synchronous engine of their own."""

    def __init__(self, database: str, threads: int, name: str) -> None:
        self.engine = create_sync_engine(f"sqlite:///{database}", pool_size=threads)
        _configure_sqlite(self.engine)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        # All started now, so they have the priority of the thread that opens the
        # database (a thread created later by a niced event loop would be niced too).
        started = threading.Barrier(threads)
        for _ in range(threads):
            self._executor.submit(started.wait)

    async def run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        """Wait for the work in progress, then release the connections."""
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        self.engine.dispose()


# The journal's batch, the audit trail's append and one other writer need not wait
# for a thread.
_WRITER_THREADS = 3


class _FileWriter:
    """Threads writing to one SQLite file, each transaction behind the file's write gate."""

    def __init__(self, database: str) -> None:
        self._gate_path = _gate_path(database)
        self._threads = _SqliteThreads(database, _WRITER_THREADS, "sqlite-writer")

    async def run(self, work: Callable[[Session], T], prepare: Callable[[], object] | None) -> T:
        def prepare_then_write() -> T:
            if prepare is not None:
                prepare()
            return self._run_locked(work)

        return await self._threads.run(prepare_then_write)

    def _run_locked(self, work: Callable[[Session], T]) -> T:
        fd = os.open(self._gate_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # excludes every other writer: each has its own fd
            engine = self._threads.engine
            with Session(engine, expire_on_commit=False) as session, session.begin():
                return work(session)
        finally:
            os.close(fd)  # releases the flock

    async def close(self) -> None:
        await self._threads.close()


class Reader:
    """Runs reads, each a synchronous function of a :class:`~sqlalchemy.orm.Session`,
    in one hop from the event loop.

    On an SQLite file, a whole read runs in a thread of the reader's own pool, on
    a connection of its own: aiosqlite hops to its thread and back for every
    statement, which took about a quarter of a search's time.
    Elsewhere (PostgreSQL, SQLite in memory) :meth:`run` calls the function
    through ``run_sync`` on the event loop, so it must do database work only.
    """

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], url: str | None = None, threads: int = 4
    ) -> None:
        self._sessions = sessions
        database = sqlite_file(url)
        self._threads = _SqliteThreads(database, threads, "sqlite-reader") if database else None

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a session of its own and return what it returned. The
        objects it loads stay usable afterwards; nothing it changes is committed."""
        if self._threads is None:
            async with self._sessions() as session:
                return await session.run_sync(work)
        engine = self._threads.engine

        def read() -> T:
            with Session(engine) as session:
                return work(session)

        return await self._threads.run(read)

    async def close(self) -> None:
        """Wait for the reads in progress and release the reader's connections."""
        if self._threads is not None:
            await self._threads.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)
