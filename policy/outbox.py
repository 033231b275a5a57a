"""The outbox: every outbound message, from any source, on its way past the policy.

One entry point, :meth:`Outbox.submit`, takes an item from an agent, a
campaign, an auto-reply or the API. An item moves::

    queued -> decided -> dispatching -> sent -> delivered -> read
           \\-> held -> approved -> dispatching ...
                    \\-> rejected
    (and failed, blocked, expired or cancelled)

``decided`` and ``approved`` items wait for their ``due_at`` (a deferral by a
rate or timing rule). Each move is a row of the item's history and an audit
event, in the transaction that makes it. The content and the recipient's
number are sealed under the recipient's key; the row holds ids, states and
digests only.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
import phonenumbers
from phonenumbers import timezone as phone_timezones
from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.accounts.models import Account
from archiver.audit.services import SYSTEM, Actor, AuditEntry, AuditLog
from archiver.core.clock import Clock
from archiver.core.db import Writer
from archiver.core.subjects import contact_subject
from archiver.search.blind_index import BlindIndex
from archiver.vault.models import SealedObject
from archiver.vault.services import SealRequest, Vault
from archiver.whatsapp.items import Identity
from policy.decision import (
    Category,
    ContentKind,
    Decision,
    Draft,
    Outcome,
    Source,
)
from policy.errors import (
    IdempotencyConflict,
    InvalidMessage,
    ItemNotFound,
    OutboxError,
    StateConflict,
    UnknownTemplate,
)
from policy.interfaces import ContactResolver
from policy.models import MessageTemplate, OutboxEvent, OutboxItem
from policy.rules import decide
from policy.snapshots import SnapshotLoader

MAX_TEXT = 4096  # Meta's limit for a text body
MAX_CAPTION = 1024
MAX_KEY = 200
MAX_VARIABLES = 100
MEDIA_TYPES = ("image", "document", "audio", "video", "sticker")
# The states an item waits in for its turn, and the terminal ones.
WAITING = ("decided", "approved")
FINAL = ("sent", "delivered", "read", "failed", "blocked", "expired", "cancelled", "rejected")


class MessageContent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What to send: ``kind`` says which fields apply.

    text: ``text``; template: ``template``, ``language`` and ``variables``;
    media: ``media_type``, ``media_id`` and an optional caption in ``text``;
    interactive: ``interactive``, Meta's interactive object.
    """

    kind: ContentKind
    text: str = ""
    template: str | None = None
    language: str | None = None
    variables: dict[str, str] = msgspec.field(default_factory=dict)
    media_type: str | None = None
    media_id: str | None = None
    interactive: dict[str, Any] | None = None


class SendRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An item for the outbox, from any source."""

    account_id: str
    to: str
    content: MessageContent
    idempotency_key: str
    source: Source = Source.API
    send_at: datetime | None = None
    expires_at: datetime | None = None


class SealedContent(msgspec.Struct, frozen=True):
    """An item's sealed object: the recipient's number and the content."""

    to: str
    content: MessageContent


@dataclass(frozen=True, slots=True)
class ItemEvent:
    """One move of an item."""

    from_state: str | None
    to_state: str
    actor: str
    at: datetime
    note: str | None


@dataclass(frozen=True, slots=True)
class ItemView:
    """An outbox item as its reader sees it (content only when asked and permitted)."""

    id: str
    account_id: str
    source: str
    sender_id: str
    contact_id: str
    kind: str
    category: str
    template_id: int | None
    state: str
    decision: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    send_at: datetime | None
    expires_at: datetime | None
    due_at: datetime | None
    sent_at: datetime | None
    approved_by: str | None
    record_id: int | None
    error_code: int | None
    error_title: str | None
    events: tuple[ItemEvent, ...] = ()
    to: str | None = None
    content: MessageContent | None = None


@dataclass(frozen=True, slots=True)
class Opened:
    """An item with its content opened, ready to be decided or sent."""

    row: OutboxItem
    sealed: SealedContent
    draft: Draft


def recipient_zone(number: phonenumbers.PhoneNumber) -> tuple[str | None, str | None]:
    """The region of a number and its IANA zone; ``None`` for the zone when the
    country has several (the account's configured default then applies)."""
    region = phonenumbers.region_code_for_number(number)
    zones = [z for z in phone_timezones.time_zones_for_number(number) if z != "Etc/Unknown"]
    return region, zones[0] if len(zones) == 1 else None


def parse_recipient(to: str) -> tuple[str, phonenumbers.PhoneNumber]:
    """``to`` as Meta's digits-only wa_id and as a parsed number; raise ``InvalidMessage``."""
    raw = to.strip()
    try:
        number = phonenumbers.parse(raw if raw.startswith("+") else "+" + raw, None)
    except phonenumbers.NumberParseException:
        raise InvalidMessage("the recipient is not a phone number in international form") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidMessage("the recipient is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:], number


def check_request(request: SendRequest) -> None:
    """Raise ``InvalidMessage`` naming what is wrong with ``request``; change nothing."""
    content = request.content
    key = request.idempotency_key
    if not key or len(key) > MAX_KEY or not key.isprintable():
        raise InvalidMessage(f"the idempotency key must be 1 to {MAX_KEY} printable characters")
    if request.expires_at and request.send_at and request.expires_at <= request.send_at:
        raise InvalidMessage("the item expires before it may be sent")
    for when in (request.send_at, request.expires_at):
        if when is not None and when.tzinfo is None:
            raise InvalidMessage("send_at and expires_at need a time zone")
    if content.kind is ContentKind.TEXT:
        if not content.text.strip():
            raise InvalidMessage("a text message needs a text")
        if len(content.text) > MAX_TEXT:
            raise InvalidMessage(f"a text message is at most {MAX_TEXT} characters")
    elif content.kind is ContentKind.TEMPLATE:
        if not content.template or not content.language:
            raise InvalidMessage("a template message needs the template's name and language")
        if len(content.variables) > MAX_VARIABLES:
            raise InvalidMessage(f"a template takes at most {MAX_VARIABLES} variables")
    elif content.kind is ContentKind.MEDIA:
        if content.media_type not in MEDIA_TYPES or not content.media_id:
            raise InvalidMessage(
                f"a media message needs media_type ({', '.join(MEDIA_TYPES)}) and media_id"
            )
        if len(content.text) > MAX_CAPTION:
            raise InvalidMessage(f"a caption is at most {MAX_CAPTION} characters")
    elif content.kind is ContentKind.INTERACTIVE:
        if not isinstance(content.interactive, dict) or "type" not in content.interactive:
            raise InvalidMessage("an interactive message needs Meta's interactive object")
        if not interactive_text(content.interactive).strip():
            raise InvalidMessage("an interactive message needs a body text")
    if content.kind is not ContentKind.TEMPLATE and content.variables:
        raise InvalidMessage("only a template message takes variables")


def interactive_text(interactive: dict[str, Any]) -> str:
    """The texts a customer reads in an interactive message, for the rules and search."""
    parts: list[str] = []
    for part in ("header", "body", "footer"):
        value = interactive.get(part)
        if isinstance(value, dict) and isinstance(value.get("text"), str):
            parts.append(value["text"])
    action = interactive.get("action")
    if isinstance(action, dict):
        for button in action.get("buttons") or []:
            reply = button.get("reply") if isinstance(button, dict) else None
            if isinstance(reply, dict) and isinstance(reply.get("title"), str):
                parts.append(reply["title"])
    return "\n".join(parts)


def rules_text(content: MessageContent) -> str:
    """The free text of ``content`` that the lexicon is checked against (a
    template's variables are checked one by one)."""
    if content.kind is ContentKind.INTERACTIVE and content.interactive is not None:
        return interactive_text(content.interactive)
    return content.text


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An item checked and resolved, before its content is sealed."""

    request: SendRequest
    sender_id: str
    account_id: str
    portfolio_id: str
    to: str
    contact_id: str
    region: str | None
    zone: str | None
    category: Category
    template_id: int | None
    digest: bytes

    def row(self, content_object_id: int, now: datetime) -> OutboxItem:
        request = self.request
        return OutboxItem(
            id=uuid.uuid4().hex,
            account_id=self.account_id,
            source=request.source.value,
            sender_id=self.sender_id,
            idempotency_key=request.idempotency_key,
            contact_id=self.contact_id,
            recipient_region=self.region,
            recipient_zone=self.zone,
            kind=request.content.kind.value,
            category=self.category.value,
            template_id=self.template_id,
            answers_customer=request.content.kind is not ContentKind.TEMPLATE,
            content_object_id=content_object_id,
            content_digest=self.digest,
            state="queued",
            created_at=now,
            updated_at=now,
            send_at=request.send_at,
            expires_at=request.expires_at,
            due_at=now,
            attempts=0,
        )


class Outbox:
    """Takes items in, decides them, and moves them along; dispatch sends them."""

    def __init__(
        self,
        clock: Clock,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        audit: AuditLog,
        vault: Vault,
        contacts: ContactResolver,
        index: BlindIndex,
        snapshots: SnapshotLoader,
        *,
        retain_for: timedelta,
    ) -> None:
        self._clock = clock
        self._sessions = sessions
        self._writer = writer
        self._audit = audit
        self._vault = vault
        self._contacts = contacts
        self._index = index
        self._snapshots = snapshots
        self._retain_for = retain_for

    # -- taking items in -----------------------------------------------------

    async def submit(self, actor: Actor, sender_id: str, request: SendRequest) -> ItemView:
        """Queue ``request`` from ``sender_id`` and decide it at once; the same
        idempotency key from the same sender gives back the item it made. Raise
        ``InvalidMessage``, ``UnknownTemplate`` or ``IdempotencyConflict`` (audited
        as denied; nothing is queued)."""
        try:
            check_request(request)
            async with self._writer.transaction() as session:
                row, created = await self._queue(session, actor, sender_id, request)
                if created:
                    await self._audit.record_in(
                        session,
                        actor.entry(
                            "outbox.submit",
                            target=_target(row),
                            scope=row.account_id,
                            details={"source": row.source, "kind": row.kind},
                        ),
                    )
        except OutboxError as exc:
            await self._refused(actor, "outbox.submit", f"account:{request.account_id}", exc)
            raise
        if created:
            await self.decide_queued([row.id])
        return await self.get(None, row.id)

    async def _queue(
        self, session: AsyncSession, actor: Actor, sender_id: str, request: SendRequest
    ) -> tuple[OutboxItem, bool]:
        prepared = await self._prepare(session, sender_id, request)
        if isinstance(prepared, OutboxItem):
            return prepared, False
        now = self._clock.now()
        (sealed,) = await self._vault.seal_many(
            session,
            [
                SealRequest(
                    kind="outbox",
                    subject=contact_subject(prepared.contact_id),
                    plaintext=msgspec.json.encode(SealedContent(prepared.to, request.content)),
                    retain_until=now + self._retain_for,
                )
            ],
        )
        row = prepared.row(sealed.id, now)
        session.add(row)
        await session.flush()  # the item before its history (no ORM relationship orders them)
        session.add(OutboxEvent(item_id=row.id, to_state="queued", actor=actor.id, at=now))
        await session.flush()
        return row, True

    async def _prepare(
        self, session: AsyncSession, sender_id: str, request: SendRequest
    ) -> OutboxItem | _Prepared:
        """The item ``request`` would make (its content not sealed yet), or the item
        its idempotency key already made."""
        account = await session.get(Account, request.account_id)
        if account is None:
            raise InvalidMessage("no business number has that account id")
        to, number = parse_recipient(request.to)
        content = request.content
        digest = self._digest(to, content)
        existing = await session.scalar(
            select(OutboxItem).where(
                OutboxItem.account_id == request.account_id,
                OutboxItem.sender_id == sender_id,
                OutboxItem.idempotency_key == request.idempotency_key,
            )
        )
        if existing is not None:
            if existing.content_digest != digest:
                raise IdempotencyConflict(
                    "that idempotency key was used for a different message from this sender"
                )
            return existing
        template = None
        category = Category.SERVICE
        if content.kind is ContentKind.TEMPLATE:
            template = await session.scalar(
                select(MessageTemplate).where(
                    MessageTemplate.waba_id == (account.waba_id or account.id),
                    MessageTemplate.name == content.template,
                    MessageTemplate.language == content.language,
                )
            )
            if template is None:
                raise UnknownTemplate(
                    f"no template {content.template!r} in language {content.language!r} "
                    "is registered for this business account"
                )
            category = Category(template.category)
        contact = await self._contacts.resolve_contact(session, [Identity("wa_id", to)])
        if contact is None:
            raise InvalidMessage("the recipient could not be recorded as a contact")
        region, zone = recipient_zone(number)
        return _Prepared(
            request,
            sender_id,
            account.id,
            account.waba_id or account.id,
            to,
            contact,
            region,
            zone,
            category,
            template.id if template else None,
            digest,
        )

    def _digest(self, to: str, content: MessageContent) -> bytes:
        """The same content gets the same keyed digest, whichever number sends it."""
        canonical = msgspec.json.encode([to, content], order="sorted").decode()
        return self._index.token("\x00outbox\x00" + canonical)

    async def preview(self, actor: Actor, sender_id: str, request: SendRequest) -> Decision:
        """The decision ``request`` would get now, without queueing it (for compose)."""
        check_request(request)
        async with self._writer.transaction() as session:
            prepared = await self._prepare(session, sender_id, request)
            if isinstance(prepared, OutboxItem):
                raise IdempotencyConflict("that idempotency key was already used by this sender")
            draft = draft_of(
                prepared.row(0, self._clock.now()), request.content, prepared.portfolio_id
            )
            decision = decide(draft, await self._snapshots.load(session, [draft]))
            await session.rollback()  # a preview keeps nothing, not even a new contact
        return decision

    # -- deciding ------------------------------------------------------------

    async def decide_queued(
        self, item_ids: Sequence[str] | None = None, limit: int = 10_000
    ) -> int:
        """Decide queued items (``item_ids``, or the oldest ``limit``) in one batch:
        one snapshot, one transaction, one audit append; return how many."""
        async with self._writer.transaction() as session:
            query = select(OutboxItem).where(OutboxItem.state == "queued")
            if item_ids is not None:
                query = query.where(OutboxItem.id.in_(list(item_ids)))
            rows = list(
                await session.scalars(
                    claim_rows(query.order_by(OutboxItem.created_at).limit(limit), session)
                )
            )
            if not rows:
                return 0
            opened = await self._open(session, rows)
            snapshot = await self._snapshots.load(session, [o.draft for o in opened])
            entries = [
                self.record_decision(session, o.row, decide(o.draft, snapshot), SYSTEM)
                for o in opened
            ]
            await write_in_bulk(session, rows)
            await self._audit.record_all_in(session, [e for e in entries if e is not None])
        return len(rows)

    def record_decision(
        self, session: AsyncSession, row: OutboxItem, decision: Decision, actor: Actor
    ) -> AuditEntry | None:
        """Record ``decision`` on ``row`` and move it; the move's audit entry (``None``
        when the item only waits longer)."""
        row.decision = msgspec.json.encode(decision.as_dict()).decode()
        outcome = decision.outcome
        if outcome is Outcome.BLOCK:
            expired = any(r.code == "expired" for r in decision.reasons)
            to_state = "expired" if expired else "blocked"
        elif outcome is Outcome.HOLD:
            to_state = "held"
        else:
            to_state = row.state if row.state in WAITING else "decided"
            row.due_at = decision.defer_until or decision.decided_at
        return self.move(session, row, to_state, actor, decision_note(decision))

    def move(
        self,
        session: AsyncSession,
        row: OutboxItem,
        to_state: str,
        actor: Actor,
        note: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry | None:
        """Move ``row`` to ``to_state`` with its history row; return the audit entry
        for the caller to record in the same transaction (``None``: no move)."""
        if to_state == row.state:
            return None
        now = self._clock.now()
        session.add(
            OutboxEvent(
                item_id=row.id,
                from_state=row.state,
                to_state=to_state,
                actor=actor.id,
                at=now,
                note=note,
            )
        )
        from_state, row.state, row.updated_at = row.state, to_state, now
        # The move and its note (decision codes, a reviewer's comment) are in clear, as
        # on the item's history; only ``details`` are sealed. A batch of 10,000
        # decisions then seals nothing per event.
        return actor.entry(
            f"outbox.{to_state}",
            target=_target(row),
            scope=row.account_id,
            reason=(f"from {from_state}" + (f"; {note}" if note else ""))[:500],
            details=details,
        )

    async def open_items(self, session: AsyncSession, rows: Sequence[OutboxItem]) -> list[Opened]:
        """``rows`` with their sealed content opened and their drafts built."""
        return await self._open(session, rows)

    async def _open(self, session: AsyncSession, rows: Sequence[OutboxItem]) -> list[Opened]:
        objects = {
            o.id: o
            for o in await session.scalars(
                select(SealedObject).where(SealedObject.id.in_([r.content_object_id for r in rows]))
            )
        }
        portfolios = await self._snapshots.portfolios(session, sorted({r.account_id for r in rows}))
        plain = await self._vault.open_many(session, [objects[r.content_object_id] for r in rows])
        opened = []
        for row, data in zip(rows, plain, strict=True):
            if data is None:  # the recipient was erased: nothing may go to them
                raise OutboxError(f"outbox item {row.id} belongs to an erased contact")
            sealed = msgspec.json.decode(data, type=SealedContent)
            draft = draft_of(row, sealed.content, portfolios.get(row.account_id, row.account_id))
            opened.append(Opened(row, sealed, draft))
        return opened

    # -- supervision and cancelling -------------------------------------------

    async def approve(self, actor: Actor, approver_id: str, item_id: str, comment: str) -> ItemView:
        """Release a held item past its hold (its block reasons still apply when it
        is decided again before dispatch); nobody approves their own item."""
        return await self._review(actor, approver_id, item_id, comment, approve=True)

    async def reject(self, actor: Actor, approver_id: str, item_id: str, comment: str) -> ItemView:
        """Reject a held item: it is never sent."""
        return await self._review(actor, approver_id, item_id, comment, approve=False)

    async def _review(
        self, actor: Actor, approver_id: str, item_id: str, comment: str, *, approve: bool
    ) -> ItemView:
        action = "outbox.approve" if approve else "outbox.reject"
        try:
            comment = comment.strip()
            if not comment or len(comment) > 1000:
                raise InvalidMessage("a review needs a comment of 1 to 1000 characters")
            async with self._writer.transaction() as session:
                row = await self._row(session, item_id, lock=True)
                if row.state != "held":
                    raise StateConflict(f"the item is {row.state}, not held")
                if row.sender_id == approver_id:
                    raise StateConflict("nobody may approve or reject their own item")
                if approve:
                    row.approved_by = approver_id
                    row.due_at = self._clock.now()
                entry = self.move(
                    session, row, "approved" if approve else "rejected", actor, comment
                )
                assert entry is not None
                await self._audit.record_in(session, entry)
        except OutboxError as exc:
            await self._refused(actor, action, f"outbox:{item_id}", exc)
            raise
        return await self.get(None, item_id)

    async def cancel(self, actor: Actor, item_id: str) -> ItemView:
        """Cancel an item that has not been handed to Graph yet."""
        try:
            async with self._writer.transaction() as session:
                row = await self._row(session, item_id, lock=True)
                if row.state not in ("queued", "decided", "held", "approved"):
                    raise StateConflict(f"the item is {row.state}: it can no longer be cancelled")
                entry = self.move(session, row, "cancelled", actor)
                assert entry is not None
                await self._audit.record_in(session, entry)
        except OutboxError as exc:
            await self._refused(actor, "outbox.cancel", f"outbox:{item_id}", exc)
            raise
        return await self.get(None, item_id)

    async def account_of(self, item_id: str) -> str:
        """The account an item sends from (to check the caller's permission); raise
        ``ItemNotFound``."""
        async with self._sessions() as session:
            account = await session.scalar(
                select(OutboxItem.account_id).where(OutboxItem.id == item_id)
            )
        if account is None:
            raise ItemNotFound("no outbox item has that id")
        return account

    # -- reading -------------------------------------------------------------

    async def get(
        self, accounts: frozenset[str] | set[str] | None, item_id: str, *, content: bool = False
    ) -> ItemView:
        """One item within ``accounts`` (``None``: all) with its history, and its
        content when ``content``; raise ``ItemNotFound``."""
        async with self._sessions() as session:
            row = await session.get(OutboxItem, item_id)
            if row is None or (accounts is not None and row.account_id not in accounts):
                raise ItemNotFound("no outbox item has that id")
            events = await session.scalars(
                select(OutboxEvent).where(OutboxEvent.item_id == row.id).order_by(OutboxEvent.id)
            )
            sealed = (await self._open(session, [row]))[0].sealed if content else None
            return _view(row, list(events), sealed)

    async def list(
        self,
        accounts: frozenset[str] | set[str] | None,
        *,
        account_id: str | None = None,
        state: str | None = None,
        sender_id: str | None = None,
        contact_id: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[ItemView]:
        """Items within ``accounts``, newest first, filtered; ``before`` is the id of
        the last item of the previous page."""
        query = select(OutboxItem)
        if accounts is not None:
            query = query.where(OutboxItem.account_id.in_(list(accounts)))
        for column, value in (
            (OutboxItem.account_id, account_id),
            (OutboxItem.state, state),
            (OutboxItem.sender_id, sender_id),
            (OutboxItem.contact_id, contact_id),
        ):
            if value is not None:
                query = query.where(column == value)
        async with self._sessions() as session:
            if before is not None:
                last = await session.get(OutboxItem, before)
                if last is None:
                    raise InvalidMessage("'before' names no outbox item")
                query = query.where(
                    or_(
                        OutboxItem.created_at < last.created_at,
                        and_(OutboxItem.created_at == last.created_at, OutboxItem.id < last.id),
                    )
                )
            rows = await session.scalars(
                query.order_by(OutboxItem.created_at.desc(), OutboxItem.id.desc()).limit(limit)
            )
            return [_view(row, [], None) for row in rows]

    async def _row(self, session: AsyncSession, item_id: str, *, lock: bool) -> OutboxItem:
        query = select(OutboxItem).where(OutboxItem.id == item_id)
        row = await session.scalar(query.with_for_update() if lock else query)
        if row is None:
            raise ItemNotFound("no outbox item has that id")
        return row

    async def expire_stale(self) -> int:
        """Waiting items past their expiry become expired; return how many."""
        now = self._clock.now()
        async with self._writer.transaction() as session:
            rows = list(
                await session.scalars(
                    claim_rows(
                        select(OutboxItem).where(
                            OutboxItem.state.in_(("queued", "decided", "held", "approved")),
                            OutboxItem.expires_at.is_not(None),
                            OutboxItem.expires_at <= now,
                        ),
                        session,
                    )
                )
            )
            entries = [
                self.move(session, row, "expired", SYSTEM, "past its expiry") for row in rows
            ]
            await self._audit.record_all_in(session, [e for e in entries if e is not None])
        return len(rows)

    async def _refused(self, actor: Actor, action: str, target: str, exc: OutboxError) -> None:
        await self._audit.record_durable(
            actor.entry(
                action,
                outcome="denied",
                target=target,
                reason=type(exc).__name__,
                details={"error": str(exc)},
            )
        )


async def write_in_bulk(session: AsyncSession, rows: Sequence[OutboxItem]) -> None:
    """Write a batch's moves (``rows``' changes and their new history rows) in two
    statements. The ORM's unit of work would issue one UPDATE per item and, on
    SQLite, one INSERT per history row: 20,000 statements for a batch of 10,000."""
    events = [obj for obj in session.new if isinstance(obj, OutboxEvent)]
    changes = [
        {
            "id": row.id,
            "state": row.state,
            "decision": row.decision,
            "due_at": row.due_at,
            "updated_at": row.updated_at,
            "sent_at": row.sent_at,
            "attempts": row.attempts,
        }
        for row in rows
    ]
    history = [
        {
            "item_id": e.item_id,
            "from_state": e.from_state,
            "to_state": e.to_state,
            "actor": e.actor,
            "at": e.at,
            "note": e.note,
        }
        for e in events
    ]
    for obj in (*events, *rows):
        session.expunge(obj)
    if changes:
        await session.execute(update(OutboxItem), changes)
    if history:
        await session.execute(insert(OutboxEvent), history)


def draft_of(row: OutboxItem, content: MessageContent, portfolio_id: str) -> Draft:
    """The rules' view of an item (``row`` need not be stored: a preview's is not)."""
    return Draft(
        item_id=row.id,
        account_id=row.account_id,
        portfolio_id=portfolio_id,
        source=Source(row.source),
        sender_id=row.sender_id,
        contact_id=row.contact_id,
        recipient_region=row.recipient_region,
        recipient_zone=row.recipient_zone,
        kind=ContentKind(row.kind),
        category=Category(row.category),
        text=rules_text(content),
        template_id=row.template_id,
        variables=content.variables,
        content_digest=row.content_digest,
        answers_customer=row.answers_customer,
        created_at=row.created_at,
        send_at=row.send_at,
        expires_at=row.expires_at,
        approved_by=row.approved_by,
    )


def decision_note(decision: Decision) -> str:
    """A decision in one line: its outcome and the codes of its reasons."""
    codes = ", ".join(r.code for r in decision.reasons)
    return f"{decision.outcome.value}" + (f": {codes}" if codes else "")


def claim_rows(query: Any, session: AsyncSession) -> Any:
    """Lock the rows a worker takes, skipping those another worker holds
    (PostgreSQL); SQLite's write gate already lets one writer in at a time."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True)
    return query


def _target(row: OutboxItem) -> str:
    return f"outbox:{row.id}"


def _view(row: OutboxItem, events: list[OutboxEvent], sealed: SealedContent | None) -> ItemView:
    return ItemView(
        id=row.id,
        account_id=row.account_id,
        source=row.source,
        sender_id=row.sender_id,
        contact_id=row.contact_id,
        kind=row.kind,
        category=row.category,
        template_id=row.template_id,
        state=row.state,
        decision=msgspec.json.decode(row.decision) if row.decision else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        send_at=row.send_at,
        expires_at=row.expires_at,
        due_at=row.due_at,
        sent_at=row.sent_at,
        approved_by=row.approved_by,
        record_id=row.record_id,
        error_code=row.error_code,
        error_title=row.error_title,
        events=tuple(ItemEvent(e.from_state, e.to_state, e.actor, e.at, e.note) for e in events),
        to=sealed.to if sealed else None,
        content=sealed.content if sealed else None,
    )
