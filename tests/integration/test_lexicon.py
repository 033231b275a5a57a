"""The lexicon service against real databases: validation, normal-form duplicates,
removal that keeps history, and the database's own guard on active duplicates."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.core.clock import FixedClock
from policy.errors import DuplicateTerm, InvalidTerm, TermAlreadyRemoved, TermNotFound
from policy.lexicon import Lexicon
from policy.models import LexiconTerm

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
def lexicon(clock: FixedClock) -> Lexicon:
    return Lexicon(clock)


async def _count(sessions: Sessions) -> int:
    async with sessions() as session:
        return len(list(await session.scalars(select(LexiconTerm))))


@pytest.mark.parametrize(
    ("term", "action", "message"),
    [
        ("", "flag", "empty"),
        (" \t ", "flag", "empty"),
        ("!!! ... ???", "flag", "no searchable words"),
        ("#️⃣", "flag", "no searchable words"),
        ("x" * 201, "flag", "longer than 200 characters"),
        ("㍿" * 60, "flag", "once normalised"),  # each folds to 株式会社
        ("off\nthe record", "flag", "control characters"),
        ("nul\x00here", "flag", "control characters"),
        ("guarantee", "delete", "unknown action 'delete'"),
        ("guarantee", "", "unknown action"),
    ],
)
async def test_bad_terms_are_refused_and_nothing_is_stored(
    lexicon: Lexicon, sessions: Sessions, term: str, action: str, message: str
) -> None:
    with pytest.raises(InvalidTerm, match=message):
        async with sessions() as session, session.begin():
            await lexicon.add(session, term, action, "usr_1")
    assert await _count(sessions) == 0


async def test_terms_are_kept_as_entered_and_unique_once_normalised(
    lexicon: Lexicon, sessions: Sessions, clock: FixedClock
) -> None:
    async with sessions() as session, session.begin():
        row = await lexicon.add(session, "  Off the Record! ", "block", "usr_1")
        await lexicon.add(session, "インサイダー", "hold", "usr_1")
    assert (row.term, row.normalized, row.action) == ("Off the Record!", "off the record", "block")
    assert (row.added_by, row.added_at, row.removed_at) == ("usr_1", clock.now(), None)
    full_width = "\uff2f\uff26\uff26 the record"
    for same in ("off the record", "OFF-THE-RECORD", full_width, "いんさいだー"):
        with pytest.raises(DuplicateTerm, match="already in the lexicon as term"):
            async with sessions() as session, session.begin():
                await lexicon.add(session, same, "flag", "usr_2")
    async with sessions() as session:
        assert await lexicon.terms(session) == ["Off the Record!", "インサイダー"]


async def test_removal_keeps_the_row_and_frees_the_term(
    lexicon: Lexicon, sessions: Sessions, clock: FixedClock
) -> None:
    async with sessions() as session, session.begin():
        first = await lexicon.add(session, "guarantee", "flag", "usr_1")
    clock.advance(timedelta(hours=1))
    async with sessions() as session, session.begin():
        await lexicon.remove(session, first.id, "usr_2")
    with pytest.raises(TermAlreadyRemoved, match="already removed"):
        async with sessions() as session, session.begin():
            await lexicon.remove(session, first.id, "usr_2")
    with pytest.raises(TermNotFound):
        async with sessions() as session, session.begin():
            await lexicon.remove(session, first.id + 100, "usr_2")
    async with sessions() as session, session.begin():
        again = await lexicon.add(session, "Guarantee", "hold", "usr_3")
    async with sessions() as session:
        assert [t.id for t in await lexicon.active(session)] == [again.id]
        history = await lexicon.history(session)
        assert await lexicon.terms(session) == ["Guarantee"]
    assert [(t.id, t.removed_by, t.removed_at) for t in history] == [
        (first.id, "usr_2", clock.now()),
        (again.id, None, None),
    ]


async def test_the_database_refuses_a_second_active_copy(
    lexicon: Lexicon, sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that passed the duplicate check just before another committed the
    same term is still refused, by the partial unique index."""
    async with sessions() as session, session.begin():
        await lexicon.add(session, "guarantee", "flag", "usr_1")

    async def nothing_yet(_session: AsyncSession, _normalized: str) -> None:
        return None

    monkeypatch.setattr(lexicon, "_active_by_normal_form", nothing_yet)
    with pytest.raises(DuplicateTerm, match="already in the lexicon"):
        async with sessions() as session, session.begin():
            await lexicon.add(session, "Guarantee", "hold", "usr_2")
    assert await _count(sessions) == 1
