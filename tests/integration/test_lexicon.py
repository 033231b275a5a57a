"""The lexicon service against real databases: validation, normal-form duplicates,
removal that keeps history, and the database's own guard on active duplicates."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.audit.services import Actor, AuditLog
from archiver.core.clock import FixedClock
from archiver.core.db import Writer
from archiver.crypto.keyring import Keyring
from archiver.vault.services import Vault
from policy.errors import DuplicateTerm, InvalidTerm, TermAlreadyRemoved, TermNotFound
from policy.lexicon import Lexicon
from policy.models import LexiconTerm

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
def lexicon(
    clock: FixedClock, sessions: Sessions, database_url: str, vault: Vault, keyring: Keyring
) -> Lexicon:
    writer = Writer(sessions, database_url)
    return Lexicon(
        clock, sessions, writer, AuditLog(sessions, vault, keyring, clock, writer=writer)
    )


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
        await lexicon.add(Actor(id="usr_1"), term, action)
    assert await _count(sessions) == 0


async def test_terms_are_kept_as_entered_and_unique_once_normalised(
    lexicon: Lexicon, sessions: Sessions, clock: FixedClock
) -> None:
    row = await lexicon.add(Actor(id="usr_1"), "  Off the Record! ", "block")
    await lexicon.add(Actor(id="usr_1"), "インサイダー", "hold")
    assert (row.term, row.normalized, row.action) == ("Off the Record!", "off the record", "block")
    assert (row.added_by, row.added_at, row.removed_at) == ("usr_1", clock.now(), None)
    full_width = "\uff2f\uff26\uff26 the record"
    for same in ("off the record", "OFF-THE-RECORD", full_width, "いんさいだー"):
        with pytest.raises(DuplicateTerm, match="already in the lexicon as term"):
            await lexicon.add(Actor(id="usr_2"), same, "flag")
    async with sessions() as session:
        assert await lexicon.terms(session) == ["Off the Record!", "インサイダー"]


async def test_removal_keeps_the_row_and_frees_the_term(
    lexicon: Lexicon, sessions: Sessions, clock: FixedClock
) -> None:
    first = await lexicon.add(Actor(id="usr_1"), "guarantee", "flag")
    clock.advance(timedelta(hours=1))
    await lexicon.remove(Actor(id="usr_2"), first.id)
    with pytest.raises(TermAlreadyRemoved, match="already removed"):
        await lexicon.remove(Actor(id="usr_2"), first.id)
    with pytest.raises(TermNotFound):
        await lexicon.remove(Actor(id="usr_2"), first.id + 100)
    again = await lexicon.add(Actor(id="usr_3"), "Guarantee", "hold")
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
    await lexicon.add(Actor(id="usr_1"), "guarantee", "flag")

    async def nothing_yet(_session: AsyncSession, _normalized: str) -> None:
        return None

    monkeypatch.setattr(lexicon, "_active_by_normal_form", nothing_yet)
    with pytest.raises(DuplicateTerm, match="already in the lexicon"):
        await lexicon.add(Actor(id="usr_2"), "Guarantee", "hold")
    assert await _count(sessions) == 1
