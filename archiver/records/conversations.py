"""Conversation reconstruction: a contact's records read back as the chat it was.

Reactions, edits and revokes are folded into the message they refer to (every
version kept, the original first); statuses become the message's receipts;
replies point at the message they quote. What is neither a message nor folds
into one (history chunk summaries, account events) is listed as an event, and
so is a reaction, edit, revoke or status that fails its integrity check: what
it would fold into cannot be trusted. A status whose message is not in the
archive is kept at its time as a status of its own, with its state and error.
A failed status's error (Meta's code and title) is read from its sealed item.
A message that fails is kept in its place, marked, with no content.

Every such join stays inside one business account: a message id is Meta's,
and another account (signed with its own app secret) may send the same one,
so an item is matched by its account and message id together. The rows hold
only blind tokens of those ids (per account); the ids shown are read from the
sealed items.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from archiver.records.models import MediaItem, Record
from archiver.records.services import Reason, RecordReader, searchable_text
from archiver.whatsapp.items import DeliveryError, delivery_error, item_ids, profile_name

_FOLDED = frozenset({"reaction", "edit", "revoke"})
_DELIVERY_RANK = {"sent": 1, "delivered": 2, "read": 3}


@dataclass(slots=True)
class Version:
    """One version of a message's text: the original, then each edit."""

    record_id: int
    occurred_at: datetime
    text: str


@dataclass(slots=True)
class Reaction:
    record_id: int
    occurred_at: datetime
    emoji: str  # empty: the reaction was removed
    direction: str


@dataclass(slots=True)
class Message:
    """A message as a reader sees it, with everything that happened to it."""

    record: Record
    content: dict[str, Any] | None  # None once erased, or when it failed
    text: str
    reply_to: str | None  # the wamid replied to
    quoted: Message | None = None  # the message replied to, in the same account
    failure: Reason | None = None  # why it failed its integrity check
    versions: list[Version] = field(default_factory=list)
    reactions: list[Reaction] = field(default_factory=list)
    receipts: dict[str, datetime] = field(default_factory=dict)
    error: DeliveryError | None = None  # Meta's reason, when delivery failed
    media: list[MediaItem] = field(default_factory=list)

    @property
    def delivery(self) -> str | None:
        """The delivery state its receipts reached: ``failed`` is final, else the
        furthest of sent, delivered and read."""
        if "failed" in self.receipts:
            return "failed"
        reached = [s for s in self.receipts if s in _DELIVERY_RANK]
        return max(reached, key=_DELIVERY_RANK.__getitem__) if reached else None


@dataclass(slots=True)
class Status:
    """A status for a message that is not in this archive, shown at its time."""

    record: Record
    wamid: str | None  # read from the sealed item (failed statuses only are opened)
    error: DeliveryError | None = None


@dataclass(frozen=True, slots=True)
class Customer:
    """Who the conversation is with, as their own messages' sealed items say."""

    name: str | None  # their WhatsApp profile name
    wa_id: str | None  # their number


@dataclass(slots=True)
class Event:
    """A record shown on its own: an account event, a history summary, or a
    record that failed its integrity check and so folds into nothing."""

    record: Record
    failure: Reason | None = None


@dataclass(slots=True)
class Conversation:
    contact_id: str
    messages: list[Message]
    events: list[Event]
    statuses: list[Status] = field(default_factory=list)
    customer: Customer | None = None


class Conversations:
    """Reads a contact's records back as a conversation."""

    def __init__(self, records: RecordReader) -> None:
        self._records = records

    async def reconstruct(
        self, session: AsyncSession, contact_id: str, accounts: Iterable[str] | None
    ) -> Conversation:
        """The contact's conversation within ``accounts`` (``None``: every account)."""
        query = select(Record).where(Record.contact_id == contact_id)
        if accounts is not None:
            query = query.where(Record.account_id.in_(list(accounts)))
        records = list(await session.scalars(query.order_by(Record.occurred_at, Record.id)))
        keys = {(r.account_id, r.wamid_token) for r in records if r.wamid_token}
        if keys:
            # Statuses may carry the recipient only as a business-scoped id, so they
            # are found by message id rather than by contact.
            by_message = select(Record).where(
                Record.kind == "status", tuple_(Record.account_id, Record.wamid_token).in_(keys)
            )
            known = {r.id for r in records}
            records += [r for r in await session.scalars(by_message) if r.id not in known]
        media: dict[int, list[MediaItem]] = {}
        ids = [r.id for r in records]
        for stored in await session.scalars(select(MediaItem).where(MediaItem.record_id.in_(ids))):
            media.setdefault(stored.record_id, []).append(stored)

        messages: dict[tuple[str, bytes], Message] = {}
        ordered: list[Message] = []
        folded: list[tuple[Record, dict[str, Any] | None]] = []
        events: list[Event] = []
        opened = await self._records.read(
            session, records, lambda r: r.kind not in ("status", "event") or r.status == "failed"
        )
        contents, failures = opened.contents, opened.failures
        for record in records:
            failure = failures.get(record.id)
            folds = record.kind == "status" or record.item_type in _FOLDED
            if record.kind == "event" or (folds and failure is not None):
                events.append(Event(record, failure))
            elif folds:
                folded.append((record, contents.get(record.id)))
            elif failure is not None:
                ordered.append(Message(record, None, "", None, failure=failure))
            else:
                content = contents.get(record.id)  # absent when erased
                text = searchable_text(content) if content else ""
                message = Message(record, content, text, message_ids(record, content)[1])
                message.versions.append(Version(record.id, record.occurred_at, text))
                message.media = media.get(record.id, [])
                ordered.append(message)
                if record.wamid_token:
                    messages.setdefault((record.account_id, record.wamid_token), message)
        for message in ordered:
            if message.record.related_wamid_token:
                quoted = (message.record.account_id, message.record.related_wamid_token)
                message.quoted = messages.get(quoted)
        statuses: list[Status] = []
        present = {(r.account_id, r.wamid_token) for r in records if r.kind != "status"}
        for record, content in folded:
            token = record.wamid_token if record.kind == "status" else record.related_wamid_token
            target = messages.get((record.account_id, token or b""))
            item = content.get("item") if content else None
            if target is None:
                if record.kind == "status" and (record.account_id, token) not in present:
                    wamid = item_ids(item)[0] if record.wamid_token else None
                    statuses.append(Status(record, wamid, delivery_error(item)))
                continue
            if record.kind == "status" and record.status:
                target.receipts.setdefault(record.status, record.occurred_at)
                target.error = target.error or delivery_error(item)
            elif record.item_type == "edit" and isinstance(item, dict):
                target.versions.append(
                    Version(record.id, record.occurred_at, searchable_text(content or {}))
                )
            elif record.item_type == "reaction" and isinstance(item, dict):
                emoji = (item.get("reaction") or {}).get("emoji") or ""
                target.reactions.append(
                    Reaction(record.id, record.occurred_at, str(emoji), record.direction)
                )
        return Conversation(contact_id, ordered, events, statuses, _customer(ordered))


def _customer(messages: list[Message]) -> Customer | None:
    """The customer's latest profile name and number in their messages' sealed items."""
    name = wa_id = None
    for message in messages:
        content = message.content or {}
        item = content.get("item")
        if not isinstance(item, dict):
            continue
        inbound = message.record.direction == "inbound"
        number = item.get("from" if inbound else "to")
        number = number if isinstance(number, str) and number.isdigit() else None
        wa_id = number or wa_id
        if inbound:
            name = profile_name(content, number) or name
    return Customer(name, wa_id) if name or wa_id else None


def message_ids(record: Record, content: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """A record's wamid and the wamid it refers to, read from its sealed ``content``
    (the row holds only their tokens): ``None`` where it has none, or once erased."""
    wamid, related = item_ids(content.get("item")) if content else (None, None)
    return (
        wamid if record.wamid_token else None,
        related if record.related_wamid_token else None,
    )


def sender(record: Record, content: dict[str, Any] | None) -> str | None:
    """Who wrote a record: ``business`` for the business's own messages, else the
    customer's profile name (a chat export's sender name) from its sealed ``content``."""
    if record.direction == "outbound":
        return "business"
    item = content.get("item") if content else None
    if not content or not isinstance(item, dict) or record.kind == "status":
        return None
    if content.get("field") == "chat_export":
        name = item.get("sender")
        return name if isinstance(name, str) and name else None
    wa_id = item.get("from")
    return profile_name(content, wa_id if isinstance(wa_id, str) else None)
