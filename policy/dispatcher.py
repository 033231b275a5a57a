"""The dispatcher: sends the outbox's due items through the one Graph API client.

One round (:meth:`Dispatcher.dispatch_once`):

1. **Claim.** In one transaction, take the due items (``FOR UPDATE SKIP LOCKED``
   on PostgreSQL, the write gate on SQLite), decide each again against a fresh
   snapshot (an opt-out or a lexicon change since the first decision counts),
   and move the allowed ones to ``dispatching``. Their ``sent_at`` is set at
   once, so that the rate rules of any other dispatcher count them.
2. **Send.** POST each, with no transaction open, paced per business number at
   its rate. A POST that Graph may have acted on is never sent again: the
   client retries a POST only when Graph certainly did not act.
3. **Finish.** In one transaction, mark each sent (linked to its wamid and
   archived as a record with ``source=outbox``) or map its error back into the
   item's and the policy's state (``policy.graph_errors``).

An item left in ``dispatching`` by a crash is not resent: Graph may have it. It
is reported by :meth:`Dispatcher.stranded` for a person to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import msgspec
import structlog
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.accounts.services import AccountService
from archiver.audit.services import SYSTEM, AuditEntry, AuditLog
from archiver.core.clock import Clock
from archiver.core.db import Writer, advisory_lock_key
from archiver.search.blind_index import MetaIdIndex
from archiver.whatsapp.graph import GraphError, GraphTransient
from archiver.whatsapp.items import Item, outbound_item
from policy.consent import ConsentAction, ConsentLedger, ConsentMethod, NewConsent
from policy.decision import Category, ContentKind, Outcome
from policy.graph_errors import TERMINAL, ErrorAction, classify
from policy.models import (
    MessageTemplate,
    NumberSendState,
    OutboxItem,
    PairBackoff,
    WindowClosure,
)
from policy.outbox import (
    WAITING,
    MessageContent,
    Opened,
    Outbox,
    claim_rows,
    decision_note,
    interactive_text,
    write_in_bulk,
)
from policy.rules import decide, note_allowed
from policy.snapshots import SnapshotLoader

log = structlog.get_logger(__name__)
_jitter = random.SystemRandom()

# Backoffs after Graph's own rate errors. Meta suggests retrying a pair after 4**n s.
PAIR_BACKOFF_BASE = 4.0
NUMBER_BACKOFF_BASE = 1.0
MAX_BACKOFF = timedelta(hours=1)
MARKETING_LIMIT_DEFER = timedelta(hours=24)
MAX_ATTEMPTS = 8
# Added to the second in which a number may start at most its rate of POSTs: the
# time Graph takes to answer varies, and Graph counts when it receives them.
PACE_MARGIN_SECONDS = 0.02
# How soon a dispatcher with batches on their way claims again when nothing was due.
PIPELINE_POLL_SECONDS = 0.05


class MessageSender(Protocol):
    """Posts one message to Graph and returns its wamid (``GraphClient.send_message``)."""

    async def send_message(
        self, phone_number_id: str, access_token: str, payload: dict[str, Any]
    ) -> Any: ...


class Archive(Protocol):
    """Seals items outside any transaction, then records them in one (the capture's)."""

    async def seal_items(self, items: Sequence[tuple[str, str | None, Item]]) -> list[Any]: ...

    async def record_sealed(
        self,
        session: AsyncSession,
        items: Sequence[tuple[str, str | None, Item]],
        objects: Sequence[Any],
        *,
        received_at: datetime,
    ) -> list[Any]: ...


@dataclass(slots=True)
class _Send:
    """One item on its way: what to post, and what came of it."""

    opened: Opened
    payload: dict[str, Any]
    text: str
    posted_at: datetime | None = None
    wamid: str | None = None
    error: GraphError | None = None


class Dispatcher:
    """Sends due outbox items; see the module docstring for one round."""

    def __init__(
        self,
        clock: Clock,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        audit: AuditLog,
        outbox: Outbox,
        snapshots: SnapshotLoader,
        accounts: AccountService,
        archive: Archive,
        meta_ids: MetaIdIndex,
        graph: MessageSender,
        consent: ConsentLedger,
        *,
        batch: int = 500,
        concurrency: int = 16,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._clock = clock
        self._sessions = sessions
        self._writer = writer
        self._audit = audit
        self._outbox = outbox
        self._snapshots = snapshots
        self._accounts = accounts
        self._archive = archive
        self._meta_ids = meta_ids
        self._graph = graph
        self._consent = consent
        self._batch = batch
        self._concurrency = concurrency
        self._sleep = sleep
        self._monotonic = monotonic or time.monotonic
        self._next_slot: dict[str, float] = {}
        self._finishing = asyncio.Lock()
        self._starts: dict[str, deque[float]] = {}

    async def run(
        self,
        stop: asyncio.Event,
        *,
        idle_seconds: float = 0.5,
        before_round: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Until ``stop``: react to what was captured (``before_round``: the webhook
        reactions, so that an opt-out counts before the next send), decide the
        queued items, and send the due ones; rest ``idle_seconds`` when idle.

        Rounds overlap: a claimed batch is posted and finished in a task of its
        own while the next is claimed, so that one round's finish (and the wait
        for the rate rules to admit more) does not leave the numbers idle. The
        pacing slots carry over from batch to batch, so a number's POSTs stay
        spaced at its rate however the batches overlap.
        """
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                busy = 0
                try:
                    if before_round is not None:
                        await before_round()
                    busy += await self._outbox.decide_queued()
                    busy += await self._outbox.expire_stale()
                    sends, rates = await self._claim()
                    if sends:
                        busy += len(sends)
                        task = asyncio.create_task(self._round(sends, rates))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                except Exception:  # the loop outlives one bad round; the next retries
                    log.exception("dispatch round failed")
                if not busy:
                    # While batches are on their way, look again soon: the rate rules
                    # admit the next items as the last second's sends age out.
                    rest = min(idle_seconds, PIPELINE_POLL_SECONDS) if in_flight else idle_seconds
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), rest)
        finally:
            await asyncio.gather(*in_flight)

    async def dispatch_once(self) -> int:
        """Claim, send and finish one batch of due items; return how many were posted."""
        sends, rates = await self._claim()
        if not sends:
            return 0
        await self._post_and_finish(sends, rates)
        return sum(1 for s in sends if s.posted_at is not None)

    async def _post_and_finish(self, sends: list[_Send], rates: dict[str, int]) -> None:
        await self._post_all(sends, rates)
        # One finish at a time: each may create a number's send state row.
        async with self._finishing:
            await self._finish(sends)

    async def _round(self, sends: list[_Send], rates: dict[str, int]) -> None:
        try:
            await self._post_and_finish(sends, rates)
        except Exception:  # items left dispatching are reported by ``stranded``
            log.exception("dispatch round failed")

    # -- claim -----------------------------------------------------------------

    async def _claim(self) -> tuple[list[_Send], dict[str, int]]:
        now = self._clock.now()
        async with self._writer.transaction() as session:
            rows = list(
                await session.scalars(
                    claim_rows(
                        select(OutboxItem)
                        .where(OutboxItem.state.in_(WAITING), OutboxItem.due_at <= now)
                        .order_by(OutboxItem.due_at, OutboxItem.created_at)
                        .limit(self._batch),
                        session,
                    )
                )
            )
            if not rows:
                return [], {}
            await _serialise_numbers(session, {row.account_id for row in rows})
            opened = await self._outbox.open_items(session, rows)
            snapshot = await self._snapshots.load(session, [o.draft for o in opened])
            templates = await self._templates(session, rows)
            entries: list[AuditEntry] = []
            sends: list[_Send] = []
            for item in opened:
                decision = decide(item.draft, snapshot)
                if decision.outcome is not Outcome.ALLOW:
                    entry = self._outbox.record_decision(session, item.row, decision, SYSTEM)
                else:
                    note_allowed(item.draft, snapshot, now)
                    item.row.decision = msgspec.json.encode(decision.as_dict()).decode()
                    item.row.sent_at = now
                    item.row.attempts += 1
                    entry = self._outbox.move(
                        session, item.row, "dispatching", SYSTEM, decision_note(decision)
                    )
                    payload, text = build_payload(
                        item.sealed.to,
                        item.sealed.content,
                        templates.get(item.row.template_id or 0),
                    )
                    sends.append(_Send(item, payload, text))
                if entry is not None:
                    entries.append(entry)
            await write_in_bulk(session, rows)
            await self._audit.record_all_in(session, entries)
            rates = {
                account_id: snapshot.settings_for(account_id).messages_per_second
                for account_id in {s.opened.row.account_id for s in sends}
            }
        return sends, rates

    async def _templates(
        self, session: AsyncSession, rows: Sequence[OutboxItem]
    ) -> dict[int, MessageTemplate]:
        ids = {r.template_id for r in rows if r.template_id is not None}
        if not ids:
            return {}
        found = await session.scalars(select(MessageTemplate).where(MessageTemplate.id.in_(ids)))
        return {t.id: t for t in found}

    # -- send ------------------------------------------------------------------

    async def _post_all(self, sends: list[_Send], rates: dict[str, int]) -> None:
        async with self._sessions() as session:
            secrets = {s.account_id: s for s in await self._accounts.secrets(session)}
        by_number: dict[str, list[_Send]] = defaultdict(list)
        for send in sends:
            by_number[send.opened.row.account_id].append(send)
        gate = asyncio.Semaphore(self._concurrency)

        async def post(send: _Send, at: float, rate: int) -> None:
            account_id = send.opened.row.account_id
            account = secrets[account_id]
            # Wait for the slot before taking a connection: a POST sleeping on the
            # gate would hold back other numbers' POSTs past their slots, and late
            # POSTs go out together.
            delay = at - self._monotonic()
            if delay > 0:
                await self._sleep(delay)
            async with gate:
                await self._turn(account_id, rate)
                send.posted_at = self._clock.now()
                try:
                    sent = await self._graph.send_message(
                        account.phone_number_id, account.access_token or "", send.payload
                    )
                    send.wamid = sent.wamid
                except GraphError as exc:
                    send.error = exc

        tasks = []
        for account_id, queue in by_number.items():
            # Paced per number at its rate; ``_turn`` then makes sure that no
            # second holds more than the rate, whatever delayed the POSTs.
            rate = max(rates.get(account_id, 1), 1)
            spacing = 1.0 / rate
            slot = max(self._next_slot.get(account_id, 0.0), self._monotonic())
            for send in queue:
                tasks.append(post(send, slot, rate))
                slot += spacing
            self._next_slot[account_id] = slot
        await asyncio.gather(*tasks)

    async def _turn(self, account_id: str, rate: int) -> None:
        """Wait until fewer than ``rate`` POSTs of this number started within the
        last second (and a margin for the answers' jitter), then count this one."""
        starts = self._starts.get(account_id)
        if starts is None or starts.maxlen != rate:
            starts = self._starts[account_id] = deque(starts or (), maxlen=rate)
        while len(starts) == rate:
            wait = starts[0] + 1.0 + PACE_MARGIN_SECONDS - self._monotonic()
            if wait <= 0:
                break
            await self._sleep(wait)
        starts.append(self._monotonic())

    # -- finish ----------------------------------------------------------------

    async def _finish(self, sends: list[_Send]) -> None:
        # The archived records' objects are sealed (and fsynced) before the write
        # transaction, which then only records them: claims wait for no fsync.
        delivered = [s for s in sends if s.wamid is not None]
        items = [
            (s.opened.row.account_id, s.opened.row.contact_id, self._archived(s)) for s in delivered
        ]
        objects = await self._archive.seal_items(items) if items else []
        async with self._writer.transaction() as session:
            ids = [s.opened.row.id for s in sends]
            rows = {
                r.id: r
                for r in await session.scalars(select(OutboxItem).where(OutboxItem.id.in_(ids)))
            }
            entries: list[AuditEntry | None] = []
            for send in sends:
                if send.wamid is None:
                    entries.extend(await self._failed(session, rows[send.opened.row.id], send))
            if items:
                records = await self._archive.record_sealed(
                    session, items, objects, received_at=self._clock.now()
                )
                first: dict[str, datetime] = {}
                for send, record in zip(delivered, records, strict=True):
                    row = rows[send.opened.row.id]
                    assert send.wamid is not None
                    assert send.posted_at is not None
                    row.sent_at = send.posted_at
                    row.wamid_token = self._meta_ids.token(row.account_id, send.wamid)
                    row.record_id = record.id
                    first.setdefault(row.account_id, send.posted_at)
                    entries.append(self._outbox.move(session, row, "sent", SYSTEM))
                for account_id, at in first.items():
                    await self._first_send(session, account_id, at)
            await self._audit.record_all_in(session, [e for e in entries if e is not None])

    def _archived(self, send: _Send) -> Item:
        """The record of a sent message: the payload as posted, with its item and decision."""
        assert send.wamid is not None
        assert send.posted_at is not None
        row = send.opened.row
        return outbound_item(
            payload=send.payload,
            wamid=send.wamid,
            phone_number_id=row.account_id,
            recipient=send.opened.sealed.to,
            text=send.text,
            sent_at=send.posted_at,
            outbox={"item_id": row.id, "decision": row.decision},
        )

    async def _first_send(self, session: AsyncSession, account_id: str, at: Any) -> None:
        """Note a number's first send (its warm-up counts from it); another
        dispatcher finishing at the same moment may note it first."""
        dialect = session.get_bind().dialect.name
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        await session.execute(
            insert(NumberSendState)
            .values(account_id=account_id, first_send_at=at, backoff_level=0)
            .on_conflict_do_nothing(index_elements=["account_id"])
        )
        await session.execute(
            update(NumberSendState)
            .where(
                NumberSendState.account_id == account_id,
                NumberSendState.first_send_at.is_(None),
            )
            .values(first_send_at=at)
        )

    async def _failed(
        self, session: AsyncSession, row: OutboxItem, send: _Send
    ) -> list[AuditEntry]:
        """Map a send's error back into the item's and the policy's state."""
        error = send.error
        assert error is not None
        now = self._clock.now()
        code = error.code
        action = classify(code)
        row.error_code = code
        row.error_title = str(error)[:200]
        maybe_sent = isinstance(error, GraphTransient) and error.maybe_processed
        notes = f"Graph error {code}: {action.value}"
        entries: list[AuditEntry | None] = []
        if maybe_sent and action not in TERMINAL:
            # Graph may have acted on it: never posted again, left for a person.
            entries.append(
                self._outbox.move(session, row, "failed", SYSTEM, notes + ", may be sent")
            )
            return [e for e in entries if e is not None]
        row.sent_at = None  # it did not leave: it does not count against the rates
        if action is ErrorAction.BACKOFF_NUMBER or action is ErrorAction.RETRY:
            state = await self._number_state(session, row.account_id)
            state.backoff_level = min(state.backoff_level + 1, 12)
            until = now + _backoff(NUMBER_BACKOFF_BASE, state.backoff_level, error.retry_after)
            state.backoff_until = until
            entries.append(self._retry(session, row, until, notes))
        elif action is ErrorAction.BACKOFF_PAIR:
            backoff = await session.get(PairBackoff, (row.account_id, row.contact_id))
            level = (backoff.level if backoff else 0) + 1
            until = now + _backoff(PAIR_BACKOFF_BASE, level, error.retry_after, power=4.0)
            if backoff is None:
                session.add(
                    PairBackoff(
                        account_id=row.account_id,
                        contact_id=row.contact_id,
                        until=until,
                        level=level,
                    )
                )
            else:
                backoff.until, backoff.level = until, level
            entries.append(self._retry(session, row, until, notes))
        elif action is ErrorAction.MARKETING_LIMIT:
            entries.append(self._retry(session, row, now + MARKETING_LIMIT_DEFER, notes))
        else:
            entries.extend(await self._terminal(session, row, action, notes))
        return [e for e in entries if e is not None]

    def _retry(
        self, session: AsyncSession, row: OutboxItem, until: datetime, note: str
    ) -> AuditEntry | None:
        if row.attempts >= MAX_ATTEMPTS:
            return self._outbox.move(session, row, "failed", SYSTEM, note + ", too many attempts")
        if row.expires_at is not None and until > row.expires_at:
            return self._outbox.move(session, row, "expired", SYSTEM, note + ", past its expiry")
        row.due_at = until
        to_state = "approved" if row.approved_by else "decided"
        return self._outbox.move(session, row, to_state, SYSTEM, note + f", retried at {until}")

    async def _terminal(
        self, session: AsyncSession, row: OutboxItem, action: ErrorAction, note: str
    ) -> list[AuditEntry | None]:
        entries: list[AuditEntry | None] = []
        if action is ErrorAction.NUMBER_RESTRICTED:
            state = await self._number_state(session, row.account_id)
            if state.stopped_reason is None:
                state.stopped_reason = f"Graph error {row.error_code}"
                state.stopped_at = self._clock.now()
                # The alert: an audited event admins are shown, and a log line.
                entries.append(
                    SYSTEM.entry(
                        "outbox.number_stopped",
                        target=f"account:{row.account_id}",
                        scope=row.account_id,
                        reason=state.stopped_reason,
                    )
                )
                log.error(
                    "sending stopped for a business number",
                    account_id=row.account_id,
                    code=row.error_code,
                )
        elif action is ErrorAction.WINDOW_CLOSED:
            await self._close_window(session, row)
        elif action is ErrorAction.OPTED_OUT:
            rows = await self._consent.record_in(
                session,
                SYSTEM.id,
                [
                    NewConsent(
                        contact_id=row.contact_id,
                        account_id=row.account_id,
                        category=Category.MARKETING,
                        action=ConsentAction.OPT_OUT,
                        method=ConsentMethod.DELIVERY_ERROR,
                        evidence=f"send refused, error {row.error_code}: {row.error_title}",
                        occurred_at=self._clock.now(),
                    )
                ],
            )
            for entry in rows:
                await self._consent.audit_in(session, SYSTEM, entry, "send refused with 131050")
        elif action in (ErrorAction.TEMPLATE_PAUSED, ErrorAction.TEMPLATE_DISABLED) and (
            template := await session.get(MessageTemplate, row.template_id or 0)
        ):
            status = "PAUSED" if action is ErrorAction.TEMPLATE_PAUSED else "DISABLED"
            template.meta_status = status
            template.updated_at = self._clock.now()
            entries.append(
                SYSTEM.entry(
                    "template.meta_status",
                    target=f"template:{template.id}",
                    scope=row.account_id,
                    details={"status": status, "from": "send error"},
                )
            )
        entries.append(self._outbox.move(session, row, "failed", SYSTEM, note))
        return entries

    async def _close_window(self, session: AsyncSession, row: OutboxItem) -> None:
        """Correct the window Meta says is closed: what came in until now no longer opens it."""
        now = self._clock.now()
        closure = await session.get(WindowClosure, (row.account_id, row.contact_id))
        if closure is None:
            session.add(
                WindowClosure(account_id=row.account_id, contact_id=row.contact_id, closed_at=now)
            )
        else:
            closure.closed_at = now

    async def _number_state(self, session: AsyncSession, account_id: str) -> NumberSendState:
        state = await session.get(NumberSendState, account_id, with_for_update=True)
        if state is None:
            state = NumberSendState(account_id=account_id, backoff_level=0)
            session.add(state)
        return state

    async def stranded(self, older_than: timedelta = timedelta(minutes=10)) -> list[str]:
        """Items still ``dispatching`` long after their claim: a crash between the
        POST and its record. They are never resent automatically."""
        since = self._clock.now() - older_than
        async with self._sessions() as session:
            return list(
                await session.scalars(
                    select(OutboxItem.id).where(
                        OutboxItem.state == "dispatching", OutboxItem.updated_at < since
                    )
                )
            )


async def _serialise_numbers(session: AsyncSession, account_ids: set[str]) -> None:
    """On PostgreSQL, one claim at a time per business number, so that a claim's
    snapshot sees the sends another dispatcher just claimed (its rate rules count
    them). Locks are taken in one order; SQLite's write gate already serialises."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for account_id in sorted(account_ids):
        key = advisory_lock_key(f"outbox-number:{account_id}")
        await session.execute(select(func.pg_advisory_xact_lock(key)))


def _backoff(
    base: float, level: int, retry_after: float | None, *, power: float = 2.0
) -> timedelta:
    """Exponential backoff with jitter (half fixed, half random), at least what
    Graph asked for."""
    delay = base * power ** (level - 1)
    delay = delay / 2 + _jitter.uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(timedelta(seconds=delay), MAX_BACKOFF)


def build_payload(
    to: str, content: MessageContent, template: MessageTemplate | None = None
) -> tuple[dict[str, Any], str]:
    """The Graph ``messages`` body for ``content`` to ``to``, and the text the
    customer reads (for the archive's search)."""
    base: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
    }
    if content.kind is ContentKind.TEXT:
        return {**base, "type": "text", "text": {"body": content.text, "preview_url": False}}, (
            content.text
        )
    if content.kind is ContentKind.MEDIA:
        assert content.media_type is not None
        media: dict[str, Any] = {"id": content.media_id}
        if content.text and content.media_type != "audio" and content.media_type != "sticker":
            media["caption"] = content.text
        return {**base, "type": content.media_type, content.media_type: media}, content.text
    if content.kind is ContentKind.INTERACTIVE:
        assert content.interactive is not None
        return {**base, "type": "interactive", "interactive": content.interactive}, (
            interactive_text(content.interactive)
        )
    parameters = msgspec.json.decode(template.parameters) if template else []
    names = [p["name"] for p in parameters] or sorted(content.variables)
    body_parameters = []
    for name in names:
        parameter: dict[str, Any] = {"type": "text", "text": content.variables.get(name, "")}
        if not name.isdigit():
            parameter["parameter_name"] = name
        body_parameters.append(parameter)
    payload = {
        **base,
        "type": "template",
        "template": {
            "name": content.template,
            "language": {"code": content.language},
            "components": [{"type": "body", "parameters": body_parameters}] if names else [],
        },
    }
    return payload, render_template(template, content.variables) if template else ""


def render_template(template: MessageTemplate, variables: dict[str, str]) -> str:
    """A template's texts with its variables filled in, as the customer reads them."""
    components = msgspec.json.decode(template.components)
    texts = []
    for component in components if isinstance(components, list) else []:
        text = component.get("text") if isinstance(component, dict) else None
        if isinstance(text, str):
            for name, value in variables.items():
                text = text.replace("{{" + name + "}}", value)
            texts.append(text)
    return "\n".join(texts)
