"""Webhook reactions: what captured records change in the policy's state.

:meth:`Reactions.catch_up` reads the records after its cursor (``policy_cursors``
row ``reactions``), in id order and in batches, and for each batch, in one
transaction with the cursor's move and the audit events of every change:

* an inbound Cloud API or Business App text message that is a stop or resume
  word (``policy.stopwords``) opts the contact out of (or back in to)
  marketing, utility and authentication, by ``chat_keyword``;
* a ``user_preferences`` event on ``marketing_messages`` (``preference_stop`` /
  ``preference_resume``) opts out of or in to marketing, by ``webhook``;
* a failed status with error 131050 opts out of marketing, by ``delivery_error``;
* ``message_template_status_update``, ``message_template_quality_update`` and
  ``template_category_update`` update the template they name (unknown ones are
  logged, without content, and ignored);
* ``phone_number_quality_update`` keeps the number's messaging tier;
* a ``sent``, ``delivered``, ``read`` or ``failed`` status of an outbox item's
  message moves the item forward only (``failed`` is terminal), with an outbox
  event and an ``outbox.<state>`` audit event; a failure's code and title are
  kept and its meaning (``policy.graph_errors.classify``) applied.

Only the records that a reaction needs are decrypted. On PostgreSQL, record ids
are handed out before their transactions commit, so a lower id can become
visible after a higher one: the cursor moves only up to a horizon, the highest id
seen by a snapshot all of whose concurrent transactions have since ended (SQLite
has one writer, so ids commit in order there). Replaying records is
harmless: consent is unique per (source record, category), the outbox only moves
forward, and a template or tier already so is left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import select, text, true, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.accounts.models import Account
from archiver.audit.services import SYSTEM, Actor, AuditLog
from archiver.core.clock import Clock
from archiver.core.db import Writer
from archiver.records.models import Record
from archiver.records.services import Opened, RecordReader
from archiver.whatsapp.items import (
    SOURCE_BUSINESS_APP,
    SOURCE_CLOUD_API,
    delivery_error,
    message_text,
)
from policy.consent import ConsentAction, ConsentLedger, ConsentMethod, NewConsent
from policy.decision import Category
from policy.graph_errors import ErrorAction, classify
from policy.models import MessageTemplate, NumberSendState, OutboxEvent, OutboxItem, PolicyCursor
from policy.stopwords import keyword
from policy.templates import TemplateRegistry

log = structlog.get_logger("strongroom.policy.reactions")

CURSOR = "reactions"
BATCH = 200
OPTED_OUT_CODE = 131050
TEMPLATE_FIELDS = frozenset(
    {
        "message_template_status_update",
        "message_template_quality_update",
        "template_category_update",
    }
)
TIERS = frozenset({"TIER_50", "TIER_250", "TIER_1K", "TIER_2K", "TIER_10K", "TIER_100K"})
TIERS_UNLIMITED = "TIER_UNLIMITED"
KEYWORD_CATEGORIES = (Category.MARKETING, Category.UTILITY, Category.AUTHENTICATION)
# How far each state an outbox item reaches through webhooks has gone.
_RANK = {"dispatching": 0, "sent": 1, "delivered": 2, "read": 3}
_WEBHOOK_STATES = frozenset({"sent", "delivered", "read", "failed"})
# A snapshot, a transaction id taken after it (every transaction that had an id
# when the snapshot was taken has a lower one), and the highest record id it sees.
_SNAPSHOT = text(
    "SELECT pg_current_snapshot()::text, pg_current_xact_id()::text::bigint, "
    "(SELECT max(id) FROM records)"
)
# How many of the transactions running at a snapshot still run: those it lists as
# in progress, and those that took an id between its xmax and the one taken after.
_RUNNING = text(
    "SELECT count(*) FROM ("
    " SELECT x FROM pg_snapshot_xip(CAST(CAST(:snapshot AS text) AS pg_snapshot)) AS x"
    " UNION ALL"
    " SELECT CAST(CAST(g AS text) AS xid8) FROM generate_series("
    "  CAST(CAST(pg_snapshot_xmax(CAST(CAST(:snapshot AS text) AS pg_snapshot)) AS text)"
    "  AS bigint), CAST(:taken AS bigint) - 1) AS g"
    ") AS running(x) WHERE pg_xact_status(x) = 'in progress'"
)
_MAX_PENDING = 100


def _opens(record: Record) -> bool:
    """Whether a reaction needs the record's content."""
    if record.kind == "message":
        return (
            record.direction == "inbound"
            and record.item_type == "text"
            and record.source in (SOURCE_CLOUD_API, SOURCE_BUSINESS_APP)
        )
    if record.kind == "event":
        return record.item_type.startswith("preference_") or record.item_type in (
            TEMPLATE_FIELDS | {"phone_number_quality_update"}
        )
    return record.kind == "status" and record.status == "failed"


def _str(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        return str(value).strip() or None
    return None


class Reactions:
    """Turns captured records into consent, template, tier and outbox changes."""

    def __init__(
        self,
        clock: Clock,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        audit: AuditLog,
        reader: RecordReader,
        ledger: ConsentLedger,
        templates: TemplateRegistry,
        *,
        batch: int = BATCH,
        actor: Actor = SYSTEM,
    ) -> None:
        self._clock = clock
        self._sessions = sessions
        self._writer = writer
        self._audit = audit
        self._reader = reader
        self._ledger = ledger
        self._templates = templates
        self._batch = batch
        self._actor = actor
        # PostgreSQL: (snapshot, id taken after it, highest record id it saw) not
        # yet known settled.
        self._pending: list[tuple[str, int, int]] = []
        self._horizon = 0

    async def catch_up(self) -> int:
        """React to every record after the cursor; the number of records read."""
        total = 0
        horizon = await self.horizon()
        while True:
            read, opened = await self._one_batch(horizon)
            if opened is not None:
                await self._reader.report(opened)  # the alarm, once the write is over
            if not read:
                return total
            total += read

    @property
    def settled(self) -> bool:
        """Whether every record seen so far is within the horizon (no snapshot waits
        for transactions still running)."""
        return not self._pending

    async def horizon(self) -> int | None:
        """The highest record id safe to react to (``None``: no bound, SQLite)."""
        async with self._sessions() as session:
            if session.get_bind().dialect.name != "postgresql":
                return None
            snapshot, mine, top = (await session.execute(_SNAPSHOT)).one()
            self._pending.append((str(snapshot), int(mine), int(top or 0)))
            await session.rollback()  # the id just taken ends here, before the checks
            waiting: list[tuple[str, int, int]] = []
            for seen, taken, highest in self._pending:
                running = await session.scalar(_RUNNING, {"snapshot": seen, "taken": taken})
                if running:
                    waiting.append((seen, taken, highest))
                else:
                    self._horizon = max(self._horizon, highest)
            # A snapshot taken later covers an earlier one; keep a bounded few.
            self._pending = waiting[-_MAX_PENDING:]
        return self._horizon

    async def _one_batch(self, horizon: int | None) -> tuple[int, Opened | None]:
        async with self._writer.transaction() as session:
            cursor = await session.get(PolicyCursor, CURSOR, with_for_update=True)
            if cursor is None:
                cursor = PolicyCursor(name=CURSOR, position=0, updated_at=self._clock.now())
                session.add(cursor)
            query = (
                select(Record)
                .where(Record.id > cursor.position)
                .where(Record.id <= horizon if horizon is not None else true())
                .order_by(Record.id)
                .limit(self._batch)
            )
            records = list(await session.scalars(query))
            if not records:
                return 0, None
            loaded = await session.run_sync(self._reader.load, records, _opens)
            opened = await asyncio.to_thread(self._reader.open, loaded)
            await self._react(session, records, opened.contents)
            cursor.position = records[-1].id
            cursor.updated_at = self._clock.now()
            await session.flush()
        return len(records), opened

    async def _react(
        self, session: AsyncSession, records: Sequence[Record], contents: dict[int, dict[str, Any]]
    ) -> None:
        consent: list[NewConsent] = []
        template_events: list[tuple[Record, dict[str, Any]]] = []
        tiers: dict[str, str] = {}
        statuses: list[Record] = []
        for record in records:
            content = contents.get(record.id)
            item = content.get("item") if content else None
            item = item if isinstance(item, dict) else {}
            if record.kind == "message" and content is not None and record.contact_id:
                consent += self._keyword(record, item)
            elif record.kind == "event" and record.item_type.startswith("preference_"):
                consent += self._preference(record, item)
            elif record.kind == "event" and record.item_type in TEMPLATE_FIELDS:
                template_events.append((record, item))
            elif record.kind == "event" and record.item_type == "phone_number_quality_update":
                limit = _str(item.get("current_limit"))
                if limit and (limit in TIERS or limit == TIERS_UNLIMITED):
                    tiers[record.account_id] = limit
            elif record.kind == "status":
                if record.status == "failed" and record.error_code == OPTED_OUT_CODE:
                    consent += self._delivery_opt_out(record, item)
                if record.status in _WEBHOOK_STATES and record.wamid_token:
                    statuses.append(record)
        outbox_consent, later = await self._outbox(session, statuses, contents)
        consent += outbox_consent
        # Consent first: the audit events are appended last, just before the commit.
        rows = await self._ledger.record_in(session, self._actor.id, consent)
        evidence = {(c.source_record_id, c.category.value): c.evidence for c in consent}
        audit_calls: list[Any] = [
            (self._ledger.audit_in, (row, evidence.get((row.source_record_id, row.category), "")))
            for row in rows
        ]
        audit_calls += later
        audit_calls += await self._template_events(session, template_events)
        audit_calls += await self._tiers(session, tiers)
        await session.flush()
        for call, args in audit_calls:
            await call(session, self._actor, *args)

    # -- consent ---------------------------------------------------------

    def _keyword(self, record: Record, item: dict[str, Any]) -> list[NewConsent]:
        text = message_text(item)
        found = keyword(text)
        if found is None or record.contact_id is None:
            return []
        action = ConsentAction(found)
        return [
            NewConsent(
                contact_id=record.contact_id,
                account_id=record.account_id,
                category=category,
                action=action,
                method=ConsentMethod.CHAT_KEYWORD,
                evidence=f"the customer replied {text.strip()[:100]!r}",
                occurred_at=record.occurred_at,
                source_record_id=record.id,
            )
            for category in KEYWORD_CATEGORIES
        ]

    def _preference(self, record: Record, item: dict[str, Any]) -> list[NewConsent]:
        if record.contact_id is None or item.get("category") != "marketing_messages":
            return []
        value = item.get("value")
        if value not in ("stop", "resume"):
            return []
        detail = _str(item.get("detail")) or ""
        return [
            NewConsent(
                contact_id=record.contact_id,
                account_id=record.account_id,
                category=Category.MARKETING,
                action=ConsentAction.OPT_OUT if value == "stop" else ConsentAction.OPT_IN,
                method=ConsentMethod.WEBHOOK,
                evidence=f"user_preferences marketing_messages {value}: {detail}"[:1000],
                occurred_at=record.occurred_at,
                source_record_id=record.id,
            )
        ]

    def _delivery_opt_out(
        self, record: Record, item: dict[str, Any], contact_id: str | None = None
    ) -> list[NewConsent]:
        contact = contact_id or record.contact_id
        if contact is None:
            return []
        error = delivery_error(item)
        title = error.title if error else ""
        return [
            NewConsent(
                contact_id=contact,
                account_id=record.account_id,
                category=Category.MARKETING,
                action=ConsentAction.OPT_OUT,
                method=ConsentMethod.DELIVERY_ERROR,
                evidence=f"failed status, error {OPTED_OUT_CODE}: {title}"[:1000],
                occurred_at=record.occurred_at,
                source_record_id=record.id,
            )
        ]

    # -- the outbox ------------------------------------------------------

    async def _outbox(
        self,
        session: AsyncSession,
        statuses: list[Record],
        contents: dict[int, dict[str, Any]],
    ) -> tuple[list[NewConsent], list[Any]]:
        """Move the outbox items these statuses report on; the opt-outs their
        failures imply, and the audit calls to make."""
        if not statuses:
            return [], []
        pairs = {(r.account_id, r.wamid_token) for r in statuses}
        query = select(OutboxItem).where(
            tuple_(OutboxItem.account_id, OutboxItem.wamid_token).in_(list(pairs))
        )
        items = {(i.account_id, i.wamid_token): i for i in await session.scalars(query)}
        consent: list[NewConsent] = []
        calls: list[Any] = []
        now = self._clock.now()
        for record in statuses:
            row = items.get((record.account_id, record.wamid_token))
            status = record.status or ""
            if row is None or not _forward(row.state, status):
                continue
            note = None
            if status == "failed":
                content = contents.get(record.id) or {}
                raw = content.get("item")
                error = delivery_error(raw)
                row.error_code = record.error_code if error is None else error.code
                row.error_title = (error.title[:200] if error else None) or row.error_title
                note = f"error {row.error_code}" if row.error_code is not None else "failed"
                action = classify(row.error_code)
                if action is ErrorAction.OPTED_OUT:
                    item = raw if isinstance(raw, dict) else {}
                    consent += self._delivery_opt_out(record, item, row.contact_id)
                elif action in (ErrorAction.TEMPLATE_PAUSED, ErrorAction.TEMPLATE_DISABLED):
                    calls += await self._pause_template(session, row, action)
            before = row.state
            row.state = status
            row.updated_at = now
            session.add(
                OutboxEvent(
                    item_id=row.id,
                    from_state=before,
                    to_state=status,
                    actor=self._actor.id,
                    at=now,
                    note=note,
                )
            )
            calls.append((self._outbox_audit, (row, before, status, note)))
        return consent, calls

    async def _outbox_audit(
        self,
        session: AsyncSession,
        actor: Actor,
        row: OutboxItem,
        before: str,
        after: str,
        note: str | None,
    ) -> None:
        await self._audit.record_in(
            session,
            actor.entry(
                f"outbox.{after}",
                target=f"outbox:{row.id}",
                scope=f"account:{row.account_id}",
                reason=f"{before} -> {after}" + (f" ({note})" if note else ""),
            ),
        )

    async def _pause_template(
        self, session: AsyncSession, item: OutboxItem, action: ErrorAction
    ) -> list[Any]:
        if item.template_id is None:
            return []
        row = await session.get(MessageTemplate, item.template_id)
        if row is None:
            return []
        status = "PAUSED" if action is ErrorAction.TEMPLATE_PAUSED else "DISABLED"
        changes = self._templates.apply_meta(row, status=status)
        why = f"outbox {item.id} failed with error {item.error_code}"
        return [(self._templates.audit_change_in, (row, change, why)) for change in changes]

    # -- templates and tiers ---------------------------------------------

    async def _template_events(
        self, session: AsyncSession, events: list[tuple[Record, dict[str, Any]]]
    ) -> list[Any]:
        calls: list[Any] = []
        wabas: dict[str, str | None] = {}
        for record, item in events:
            if record.account_id not in wabas:
                account = await session.get(Account, record.account_id)
                wabas[record.account_id] = account.waba_id if account else None
            row = await self._templates.find_in(
                session,
                meta_template_id=_str(item.get("message_template_id")),
                waba_id=wabas[record.account_id],
                name=_str(item.get("message_template_name")),
                language=_str(item.get("message_template_language")),
            )
            if row is None:
                log.info("webhook names an unknown template", record=record.id)
                continue
            if record.item_type == "message_template_status_update":
                changes = self._templates.apply_meta(row, status=_str(item.get("event")) or "")
            elif record.item_type == "message_template_quality_update":
                changes = self._templates.apply_meta(
                    row, quality=_str(item.get("new_quality_score")) or ""
                )
            else:
                changes = self._templates.apply_meta(
                    row, category=_str(item.get("new_category")) or ""
                )
            why = f"record {record.id}"
            calls += [(self._templates.audit_change_in, (row, c, why)) for c in changes]
        return calls

    async def _tiers(self, session: AsyncSession, tiers: dict[str, str]) -> list[Any]:
        calls: list[Any] = []
        for account_id, tier in tiers.items():
            state = await session.get(NumberSendState, account_id, with_for_update=True)
            if state is None:
                state = NumberSendState(account_id=account_id, backoff_level=0)
                session.add(state)
            if state.messaging_tier == tier:
                continue
            before = state.messaging_tier
            state.messaging_tier = tier
            calls.append((self._tier_audit, (account_id, before, tier)))
        return calls

    async def _tier_audit(
        self, session: AsyncSession, actor: Actor, account_id: str, before: str | None, tier: str
    ) -> None:
        await self._audit.record_in(
            session,
            actor.entry(
                "number.messaging_tier",
                target=f"account:{account_id}",
                reason=f"{before or 'none'} -> {tier}",
            ),
        )


def _forward(state: str, status: str) -> bool:
    """Whether a webhook ``status`` moves an item in ``state`` forward."""
    if state not in _RANK:
        return False  # failed, blocked, cancelled, expired, or not yet dispatched
    if status == "failed":
        return True
    return _RANK.get(status, -1) > _RANK[state]
