"""The compliance lexicon: sensitive terms that flag, hold or block messages.

The archive search flags messages holding any active term; the outbox will
hold or block outbound ones by each term's action. A term is matched the way
the blind index matches a search term, so it is checked and deduplicated in
the blind index's normal form. Removing a term keeps its row for the record.
"""

from __future__ import annotations

import unicodedata
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from archiver.core.clock import Clock
from archiver.search.blind_index import normalize, query_tokens
from policy.errors import DuplicateTerm, InvalidTerm, TermAlreadyRemoved, TermNotFound
from policy.models import LexiconTerm

MAX_TERM_CHARS = 200


class LexiconAction(StrEnum):
    """What a term's presence does to an outbound message (the archive flags all)."""

    FLAG = "flag"
    HOLD = "hold"
    BLOCK = "block"


def _check(term: str, action: str) -> tuple[str, str, LexiconAction]:
    """``term`` stripped, its normal form and the action; raise ``InvalidTerm``."""
    term = term.strip()
    if not term:
        raise InvalidTerm("the term is empty")
    if len(term) > MAX_TERM_CHARS:
        raise InvalidTerm(f"the term is longer than {MAX_TERM_CHARS} characters")
    # A database cannot store NUL or lone surrogates, and a line break or tab in
    # a term is a paste accident rather than something to match.
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in term):
        raise InvalidTerm("the term holds control characters (line breaks, tabs, NUL...)")
    if not query_tokens(term):
        raise InvalidTerm("the term has no searchable words (only punctuation or spaces)")
    normalized = normalize(term)
    if len(normalized) > MAX_TERM_CHARS:
        raise InvalidTerm(f"the term is longer than {MAX_TERM_CHARS} characters once normalised")
    try:
        kind = LexiconAction(action)
    except ValueError:
        choices = ", ".join(a.value for a in LexiconAction)
        raise InvalidTerm(f"unknown action {action!r}: use one of {choices}") from None
    return term, normalized, kind


class Lexicon:
    """Adds, removes and lists the lexicon's terms."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def add(self, session: AsyncSession, term: str, action: str, actor: str) -> LexiconTerm:
        """Add ``term`` with ``action`` (flag, hold or block); raise ``InvalidTerm`` or
        ``DuplicateTerm`` (the same term, once normalised, is already active)."""
        text, normalized, kind = _check(term, action)
        existing = await self._active_by_normal_form(session, normalized)
        if existing is not None:
            raise DuplicateTerm(
                f"{text!r} is already in the lexicon as term {existing.id} "
                f"({existing.term!r}, {existing.action})"
            )
        row = LexiconTerm(
            term=text,
            normalized=normalized,
            action=kind.value,
            added_by=actor,
            added_at=self._clock.now(),
        )
        session.add(row)
        try:
            await session.flush()
        except IntegrityError:
            # Another writer added the same term since the check above.
            raise DuplicateTerm(f"{text!r} is already in the lexicon") from None
        return row

    async def remove(self, session: AsyncSession, term_id: int, actor: str) -> LexiconTerm:
        """Retire a term (its row stays); raise ``TermNotFound`` or ``TermAlreadyRemoved``."""
        row = await session.get(LexiconTerm, term_id, with_for_update=True)
        if row is None:
            raise TermNotFound(f"no lexicon term {term_id}")
        if row.removed_at is not None:
            raise TermAlreadyRemoved(
                f"lexicon term {term_id} was already removed on {row.removed_at:%Y-%m-%d} "
                f"by {row.removed_by}"
            )
        row.removed_by = actor
        row.removed_at = self._clock.now()
        await session.flush()
        return row

    async def active(self, session: AsyncSession) -> list[LexiconTerm]:
        """The active terms, in the order they were added."""
        query = select(LexiconTerm).where(LexiconTerm.removed_at.is_(None))
        return list(await session.scalars(query.order_by(LexiconTerm.id)))

    async def history(self, session: AsyncSession) -> list[LexiconTerm]:
        """Every term ever added, removed ones included, in the order they were added."""
        return list(await session.scalars(select(LexiconTerm).order_by(LexiconTerm.id)))

    async def terms(self, session: AsyncSession) -> list[str]:
        """The active terms' text, as entered (what the archive search flags)."""
        return [row.term for row in await self.active(session)]

    @staticmethod
    async def _active_by_normal_form(session: AsyncSession, normalized: str) -> LexiconTerm | None:
        query = select(LexiconTerm).where(
            LexiconTerm.normalized == normalized, LexiconTerm.removed_at.is_(None)
        )
        return (await session.scalars(query)).one_or_none()
