"""Reading the archive for a caller: the one place for paging, account scoping and
finding a contact by phone number.

Every method takes the accounts the caller may read (``None``: every account)
and an :class:`~archiver.audit.services.Actor`. What is about to be shown is
recorded durably in the audit trail (``record_durable``) before any content is
decrypted; nothing is shown when that fails.

Pages are in time order, (occurred at, record id), after an opaque keyset cursor.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.audit.services import Actor, AuditLog
from archiver.core.errors import (
    ArchiverError,
    IntegrityFailed,
    InvalidInput,
    KeyDestroyed,
    ObjectNotFound,
    RecordNotFound,
)
from archiver.records.conversations import Conversation, Conversations
from archiver.records.models import ContactIdentity, DeliveryState, MediaItem, Record
from archiver.records.services import BindingReport, Reason, RecordReader
from archiver.vault.services import Vault, VerifyReport
from archiver.whatsapp.items import MAX_ID, fit

Position = tuple[datetime, int]
Accounts = Collection[str] | None
"""The accounts a caller may read: ``None`` for every account."""
PAGE = 100


class InvalidCursor(InvalidInput):
    """A cursor that no page gave out."""


def encode_cursor(position: Position) -> str:
    """An opaque cursor for a position in time order: (occurred at, record id)."""
    raw = f"{position[0].isoformat()}|{position[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor stands for; raise ``InvalidCursor``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, ident = raw.partition("|")
        return datetime.fromisoformat(when), int(ident)
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor("malformed cursor") from None


def narrowed(accounts: Accounts, account_id: str | None) -> frozenset[str] | None:
    """``accounts`` narrowed to ``account_id`` when one is asked for."""
    if account_id is None:
        return None if accounts is None else frozenset(accounts)
    return frozenset({account_id}) if accounts is None or account_id in accounts else frozenset()


def _scoped(query: Select[Record], accounts: Accounts) -> Select[Record]:
    return query if accounts is None else query.where(Record.account_id.in_(list(accounts)))


@dataclass(slots=True)
class RecordView:
    """A record as read: its content (``None`` once erased, or when it failed),
    why it failed its integrity check, its media and its delivery state."""

    record: Record
    content: dict[str, Any] | None
    failure: Reason | None
    media: list[MediaItem] = field(default_factory=list)
    delivery: str | None = None


@dataclass(slots=True)
class RecordPage:
    views: list[RecordView]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ArchiveCheck:
    """Every sealed object re-read and re-hashed, and every record's binding checked."""

    objects: VerifyReport
    bindings: BindingReport

    @property
    def clean(self) -> bool:
        return self.objects.clean and not self.bindings.failures


@dataclass(frozen=True, slots=True)
class MediaPreview:
    """A media file's bytes for deciding how to show it (empty when they cannot be
    read), and why it failed its integrity check."""

    item: MediaItem
    record: Record
    data: bytes
    failure: str | None


@dataclass(frozen=True, slots=True)
class MediaFile:
    """A media file, decrypted, with the type it was stored under."""

    item: MediaItem
    record: Record
    data: bytes


@dataclass(frozen=True, slots=True)
class AccountProgress:
    """How far capture has come for one account: its records by kind, its media
    files by state, and the distinct errors of media not fetched."""

    kinds: Counter[str]
    media: Counter[str]
    problems: list[str]

    @property
    def records(self) -> int:
        return sum(self.kinds.values())


class Records:
    """The archive as a caller reads it, within the accounts they may read."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        reader: RecordReader,
        conversations: Conversations,
        audit: AuditLog,
        vault: Vault,
        *,
        contact_token: Callable[[str], bytes],
        meta_id_token: Callable[[str, str], bytes],
    ) -> None:
        """``contact_token`` is a phone number's blind token (normalised to E.164
        first; ``InvalidInput`` when it is no number), ``meta_id_token`` the token
        of a Meta id in an account (the search context's blind indexes)."""
        self._sessions = sessions
        self._reader = reader
        self._conversations = conversations
        self._audit = audit
        self._vault = vault
        self._contact_token = contact_token
        self._meta_id_token = meta_id_token

    async def page(
        self,
        actor: Actor,
        accounts: Accounts,
        *,
        account_id: str | None = None,
        contact_id: str | None = None,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int = PAGE,
    ) -> RecordPage:
        """One page of an account's or a contact's records in time order, after ``cursor``."""
        query = _scoped(select(Record), accounts)
        if account_id is not None:
            query = query.where(Record.account_id == account_id)
        if contact_id is not None:
            query = query.where(Record.contact_id == contact_id)
        if kind:
            query = query.where(Record.kind == kind)
        if cursor:
            when, last = decode_cursor(cursor)
            query = query.where(
                or_(Record.occurred_at > when, and_(Record.occurred_at == when, Record.id > last))
            )
        async with self._sessions() as session:
            records = list(
                await session.scalars(
                    query.order_by(Record.occurred_at, Record.id).limit(limit + 1)
                )
            )
            more = len(records) > limit
            records = records[:limit]
            views = await self._views(session, actor, records)
        last_record = records[-1] if more else None
        return RecordPage(
            views,
            encode_cursor((last_record.occurred_at, last_record.id)) if last_record else None,
        )

    async def one(self, actor: Actor, accounts: Accounts, record_id: int) -> RecordView:
        """One record; raise ``RecordNotFound`` when it is outside ``accounts``."""
        async with self._sessions() as session:
            record = await session.get(Record, record_id)
            if record is None or (accounts is not None and record.account_id not in accounts):
                raise RecordNotFound("no such record")
            return (await self._views(session, actor, [record]))[0]

    async def by_wamid(self, actor: Actor, accounts: Accounts, wamid: str) -> list[RecordView]:
        """The records carrying a WhatsApp message id (the message, its edits and
        statuses), looked up by the id's token in each account; raise ``RecordNotFound``."""
        async with self._sessions() as session:
            if accounts is None:
                accounts = set(await session.scalars(select(Record.account_id).distinct()))
            meta_id = fit(wamid, MAX_ID)
            tokens = [(a, self._meta_id_token(a, meta_id)) for a in accounts]
            query = select(Record).where(
                or_(
                    tuple_(Record.account_id, Record.wamid_token).in_(tokens),
                    tuple_(Record.account_id, Record.related_wamid_token).in_(tokens),
                )
            )
            records = list(
                await session.scalars(
                    _scoped(query, accounts).order_by(Record.occurred_at, Record.id).limit(PAGE)
                )
            )
            if not records:
                raise RecordNotFound("no record with that wamid")
            return await self._views(session, actor, records)

    async def contact_of(self, phone: str, accounts: Accounts) -> str:
        """The contact id of a phone number (by its blind token), when any of that
        contact's records is within ``accounts``; raise ``RecordNotFound``."""
        async with self._sessions() as session:
            contact = await self._contact(session, phone)
            visible = contact is not None and await session.scalar(
                _scoped(select(Record).where(Record.contact_id == contact), accounts)
                .with_only_columns(Record.id)
                .limit(1)
            )
        if contact is None or not visible:
            raise RecordNotFound("no contact with that number")
        return contact

    async def conversation(
        self, actor: Actor, accounts: Accounts, contact_id: str, account_id: str | None = None
    ) -> Conversation:
        """The contact's conversation within ``accounts`` (narrowed to ``account_id``),
        recorded in the audit trail before it is shown; raise ``RecordNotFound``
        when none of it is visible."""
        async with self._sessions() as session:
            chat = await self._conversations.reconstruct(
                session, contact_id, narrowed(accounts, account_id)
            )
        if not chat.messages and not chat.events and not chat.statuses:
            raise RecordNotFound("no such conversation")
        shown = [m.record for m in chat.messages] + [s.record for s in chat.statuses]
        await self._audit.record_durable(
            actor.entry(
                "archive.read.conversation",
                target=f"contact:{contact_id} records:" + ",".join(str(r.id) for r in shown),
                scope=",".join(sorted({r.account_id for r in shown})),
            )
        )
        return chat

    async def media_preview(self, accounts: Accounts, media_id: int) -> MediaPreview:
        """A media file's bytes, to decide how a page shows it; not audited, as they
        are not shown (:meth:`media` serves and audits them). Raise ``RecordNotFound``
        outside ``accounts``."""
        async with self._sessions() as session:
            item, record = await self._visible_media(session, accounts, media_id)
            try:
                return MediaPreview(
                    item, record, await self._reader.open_media(session, item, record), None
                )
            except IntegrityFailed as exc:
                return MediaPreview(item, record, b"", exc.reason)
            except ArchiverError:  # erased, or not fetched: what is known of it is shown
                return MediaPreview(item, record, b"", None)

    async def _visible_media(
        self, session: AsyncSession, accounts: Accounts, media_id: int
    ) -> tuple[MediaItem, Record]:
        item = await session.get(MediaItem, media_id)
        record = await session.get(Record, item.record_id) if item else None
        if (
            item is None
            or record is None
            or (accounts is not None and record.account_id not in accounts)
        ):
            raise RecordNotFound("no such media")
        return item, record

    async def media(self, actor: Actor, accounts: Accounts, media_id: int) -> MediaFile:
        """A media file, decrypted once its access is recorded; raise ``RecordNotFound``
        (outside ``accounts``, never stored, or erased) or ``IntegrityFailed``."""
        async with self._sessions() as session:
            item, record = await self._visible_media(session, accounts, media_id)
            if item.object_id is None:
                raise RecordNotFound("no such media")
            await self._audit.record_durable(
                actor.entry(
                    "archive.read.media",
                    target=f"media:{media_id} record:{record.id}",
                    scope=record.account_id,
                )
            )
            try:
                data = await self._reader.open_media(session, item, record)
            except (KeyDestroyed, ObjectNotFound):
                raise RecordNotFound("no such media") from None
        return MediaFile(item, record, data)

    async def verify(self) -> ArchiveCheck:
        """Re-read every sealed object and check every record's binding to its object."""
        async with self._sessions() as session:
            objects = await self._vault.verify(session)
            bindings = await self._reader.verify(session)
        return ArchiveCheck(objects, bindings)

    async def progress(self, account_id: str) -> AccountProgress:
        """What the archive holds for ``account_id`` so far (the sandbox's progress)."""
        ours = Record.account_id == account_id
        async with self._sessions() as session:
            kinds = await session.execute(
                select(Record.kind, func.count()).where(ours).group_by(Record.kind)
            )
            media = await session.execute(
                select(MediaItem.state, func.count())
                .join(Record, Record.id == MediaItem.record_id)
                .where(ours)
                .group_by(MediaItem.state)
            )
            problems = await session.scalars(
                select(MediaItem.last_error)
                .join(Record, Record.id == MediaItem.record_id)
                .where(ours, MediaItem.state != "fetched", MediaItem.last_error.is_not(None))
                .distinct()
            )
            return AccountProgress(
                Counter(dict(kinds.tuples().all())),
                Counter(dict(media.tuples().all())),
                sorted(p for p in problems if p),
            )

    async def contacts_of(self, phone: str | None) -> frozenset[str] | None:
        """The contact a phone number names, as a search filter: ``None`` for no
        number, no contact at all for an unknown one."""
        if phone is None:
            return None
        async with self._sessions() as session:
            found = await self._contact(session, phone)
        return frozenset({found} if found else set())

    async def _contact(self, session: AsyncSession, phone: str) -> str | None:
        """The contact id of a phone number, by its blind token (``None``: unknown)."""
        row = await session.get(ContactIdentity, ("wa_id", self._contact_token(phone)))
        return row.contact_id if row else None

    async def _views(
        self, session: AsyncSession, actor: Actor, records: list[Record]
    ) -> list[RecordView]:
        """The records read back, once their access is durably in the audit trail."""
        if not records:
            return []
        ids = [r.id for r in records]
        await self._audit.record_durable(
            actor.entry(
                "archive.read",
                target="records:" + ",".join(str(i) for i in ids),
                scope=",".join(sorted({r.account_id for r in records})),
            )
        )
        media: dict[int, list[MediaItem]] = {i: [] for i in ids}
        for item in await session.scalars(select(MediaItem).where(MediaItem.record_id.in_(ids))):
            media[item.record_id].append(item)
        opened = await self._reader.read(session, records)
        views = []
        for record in records:
            failure = opened.failures.get(record.id)
            delivery = None
            if failure is None and record.wamid_token and record.direction == "outbound":
                state = await session.get(DeliveryState, (record.account_id, record.wamid_token))
                delivery = state.status if state else None
            views.append(
                RecordView(
                    record,
                    opened.contents.get(record.id),
                    failure,
                    media[record.id] if failure is None else [],
                    delivery,
                )
            )
        return views
