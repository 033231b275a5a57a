"""Search over the blind index.

A query is words and "quoted phrases", ANDed, with ``OR`` between groups:
``会議 資料 OR "board meeting"``. Each word and phrase becomes blind-index tokens;
candidate records must hold every token of some group. Candidates are then
decrypted and checked: every word must be a word (or CJK run) of the text,
every phrase must appear in it, so truncated-HMAC collisions and phrases whose
words merely occur apart never reach the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from archiver.blind_index import BlindIndex, normalize, query_tokens, tokenize
from archiver.capture import decode_sealed_item
from archiver.errors import ArchiverError, KeyDestroyed
from archiver.items import message_text
from archiver.models import MediaItem, Record, SealedObject, SearchToken
from archiver.vault import Vault

_QUERY = re.compile(r'"([^"]*)"|(\S+)')
_SNIPPET = 60
# Candidates are fetched in rounds of this many times the page size, because
# some fail the check on the decrypted text.
_OVERFETCH = 3
_MAX_GROUPS = 8
_MAX_TERMS = 16


class SearchError(ArchiverError):
    """The query cannot be searched (empty, or too large)."""


@dataclass(frozen=True, slots=True)
class Group:
    """Words and phrases that must all match."""

    words: tuple[str, ...]
    phrases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Filters:
    """What a result must also be."""

    accounts: frozenset[str] | None = None  # None: every account
    contact_ids: frozenset[str] | None = None
    direction: str | None = None
    source: str | None = None
    item_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    has_media: bool | None = None


@dataclass(slots=True)
class Hit:
    """One verified result."""

    record: Record
    content: dict[str, Any]
    snippet: str
    media: list[MediaItem] = field(default_factory=list)


def parse_query(text: str) -> list[Group]:
    """Split a query into OR-groups of words and "phrases"."""
    groups: list[Group] = []
    words: list[str] = []
    phrases: list[str] = []
    for match in _QUERY.finditer(text):
        phrase, word = match.groups()
        if word == "OR":
            if words or phrases:
                groups.append(Group(tuple(words), tuple(phrases)))
            words, phrases = [], []
        elif phrase is not None:
            if normalize(phrase):
                phrases.append(phrase)
        elif word is not None and query_tokens(word):
            words.append(word)
    if words or phrases:
        groups.append(Group(tuple(words), tuple(phrases)))
    if not groups:
        raise SearchError("the query has no searchable words")
    if len(groups) > _MAX_GROUPS or any(len(g.words) + len(g.phrases) > _MAX_TERMS for g in groups):
        raise SearchError(f"at most {_MAX_GROUPS} OR groups of {_MAX_TERMS} terms")
    return groups


def searchable_text(content: dict[str, Any]) -> str:
    """The text of a sealed record that search matches against."""
    item = content.get("item")
    if not isinstance(item, dict):
        return ""
    if content.get("field") == "chat_export":
        text = item.get("text")
        return text if isinstance(text, str) else ""
    return message_text(item)


def _matches(group: Group, text: str) -> bool:
    words = set(tokenize(text))
    if not all(set(query_tokens(w)) <= words for w in group.words):
        return False
    folded = normalize(text)
    return all(normalize(p) in folded for p in group.phrases)


def _snippet(group: Group, text: str) -> str:
    """A window of the text around the first term found."""
    folded = text.casefold()
    for term in (*group.phrases, *group.words):
        at = folded.find(term.casefold())
        if at >= 0:
            start = max(0, at - _SNIPPET)
            end = min(len(text), at + len(term) + _SNIPPET)
            return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")
    return text[: 2 * _SNIPPET] + ("…" if len(text) > 2 * _SNIPPET else "")


class Search:
    """Runs blind-index searches and checks candidates on their decrypted text."""

    def __init__(self, vault: Vault, index: BlindIndex) -> None:
        self._vault = vault
        self._index = index

    def _candidates(self, group: Group, filters: Filters) -> Select[int]:
        tokens = list(
            dict.fromkeys(
                token
                for term in (*group.words, *group.phrases)
                for token in self._index.query(term)
            )
        )
        holding = (
            select(SearchToken.record_id)
            .where(SearchToken.token.in_(tokens))
            .group_by(SearchToken.record_id)
            .having(func.count(SearchToken.token.distinct()) == len(tokens))
        )
        return select(Record.id).where(Record.id.in_(holding), *_conditions(filters))

    async def search(
        self,
        session: AsyncSession,
        query: str,
        filters: Filters,
        *,
        after: tuple[datetime, int] | None = None,
        limit: int = 50,
    ) -> tuple[list[Hit], tuple[datetime, int] | None]:
        """One page of verified hits in time order, and the cursor for the next."""
        groups = parse_query(query)
        union = self._candidates(groups[0], filters)
        for group in groups[1:]:
            union = union.union(self._candidates(group, filters))  # type: ignore[assignment]  # a union of id selects
        ids = union.subquery()
        hits: list[Hit] = []
        cursor = after
        while True:
            page = select(Record).where(Record.id.in_(select(ids.c.id)))
            if cursor is not None:
                when, last = cursor
                page = page.where(
                    or_(
                        Record.occurred_at > when,
                        and_(Record.occurred_at == when, Record.id > last),
                    )
                )
            batch = list(
                await session.scalars(
                    page.order_by(Record.occurred_at, Record.id).limit(limit * _OVERFETCH)
                )
            )
            for record in batch:
                cursor = (record.occurred_at, record.id)
                hit = await self._verify(session, record, groups)
                if hit is not None:
                    hits.append(hit)
                    if len(hits) == limit:
                        return hits, cursor  # a later page may still be empty
            if len(batch) < limit * _OVERFETCH:
                return hits, None

    async def _verify(
        self, session: AsyncSession, record: Record, groups: Sequence[Group]
    ) -> Hit | None:
        sealed = await session.get(SealedObject, record.object_id)
        if sealed is None:
            return None
        try:
            content = decode_sealed_item(await self._vault.open(session, sealed))
        except KeyDestroyed:
            return None  # erased: nothing to match, nothing to show
        text = searchable_text(content)
        for group in groups:
            if _matches(group, text):
                media = list(
                    await session.scalars(select(MediaItem).where(MediaItem.record_id == record.id))
                )
                return Hit(record, content, _snippet(group, text), media)
        return None


def _conditions(filters: Filters) -> list[Any]:
    conditions: list[Any] = []
    if filters.accounts is not None:
        conditions.append(Record.account_id.in_(filters.accounts))
    if filters.contact_ids is not None:
        conditions.append(Record.contact_id.in_(filters.contact_ids))
    if filters.direction:
        conditions.append(Record.direction == filters.direction)
    if filters.source:
        conditions.append(Record.source == filters.source)
    if filters.item_type:
        conditions.append(Record.item_type == filters.item_type)
    if filters.since:
        conditions.append(Record.occurred_at >= filters.since)
    if filters.until:
        conditions.append(Record.occurred_at < filters.until)
    if filters.has_media is not None:
        conditions.append(Record.has_media.is_(filters.has_media))
    return conditions
