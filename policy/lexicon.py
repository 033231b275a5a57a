"""The compliance lexicon: sensitive terms that flag, hold or block messages.

The archive search flags messages holding any active term; the outbox will
hold or block outbound ones by each term's action. A term is matched the way
the blind index matches a search term, so it is checked and deduplicated in
the blind index's normal form. Removing a term keeps its row for the record.

Each change is one unit of work: the term's row and its audit event (the term
itself sealed in the event's details, never in a clear column) commit together.
A refused change is recorded as ``denied`` on its own, once nothing changed.
"""

from __future__ import annotations

import unicodedata
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.audit.services import Actor, AuditLog
from archiver.core.clock import Clock
from archiver.core.db import Writer
from archiver.search.blind_index import normalize, query_tokens
from policy.errors import (
    DuplicateTerm,
    InvalidTerm,
    LexiconError,
    TermAlreadyRemoved,
    TermNotFound,
)
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


_REASONS: dict[type[LexiconError], str] = {
    InvalidTerm: "invalid term",
    DuplicateTerm: "duplicate term",
    TermNotFound: "no such term",
    TermAlreadyRemoved: "term already removed",
}


def _target(row: LexiconTerm) -> str:
    return f"lexicon:{row.id} action:{row.action}"


class Lexicon:
    """Adds, removes and lists the lexicon's terms; each change audited with it."""

    def __init__(
        self,
        clock: Clock,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        audit: AuditLog,
    ) -> None:
        self._clock = clock
        self._sessions = sessions
        self._writer = writer
        self._audit = audit

    async def add(self, actor: Actor, term: str, action: str) -> LexiconTerm:
        """Add ``term`` with ``action`` (flag, hold or block), audited as
        ``lexicon.add``; raise ``InvalidTerm`` or ``DuplicateTerm`` (the same term,
        once normalised, is already active), audited as denied."""
        try:
            async with self._writer.transaction() as session:
                row = await self._add(session, term, action, actor.id)
                await self._audit.record_in(
                    session,
                    actor.entry("lexicon.add", target=_target(row), details={"term": row.term}),
                )
        except LexiconError as exc:
            target = "lexicon:new"
            if isinstance(exc, DuplicateTerm) and exc.existing_id is not None:
                target = f"lexicon:{exc.existing_id}"  # the term it collides with
            await self._refused(actor, "lexicon.add", target, exc, term)
            raise
        return row

    async def remove(self, actor: Actor, term_id: int) -> LexiconTerm:
        """Retire a term (its row stays), audited as ``lexicon.remove``; raise
        ``TermNotFound`` or ``TermAlreadyRemoved``, audited as denied."""
        try:
            async with self._writer.transaction() as session:
                row = await self._remove(session, term_id, actor.id)
                await self._audit.record_in(
                    session,
                    actor.entry("lexicon.remove", target=_target(row), details={"term": row.term}),
                )
        except LexiconError as exc:
            await self._refused(actor, "lexicon.remove", f"lexicon:{term_id}", exc, None)
            raise
        return row

    async def rows(self, *, removed: bool = False) -> list[LexiconTerm]:
        """The active terms, or with ``removed`` every term ever added, in the order
        they were added."""
        async with self._sessions() as session:
            return await (self.history(session) if removed else self.active(session))

    async def active_terms(self) -> tuple[str, ...]:
        """The active terms' text, as entered (what the archive search flags)."""
        async with self._sessions() as session:
            return tuple(await self.terms(session))

    async def _refused(
        self, actor: Actor, action: str, target: str, exc: LexiconError, term: str | None
    ) -> None:
        """Record a refused change, once its transaction has rolled back. The reason
        in clear is the kind of refusal; its message may quote the term, so it is
        sealed in the details with the term."""
        details = {"error": str(exc)} | ({"term": term} if term is not None else {})
        await self._audit.record_durable(
            actor.entry(
                action,
                outcome="denied",
                target=target,
                reason=_REASONS[type(exc)],
                details=details,
            )
        )

    async def _add(self, session: AsyncSession, term: str, action: str, actor: str) -> LexiconTerm:
        text, normalized, kind = _check(term, action)
        existing = await self._active_by_normal_form(session, normalized)
        if existing is not None:
            raise DuplicateTerm(
                f"{text!r} is already in the lexicon as term {existing.id} "
                f"({existing.term!r}, {existing.action})",
                existing.id,
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

    async def _remove(self, session: AsyncSession, term_id: int, actor: str) -> LexiconTerm:
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
