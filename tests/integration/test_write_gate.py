"""The SQLite write gate: one writer at a time, in a process and across processes;
and the :class:`Writer` that runs whole write transactions behind it.

Each gate opens its own file description for the ``flock``, so two gates on one
path exclude each other exactly as the gates of two processes do.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from archiver.core.db import WriteGate, Writer, create_engine, session_factory, write_gate
from archiver.records.models import Contact
from tests.conftest import START

Sessions = async_sessionmaker[AsyncSession]


async def test_writers_of_one_process_take_turns(tmp_path: Path) -> None:
    gate = WriteGate(tmp_path / "db-gate")
    trace: list[str] = []

    async def writer(name: str) -> None:
        async with gate:
            trace.append(f"{name} in")
            await asyncio.sleep(0)
            trace.append(f"{name} out")

    await asyncio.gather(writer("a"), writer("b"), writer("c"))
    assert trace == ["a in", "a out", "b in", "b out", "c in", "c out"]


async def test_another_process_waits_until_the_holder_leaves(tmp_path: Path) -> None:
    holder, other = WriteGate(tmp_path / "db-gate"), WriteGate(tmp_path / "db-gate")
    entered = asyncio.Event()

    async def write() -> None:
        async with other:
            entered.set()

    async with holder:
        waiting = asyncio.create_task(write())
        await asyncio.sleep(0.05)  # time to try; it cannot get in while the holder is inside
        assert not entered.is_set()
    await asyncio.wait_for(waiting, timeout=10)
    assert entered.is_set()


async def test_a_cancelled_waiter_does_not_keep_the_lock(tmp_path: Path) -> None:
    holder, cancelled, later = (WriteGate(tmp_path / "db-gate") for _ in range(3))

    async def write(gate: WriteGate) -> None:
        async with gate:
            pass

    async with holder:
        waiting = asyncio.create_task(write(cancelled))
        await asyncio.sleep(0.05)  # let it block on the lock, in its thread
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    # The cancelled waiter's thread takes the lock once the holder leaves, then
    # gives it back: a later writer still gets in.
    await asyncio.wait_for(write(later), timeout=10)


async def test_an_exception_inside_releases_the_gate(tmp_path: Path) -> None:
    gate = WriteGate(tmp_path / "db-gate")
    with contextlib.suppress(RuntimeError):
        async with gate:
            raise RuntimeError("the transaction failed")
    await asyncio.wait_for(gate.__aenter__(), timeout=10)
    await gate.__aexit__(None, None, None)
    other = WriteGate(tmp_path / "db-gate")
    await asyncio.wait_for(other.__aenter__(), timeout=10)
    await other.__aexit__(None, None, None)


def test_only_an_sqlite_file_has_a_gate_file(tmp_path: Path) -> None:
    on_file = write_gate(f"sqlite+aiosqlite:///{tmp_path}/strongroom.db")
    assert isinstance(on_file, WriteGate)
    assert on_file._path == tmp_path / "strongroom.db-gate"
    in_memory = write_gate("sqlite+aiosqlite://")
    assert isinstance(in_memory, WriteGate)
    assert in_memory._path is None
    assert not isinstance(write_gate("postgresql+asyncpg://u:p@localhost/db"), WriteGate)


# -- Writer ------------------------------------------------------------------------


def _add_contact(contact_id: str) -> Callable[[Session], Contact]:
    def work(session: Session) -> Contact:
        contact = Contact(id=contact_id, created_at=START)
        session.add(contact)
        return contact

    return work


async def _contact_ids(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        return list(await session.scalars(select(Contact.id).order_by(Contact.id)))


@pytest.fixture(params=["database url", "no url"])
async def writer(
    request: pytest.FixtureRequest, sessions: Sessions, database_url: str
) -> AsyncIterator[Writer]:
    """A writer on the migrated test database: from its URL (on SQLite, the
    writer thread), and without one (every database: ``run_sync`` on the loop)."""
    writer = Writer(sessions, database_url if request.param == "database url" else None)
    yield writer
    await writer.close()


async def test_a_writer_commits_the_work_and_returns_its_result(
    writer: Writer, sessions: Sessions
) -> None:
    contact = await writer.run(_add_contact("ct_one"))

    assert (contact.id, contact.created_at) == ("ct_one", START)  # usable after the commit
    assert await _contact_ids(sessions) == ["ct_one"]


async def test_failed_work_writes_nothing_and_the_next_runs(
    writer: Writer, sessions: Sessions
) -> None:
    def fail(session: Session) -> None:
        _add_contact("ct_lost")(session)
        session.flush()
        raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError, match="the work failed"):
        await writer.run(fail)
    await asyncio.wait_for(writer.run(_add_contact("ct_next")), timeout=10)

    assert await _contact_ids(sessions) == ["ct_next"]


async def test_a_writer_waits_for_a_gate_holder_on_the_same_file(
    tmp_path: Path, sqlite_template: Path
) -> None:
    path = tmp_path / "strongroom.db"
    shutil.copyfile(sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    sessions = session_factory(engine)
    writer = Writer(sessions, f"sqlite+aiosqlite:///{path}")
    try:
        async with WriteGate(tmp_path / "strongroom.db-gate"):
            running = asyncio.create_task(writer.run(_add_contact("ct_after")))
            await asyncio.sleep(0.05)  # time to try; it cannot start while the holder is in
            assert not running.done()
            async with sessions() as session:
                assert await session.scalar(select(func.count()).select_from(Contact)) == 0
        await asyncio.wait_for(running, timeout=10)
        assert await _contact_ids(sessions) == ["ct_after"]
    finally:
        await writer.close()
        await engine.dispose()


async def test_prepare_runs_first_and_outside_the_write_lock(
    writer: Writer, sessions: Sessions
) -> None:
    """As the journal uses it: files written and fsynced by ``prepare`` while other
    writers commit, then recorded by the work."""
    release = threading.Event()
    prepared: list[str] = []

    def prepare() -> None:
        if not release.wait(timeout=10):
            raise TimeoutError("never released")
        prepared.append("ct_prepared")

    def work(session: Session) -> Contact:
        return _add_contact(prepared[0])(session)

    running = asyncio.create_task(writer.run(work, prepare=prepare))
    await asyncio.sleep(0.05)  # prepare is now waiting, in a thread
    # Another writer gets in meanwhile: prepare holds no lock and no transaction.
    await asyncio.wait_for(writer.run(_add_contact("ct_meanwhile")), timeout=10)
    assert not running.done()
    release.set()

    contact = await asyncio.wait_for(running, timeout=10)
    assert contact.id == "ct_prepared"
    assert await _contact_ids(sessions) == ["ct_meanwhile", "ct_prepared"]


async def test_a_failed_prepare_runs_no_work(writer: Writer, sessions: Sessions) -> None:
    ran: list[Session] = []

    def prepare() -> None:
        raise OSError("the disk is full")

    with pytest.raises(OSError, match="the disk is full"):
        await writer.run(ran.append, prepare=prepare)
    await asyncio.wait_for(writer.run(_add_contact("ct_next")), timeout=10)

    assert ran == []
    assert await _contact_ids(sessions) == ["ct_next"]
