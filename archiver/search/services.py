"""Search over the blind index.

A query is words and "quoted phrases", ANDed, with ``OR`` between groups:
``会議 資料 OR "board meeting"``. Each word and phrase becomes blind-index tokens;
candidate records must hold every token of some group. Candidates are then
decrypted and checked: every word must be a word (or CJK run) of the text,
every phrase must appear in it, so truncated-HMAC collisions and phrases whose
words merely occur apart never reach the caller. A candidate that fails its
integrity check cannot be checked: it is returned as a hit with no content,
marked with the reason, so that the damage shows.

The delivery filters (state, Meta's error code) find business messages by their
delivery state and failed statuses, and the statuses for messages that are not
in the archive, each joined within its own account.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, func, or_, select, tuple_
from sqlalchemy.orm import Session, aliased

from archiver.core.clock import time_key
from archiver.core.db import Reader
from archiver.core.errors import ArchiverError
from archiver.records.models import DeliveryState, MediaItem, Record
from archiver.records.services import Loaded, Opened, Reason, RecordReader, searchable_text
from archiver.search.blind_index import BlindIndex, normalize, query_tokens, tokenize
from archiver.search.models import SearchToken
from archiver.vault.models import SealedObject

_QUERY = re.compile(r'"([^"]*)"|(\S+)')
_SNIPPET = 60
# Candidates that fail the check on the decrypted text are replaced by fetching
# again, in rounds of at most this many.
_MAX_ROUND = 1_000
# Choosing the rarest token counts each token's entries only up to this many.
_COUNT_CAP = 1_000
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
    on_hold: bool | None = None  # the record's sealed object is under legal hold
    flagged: bool | None = None  # the text holds a term of ``lexicon``
    lexicon: tuple[str, ...] = ()  # the active lexicon terms, when ``flagged`` is set
    delivery: str | None = None  # sent, delivered, read or failed
    error_code: int | None = None  # Meta's error code of a failed delivery

    @property
    def on_delivery(self) -> bool:
        """Whether a delivery filter is set (statuses may then be results)."""
        return self.delivery is not None or self.error_code is not None


@dataclass(slots=True)
class Hit:
    """One verified result, or a candidate that failed its integrity check
    (``failure`` says why; it has no content and an empty snippet)."""

    record: Record
    content: dict[str, Any] | None
    snippet: str
    media: list[MediaItem] = field(default_factory=list)
    failure: Reason | None = None


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


def lexicon_group(term: str) -> Group:
    """A lexicon term matches as its search would: a word as a word, several as a phrase."""
    return Group((term,), ()) if len(term.split()) == 1 else Group((), (term,))


@dataclass(frozen=True, slots=True)
class _Plan:
    """What candidates are drawn from and what their text must then show."""

    groups: list[Group]  # the query's; the text must match one (none: no terms asked)
    lexicon: list[Group]  # the lexicon's, when the flagged filter is set
    flagged: bool | None

    @property
    def drivers(self) -> list[Group]:
        """Groups whose tokens find the candidates (none: the filters alone do)."""
        return self.groups or (self.lexicon if self.flagged else [])

    @property
    def required(self) -> list[Group]:
        """Groups of which candidates must also hold every token of one."""
        return self.lexicon if self.flagged and self.groups else []

    def snippet_of(self, text: str) -> str | None:
        """The snippet if ``text`` passes, else ``None``."""
        matched = next((g for g in self.groups if _matches(g, text)), None)
        if self.groups and matched is None:
            return None
        if self.flagged is not None:
            flag = next((g for g in self.lexicon if _matches(g, text)), None)
            if (flag is not None) != self.flagged:
                return None
            matched = matched or flag
        return _snippet(matched or Group((), ()), text)


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

    def __init__(self, records: RecordReader, index: BlindIndex, reader: Reader) -> None:
        self._records = records
        self._index = index
        self._reader = reader

    async def search(
        self,
        query: str,
        filters: Filters,
        *,
        after: tuple[datetime, int] | None = None,
        limit: int = 50,
    ) -> tuple[list[Hit], tuple[datetime, int] | None]:
        """One page of verified hits in time order, and the cursor for the next.

        An empty ``query`` lists the messages that pass ``filters`` (receipts
        excepted, unless a delivery filter asks for statuses of messages not in
        the archive), for example a contact's messages over a date range.
        """
        plan = _Plan(
            parse_query(query) if query.strip() else [],
            [lexicon_group(term) for term in filters.lexicon],
            filters.flagged,
        )
        if plan.flagged and not plan.lexicon:
            return [], None  # an empty lexicon flags nothing
        hits: list[Hit] = []
        cursor = after
        wanted = limit
        examined = 0
        while True:
            batch, opened = await self._open_candidates(plan, filters, cursor, wanted)
            for record in batch:
                cursor = (record.occurred_at, record.id)
                examined += 1
                content = opened.contents.get(record.id)  # absent when erased or failed
                failure = opened.failures.get(record.id)
                snippet = None if content is None else plan.snippet_of(searchable_text(content))
                if failure is not None or snippet is not None:
                    hits.append(Hit(record, content, snippet or "", failure=failure))
                    if len(hits) == limit:
                        await self._attach_media(hits)
                        return hits, cursor  # a later page may still be empty
            if len(batch) < wanted:
                await self._attach_media(hits)
                return hits, None
            # Most candidates pass, so the first round asks for one page; the next
            # asks for what is missing at the pass rate seen so far (phrases and
            # flags fail more often), with some margin.
            missing = limit - len(hits)
            rate = max(len(hits), 1) / examined
            wanted = min(max(math.ceil(missing / rate * 1.5), 10), _MAX_ROUND)

    async def _open_candidates(
        self,
        plan: _Plan,
        filters: Filters,
        after: tuple[datetime, int] | None,
        count: int,
    ) -> tuple[list[Record], Opened]:
        """The next ``count`` candidates and what opening them found: every query
        in one read, then the store in one thread hop."""

        def read(session: Session) -> tuple[list[Record], Loaded]:
            records = self._candidates(session, plan, filters, after, count)
            return records, self._records.load(session, records)

        records, loaded = await self._reader.run(read)
        opened = await asyncio.to_thread(self._records.open, loaded)
        await self._records.report(opened)
        return records, opened

    async def _attach_media(self, hits: list[Hit]) -> None:
        by_record = {h.record.id: h for h in hits if h.record.has_media and not h.failure}
        if not by_record:
            return
        media = select(MediaItem).where(MediaItem.record_id.in_(by_record)).order_by(MediaItem.id)
        for item in await self._reader.run(lambda session: list(session.scalars(media))):
            by_record[item.record_id].media.append(item)

    def _candidates(
        self,
        session: Session,
        plan: _Plan,
        filters: Filters,
        after: tuple[datetime, int] | None,
        count: int,
    ) -> list[Record]:
        """The next ``count`` records, in time order, holding every token of some group."""
        if not plan.drivers:
            query = select(Record).where(*_conditions(filters))
            if not filters.on_delivery:
                query = query.where(Record.kind != "status")
            if after is not None:
                query = query.where(tuple_(Record.occurred_at, Record.id) > after)
            return list(session.scalars(query.order_by(Record.occurred_at, Record.id).limit(count)))
        found: set[tuple[int, int]] = set()
        for group in plan.drivers:
            group_query = self._group_query(session, group, plan.required, filters, after)
            found.update((at, i) for at, i in session.execute(group_query.limit(count)))
        ids = [record_id for _, record_id in sorted(found)[:count]]
        records = {r.id: r for r in session.scalars(select(Record).where(Record.id.in_(ids)))}
        return [records[i] for i in ids]

    def _group_query(
        self,
        session: Session,
        group: Group,
        required: list[Group],
        filters: Filters,
        after: tuple[datetime, int] | None,
    ) -> Select[int, int]:
        """``(at, record_id)`` of the group's records in time order.

        The rarest token drives: its entries are read in index order, so the
        page ends as soon as enough are found, and every other token is a point
        lookup on the same key.
        """
        tokens = self._tokens(group)
        driver = _rarest(session, tokens)
        entry = aliased(SearchToken)
        query = select(entry.at, entry.record_id).where(
            entry.token == driver, *_holding(entry, [t for t in tokens if t != driver])
        )
        if required:
            query = query.where(or_(*(and_(*_holding(entry, self._tokens(g))) for g in required)))
        if after is not None:
            when, last = after
            query = query.where(tuple_(entry.at, entry.record_id) > tuple_(time_key(when), last))
        conditions = _conditions(filters)
        if conditions:
            # A correlated EXISTS rather than a join keeps the token index as the
            # outer loop (and the time order) whatever the planner thinks of the
            # records' own indexes.
            query = query.where(exists().where(Record.id == entry.record_id, *conditions))
        return query.order_by(entry.at, entry.record_id)

    def _tokens(self, group: Group) -> list[bytes]:
        return list(
            dict.fromkeys(
                token
                for term in (*group.words, *group.phrases)
                for token in self._index.query(term)
            )
        )


def _holding(entry: type[SearchToken], tokens: list[bytes]) -> list[Any]:
    """Conditions that ``entry``'s record also holds each of ``tokens``."""
    conditions = []
    for token in tokens:
        other = aliased(SearchToken)
        conditions.append(
            exists().where(
                other.token == token, other.at == entry.at, other.record_id == entry.record_id
            )
        )
    return conditions


def _rarest(session: Session, tokens: list[bytes]) -> bytes:
    """The token held by the fewest records (counted up to a cap)."""
    if len(tokens) == 1:
        return tokens[0]
    counts = [
        select(func.count())
        .select_from(
            select(SearchToken.at).where(SearchToken.token == token).limit(_COUNT_CAP).subquery()
        )
        .scalar_subquery()
        for token in tokens
    ]
    row = session.execute(select(*counts)).one()
    return min(zip(row, tokens, strict=True), key=lambda pair: pair[0])[1]


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
    if filters.on_hold is not None:
        held = exists().where(
            SealedObject.id == Record.object_id, SealedObject.legal_hold.is_(True)
        )
        conditions.append(held if filters.on_hold else ~held)
    if filters.on_delivery:
        conditions.append(_delivered(filters))
    return conditions


def _delivered(filters: Filters) -> Any:
    """A message whose delivery is as ``filters`` ask, or such a status for a
    message that is not in the archive; every join within the record's account."""
    status = aliased(Record)
    of_message = exists().where(
        status.account_id == Record.account_id,
        status.wamid_token == Record.wamid_token,
        status.kind == "status",
        status.error_code == filters.error_code,
    )
    state = exists().where(
        DeliveryState.account_id == Record.account_id,
        DeliveryState.wamid_token == Record.wamid_token,
        DeliveryState.status == filters.delivery,
    )
    message = aliased(Record)
    unarchived = ~exists().where(
        message.account_id == Record.account_id,
        message.wamid_token == Record.wamid_token,
        message.kind != "status",
    )
    messages: list[Any] = [Record.kind != "status"]
    statuses: list[Any] = [Record.kind == "status", unarchived]
    if filters.delivery is not None:
        messages.append(state)
        statuses += [state, Record.status == filters.delivery]
    if filters.error_code is not None:
        messages.append(of_message)
        statuses.append(Record.error_code == filters.error_code)
    return or_(and_(*messages), and_(*statuses))
