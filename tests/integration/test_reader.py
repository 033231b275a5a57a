"""The :class:`Reader`: whole reads in one hop, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from archiver.core.db import Reader
from archiver.records.models import Contact
from tests.conftest import START

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(params=["database url", "no url"])
async def reader(
    request: pytest.FixtureRequest, sessions: Sessions, database_url: str
) -> AsyncIterator[Reader]:
    """A reader on the migrated test database: from its URL (on SQLite, the reader's
    threads), and without one (every database: ``run_sync`` on the loop)."""
    reader = Reader(sessions, database_url if request.param == "database url" else None)
    yield reader
    await reader.close()


async def _add_contacts(sessions: Sessions, *contact_ids: str) -> None:
    async with sessions() as session, session.begin():
        session.add_all(Contact(id=i, created_at=START) for i in contact_ids)


def _contacts(session: Session) -> list[Contact]:
    return list(session.scalars(select(Contact).order_by(Contact.id)))


async def test_a_read_sees_what_is_committed_and_returns_usable_objects(
    reader: Reader, sessions: Sessions
) -> None:
    await _add_contacts(sessions, "ct_a", "ct_b")

    contacts = await reader.run(_contacts)

    assert [(c.id, c.created_at) for c in contacts] == [("ct_a", START), ("ct_b", START)]


async def test_a_read_commits_nothing(reader: Reader, sessions: Sessions) -> None:
    def add_and_return(session: Session) -> int:
        session.add(Contact(id="ct_never", created_at=START))
        session.flush()
        return len(_contacts(session))

    assert await reader.run(add_and_return) == 1  # seen inside the read only

    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Contact)) == 0


async def test_a_failed_read_raises_and_the_next_runs(reader: Reader, sessions: Sessions) -> None:
    def fail(session: Session) -> None:
        _contacts(session)
        raise RuntimeError("the read failed")

    with pytest.raises(RuntimeError, match="the read failed"):
        await reader.run(fail)
    await _add_contacts(sessions, "ct_next")

    contacts = await asyncio.wait_for(reader.run(_contacts), timeout=10)

    assert [c.id for c in contacts] == ["ct_next"]


async def test_reads_run_side_by_side(reader: Reader, sessions: Sessions) -> None:
    await _add_contacts(sessions, "ct_a")

    counts = await asyncio.gather(*(reader.run(lambda s: len(_contacts(s))) for _ in range(8)))

    assert counts == [1] * 8
