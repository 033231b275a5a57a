"""The outbox and its dispatcher on real databases: items taken in from any
source, decided against a snapshot, held for a supervisor, sent through a fake
Graph sender, archived as records with ``source=outbox``, and every Graph error
mapped back into the item's and the policy's state. Each move is a row of the
item's history and an audit event."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from archiver.audit.services import Actor
from archiver.identity.services import Role
from archiver.records.models import Record
from archiver.whatsapp.graph import GraphPermanent, GraphTransient, SentMessage
from policy.consent import ConsentLedger
from policy.decision import ContentKind, Source
from policy.dispatcher import Dispatcher
from policy.errors import IdempotencyConflict, InvalidMessage, StateConflict, UnknownTemplate
from policy.models import ConsentEntry, MessageTemplate, NumberSendState, OutboxItem, PairBackoff
from policy.outbox import MessageContent, SendRequest
from policy.snapshots import SnapshotLoader
from tests.integration.policy_world import World, status, text_message, value_of, world

__all__ = ["world"]

OPERATOR = Actor(id="cli", name="operator")
PASSWORD = "a long and unguessable test passphrase 7"
CUSTOMER = "447700900123"  # London: 09:00 local at the world's start
BODY = [{"type": "BODY", "text": "Your order {{1}} ships on {{2}}."}]
PARAMS = [{"name": "1", "type": "text"}, {"name": "2", "type": "date"}]


@dataclass
class FakeSender:
    """Answers each POST with a wamid, or with the next error queued for it."""

    errors: list[Exception] = field(default_factory=list)
    posted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    prefix: str = "OUT"

    async def send_message(
        self, phone_number_id: str, access_token: str, payload: dict[str, Any]
    ) -> SentMessage:
        self.posted.append((phone_number_id, payload))
        if self.errors:
            raise self.errors.pop(0)
        return SentMessage(wamid=f"wamid.{self.prefix}{len(self.posted)}", wa_id=payload["to"])


@dataclass
class People:
    agent: Actor
    supervisor: Actor
    second_supervisor: Actor
    outsider: Actor


async def _person(world: World, name: str, role: Role | None) -> Actor:
    user = await world.services.identity.add_user(OPERATOR, name, PASSWORD)
    if role is not None:
        await world.services.grants.grant_as_operator(OPERATOR, name, role, world.account_id)
    return Actor(id=user.id, name=name)


@pytest.fixture
async def people(world: World) -> People:
    # Granted before any admin exists, so the operator's grants apply at once.
    return People(
        agent=await _person(world, "agent.ann", Role.AGENT),
        supervisor=await _person(world, "super.sam", Role.SUPERVISOR),
        second_supervisor=await _person(world, "super.sue", Role.SUPERVISOR),
        outsider=await _person(world, "nobody.ned", None),
    )


def _dispatcher(world: World, sender: FakeSender, batch: int = 500) -> Dispatcher:
    s = world.services
    return Dispatcher(
        world.clock,
        s.sessions,
        s.writer,
        s.audit,
        s.outbox,
        SnapshotLoader(world.clock, s.consent, s.templates),
        s.accounts,
        s.capture,
        s.meta_ids,
        sender,
        s.consent,
        batch=batch,
        sleep=_no_sleep,
    )


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def _text(world: World, key: str, text: str, to: str = CUSTOMER) -> SendRequest:
    return SendRequest(
        account_id=world.account_id,
        to=to,
        content=MessageContent(kind=ContentKind.TEXT, text=text),
        idempotency_key=key,
        source=Source.AGENT,
    )


def _template(world: World, key: str, **variables: str) -> SendRequest:
    return SendRequest(
        account_id=world.account_id,
        to=CUSTOMER,
        content=MessageContent(
            kind=ContentKind.TEMPLATE,
            template="order_update",
            language="en_US",
            variables=variables or {"1": "A-1", "2": "2026-12-09"},
        ),
        idempotency_key=key,
        source=Source.CAMPAIGN,
    )


async def _approved_template(world: World, people: People, category: str = "utility") -> int:
    registry = world.services.templates
    row = await registry.create(
        people.supervisor,
        None,
        world.account_id,
        name="order_update",
        language="en_US",
        category=category,
        components=BODY,
        parameters=PARAMS,
    )
    await registry.submit(people.supervisor, None, row.id)
    await registry.approve(people.second_supervisor, None, row.id, "wording checked")
    async with world.services.writer.transaction() as session:
        template = await session.get(MessageTemplate, row.id)
        assert template is not None
        template.meta_status = "APPROVED"  # as Meta's status webhook sets it
    return row.id


async def _opt_in(world: World, category: str = "utility") -> None:
    ledger: ConsentLedger = world.services.consent
    await ledger.record(
        OPERATOR,
        world.account_id,
        category=category,
        action="opt_in",
        method="web_form",
        evidence="ticked the box on the order form",
        occurred_at=world.clock.now() - timedelta(days=1),
        phone="+" + CUSTOMER,
    )


def _inbound(world: World, wamid: str, body: str, sender: str = CUSTOMER) -> dict[str, Any]:
    """A customer's message sent now (it opens the service window)."""
    payload = text_message(wamid, body, sender)
    message = value_of(payload)["messages"][0]
    message["timestamp"] = str(int(world.clock.now().timestamp()))
    return payload


async def _open_window(world: World) -> None:
    await world.post(_inbound(world, "wamid.IN1", "Hello, where is my order?"))


async def _item(world: World, item_id: str) -> OutboxItem:
    async with world.services.sessions() as session:
        row = await session.get(OutboxItem, item_id)
    assert row is not None
    return row


async def _states(world: World, action_prefix: str = "outbox.") -> list[tuple[str, str]]:
    await world.services.audit.flush()
    from archiver.audit.models import AuditEvent

    async with world.services.sessions() as session:
        events = await session.scalars(
            select(AuditEvent).where(AuditEvent.action.like(action_prefix + "%"))
        )
        return [(e.action, e.outcome) for e in events]


# -- taking items in and deciding them ---------------------------------------


async def test_a_reply_inside_the_window_is_decided_sent_and_archived(
    world: World, people: People
) -> None:
    await _open_window(world)
    view = await world.services.outbox.submit(
        people.agent, people.agent.id, _text(world, "k1", "Your order ships today.")
    )
    assert view.state == "decided"
    assert view.decision is not None
    assert view.decision["outcome"] == "allow"
    sender = FakeSender()
    assert await _dispatcher(world, sender).dispatch_once() == 1
    assert sender.posted[0][1]["text"]["body"] == "Your order ships today."
    row = await _item(world, view.id)
    assert row.state == "sent"
    assert row.wamid_token is not None
    async with world.services.sessions() as session:
        record = await session.get(Record, row.record_id)
    assert record is not None
    assert (record.source, record.direction, record.kind) == ("outbox", "outbound", "message")
    done = await world.services.outbox.get(None, view.id)
    assert [e.to_state for e in done.events] == ["queued", "decided", "dispatching", "sent"]
    assert ("outbox.submit", "ok") in await _states(world)
    assert {("outbox.decided", "ok"), ("outbox.dispatching", "ok"), ("outbox.sent", "ok")} <= set(
        await _states(world)
    )
    # The webhook's statuses move it on, through the delivery state capture keeps.
    await world.post(status("wamid.OUT1", "delivered"), status("wamid.OUT1", "read"))
    await world.react()
    assert (await _item(world, view.id)).state == "read"


async def test_the_same_key_gives_back_the_same_item_and_a_different_message_is_refused(
    world: World, people: People
) -> None:
    outbox = world.services.outbox
    await _open_window(world)
    first = await outbox.submit(people.agent, people.agent.id, _text(world, "k1", "Hi"))
    again = await outbox.submit(people.agent, people.agent.id, _text(world, "k1", "Hi"))
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict, match="different message"):
        await outbox.submit(people.agent, people.agent.id, _text(world, "k1", "Hello"))
    assert await world.count(OutboxItem) == 1
    assert ("outbox.submit", "denied") in await _states(world)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"to": "+12"}, "phone number"),
        ({"to": "not a number"}, "international form"),
        ({"idempotency_key": ""}, "idempotency key"),
        ({"content": MessageContent(kind=ContentKind.TEXT, text="  ")}, "needs a text"),
        (
            {"content": MessageContent(kind=ContentKind.MEDIA, media_id="1")},
            "needs media_type",
        ),
    ],
)
async def test_bad_items_are_refused_with_a_clear_error_and_nothing_is_queued(
    world: World, people: People, change: dict[str, Any], message: str
) -> None:
    import msgspec

    request = msgspec.structs.replace(_text(world, "k1", "Hi"), **change)
    with pytest.raises(InvalidMessage, match=message):
        await world.services.outbox.submit(people.agent, people.agent.id, request)
    assert await world.count(OutboxItem) == 0
    assert ("outbox.submit", "denied") in await _states(world)


async def test_an_unknown_template_is_refused(world: World, people: People) -> None:
    with pytest.raises(UnknownTemplate, match="order_update"):
        await world.services.outbox.submit(people.agent, people.agent.id, _template(world, "k1"))
    assert await world.count(OutboxItem) == 0


async def test_free_form_outside_the_window_and_a_sender_without_permission_are_blocked(
    world: World, people: People
) -> None:
    view = await world.services.outbox.submit(
        people.outsider, people.outsider.id, _text(world, "k1", "Hi there")
    )
    assert view.state == "blocked"
    assert view.decision is not None
    codes = {r["code"] for r in view.decision["reasons"]}
    assert {"window.closed_free_form", "permission.not_granted"} <= codes
    assert await _dispatcher(world, FakeSender()).dispatch_once() == 0


async def test_a_template_needs_both_approvals_and_consent(world: World, people: People) -> None:
    template_id = await _approved_template(world, people)
    outbox = world.services.outbox
    blocked = await outbox.submit(people.agent, people.agent.id, _template(world, "k1"))
    assert blocked.decision is not None
    assert blocked.state == "blocked"
    assert "consent.utility_no_opt_in" in {r["code"] for r in blocked.decision["reasons"]}
    await _opt_in(world)
    allowed = await outbox.submit(people.agent, people.agent.id, _template(world, "k2"))
    assert allowed.state == "decided"
    assert allowed.template_id == template_id
    sender = FakeSender()
    await _dispatcher(world, sender).dispatch_once()
    payload = sender.posted[0][1]
    assert payload["template"]["name"] == "order_update"
    assert [p["text"] for p in payload["template"]["components"][0]["parameters"]] == [
        "A-1",
        "2026-12-09",
    ]


async def test_an_opt_out_that_arrives_before_dispatch_stops_the_send(
    world: World, people: People
) -> None:
    await _approved_template(world, people)
    await _opt_in(world)
    view = await world.services.outbox.submit(people.agent, people.agent.id, _template(world, "k1"))
    assert view.state == "decided"
    await world.post(_inbound(world, "wamid.STOP", "STOP"))
    await world.react()
    sender = FakeSender()
    assert await _dispatcher(world, sender).dispatch_once() == 0
    assert sender.posted == []
    row = await _item(world, view.id)
    assert row.state == "blocked"
    assert "consent.opted_out" in (row.decision or "")


# -- holds, approval, rejection, cancelling -----------------------------------


async def _held(world: World, people: People, key: str = "k1") -> str:
    await world.services.lexicon.add(OPERATOR, "guaranteed returns", "hold")
    await _open_window(world)
    view = await world.services.outbox.submit(
        people.supervisor,
        people.supervisor.id,
        _text(world, key, "This fund has guaranteed returns."),
    )
    assert view.state == "held"
    return view.id


async def test_a_held_item_waits_for_another_supervisor(world: World, people: People) -> None:
    item_id = await _held(world, people)
    outbox = world.services.outbox
    assert await _dispatcher(world, FakeSender()).dispatch_once() == 0
    with pytest.raises(StateConflict, match="own item"):
        await outbox.approve(people.supervisor, people.supervisor.id, item_id, "looks fine")
    assert (await _item(world, item_id)).state == "held"
    with pytest.raises(InvalidMessage, match="comment"):
        await outbox.approve(people.second_supervisor, people.second_supervisor.id, item_id, " ")
    approved = await outbox.approve(
        people.second_supervisor, people.second_supervisor.id, item_id, "approved wording"
    )
    assert (approved.state, approved.approved_by) == ("approved", people.second_supervisor.id)
    sender = FakeSender()
    assert await _dispatcher(world, sender).dispatch_once() == 1
    done = await _item(world, item_id)
    assert done.state == "sent"
    assert '"lexicon.hold"' in (done.decision or "")  # kept, marked approved
    states = await _states(world)
    assert ("outbox.approve", "denied") in states
    assert ("outbox.approved", "ok") in states


async def test_a_rejected_item_is_never_sent(world: World, people: People) -> None:
    item_id = await _held(world, people)
    rejected = await world.services.outbox.reject(
        people.second_supervisor, people.second_supervisor.id, item_id, "misleading claim"
    )
    assert rejected.state == "rejected"
    assert rejected.events[-1].note == "misleading claim"
    assert await _dispatcher(world, FakeSender()).dispatch_once() == 0
    with pytest.raises(StateConflict, match="not held"):
        await world.services.outbox.approve(
            people.second_supervisor, people.second_supervisor.id, item_id, "changed my mind"
        )


async def test_cancelling_stops_an_item_until_it_is_handed_to_graph(
    world: World, people: People
) -> None:
    await _open_window(world)
    outbox = world.services.outbox
    view = await outbox.submit(people.agent, people.agent.id, _text(world, "k1", "Hi"))
    cancelled = await outbox.cancel(people.agent, view.id)
    assert cancelled.state == "cancelled"
    assert await _dispatcher(world, FakeSender()).dispatch_once() == 0
    with pytest.raises(StateConflict, match="can no longer be cancelled"):
        await outbox.cancel(people.agent, view.id)


async def test_quiet_hours_defer_and_expiry_ends_the_wait(world: World, people: People) -> None:
    await _approved_template(world, people)
    await _opt_in(world)
    world.clock.advance(timedelta(hours=14))  # 23:00 in London
    request = _template(world, "k1")
    request = SendRequest(
        account_id=request.account_id,
        to=request.to,
        content=request.content,
        idempotency_key="k1",
        expires_at=world.clock.now() + timedelta(hours=20),
    )
    view = await world.services.outbox.submit(people.agent, people.agent.id, request)
    assert view.state == "decided"
    assert view.due_at is not None
    assert view.due_at.hour == 8  # the next 08:00 in London (UTC in December)
    assert await _dispatcher(world, FakeSender()).dispatch_once() == 0
    world.clock.advance(timedelta(hours=9, minutes=1))
    assert await _dispatcher(world, FakeSender()).dispatch_once() == 1
    late = await world.services.outbox.submit(
        people.agent,
        people.agent.id,
        SendRequest(
            account_id=world.account_id,
            to=CUSTOMER,
            content=_template(world, "k2", **{"1": "A-2", "2": "2026-12-10"}).content,
            idempotency_key="k2",
            expires_at=world.clock.now() + timedelta(minutes=5),
            send_at=world.clock.now() + timedelta(minutes=1),
        ),
    )
    assert late.state == "decided"
    world.clock.advance(timedelta(minutes=10))
    assert await world.services.outbox.expire_stale() == 1
    assert (await _item(world, late.id)).state == "expired"


# -- Graph's errors, mapped back --------------------------------------------------


def _refused(code: int, *, transient: bool = False, maybe_processed: bool = False) -> Exception:
    text = f"Graph API 400 (code {code}): test"
    if transient:
        return GraphTransient(text, status=400, code=code, maybe_processed=maybe_processed)
    return GraphPermanent(text, status=400, code=code)


async def _send_one(world: World, people: People, error: Exception, key: str = "k1") -> str:
    await _open_window(world)
    view = await world.services.outbox.submit(
        people.agent, people.agent.id, _text(world, key, "Your parcel is on its way.")
    )
    await _dispatcher(world, FakeSender([error])).dispatch_once()
    return view.id


async def test_window_closed_fails_and_corrects_the_window(world: World, people: People) -> None:
    row = await _item(world, await _send_one(world, people, _refused(131047)))
    assert (row.state, row.error_code) == ("failed", 131047)
    again = await world.services.outbox.submit(
        people.agent, people.agent.id, _text(world, "k2", "Still there?")
    )
    assert again.state == "blocked"  # the inbound message no longer opens the window
    assert again.decision is not None
    assert "window.closed_free_form" in {r["code"] for r in again.decision["reasons"]}
    world.clock.advance(timedelta(seconds=5))
    await world.post(_inbound(world, "wamid.IN2", "Yes, I am here"))
    reopened = await world.services.outbox.submit(
        people.agent, people.agent.id, _text(world, "k3", "Great, thanks.")
    )
    assert reopened.state == "decided"  # a new message opens it again


@pytest.mark.parametrize("code", [131047, 131026, 130403, 132001, 999999])
async def test_errors_that_fail_the_item_keep_its_code(
    world: World, people: People, code: int
) -> None:
    row = await _item(world, await _send_one(world, people, _refused(code)))
    assert (row.state, row.error_code) == ("failed", code)
    assert row.sent_at is None


async def test_a_throughput_error_backs_the_number_off_and_retries(
    world: World, people: People
) -> None:
    item_id = await _send_one(world, people, _refused(130429, transient=True))
    row = await _item(world, item_id)
    assert row.state == "decided"
    async with world.services.sessions() as session:
        state = await session.get(NumberSendState, world.account_id)
    assert state is not None
    assert state.backoff_until is not None
    assert state.backoff_until > world.clock.now()
    assert await _dispatcher(world, FakeSender()).dispatch_once() == 0  # backing off
    world.clock.advance(timedelta(seconds=5))
    assert await _dispatcher(world, FakeSender()).dispatch_once() == 1


async def test_a_pair_rate_error_backs_off_that_recipient_by_four_to_the_n(
    world: World, people: People
) -> None:
    item_id = await _send_one(world, people, _refused(131056, transient=True))
    async with world.services.sessions() as session:
        backoff = await session.scalar(select(PairBackoff))
    assert backoff is not None
    assert backoff.level == 1
    wait = (backoff.until - world.clock.now()).total_seconds()
    assert 2 <= wait <= 4
    assert (await _item(world, item_id)).state == "decided"


async def test_the_marketing_limit_defers_by_a_day(world: World, people: People) -> None:
    item_id = await _send_one(world, people, _refused(131049, transient=True))
    row = await _item(world, item_id)
    assert row.state == "decided"
    assert row.due_at is not None
    assert row.due_at - world.clock.now() >= timedelta(hours=24)


async def test_131050_records_the_opt_out_then_fails(world: World, people: People) -> None:
    row = await _item(world, await _send_one(world, people, _refused(131050)))
    assert row.state == "failed"
    async with world.services.sessions() as session:
        entry = await session.scalar(select(ConsentEntry))
    assert entry is not None
    assert (entry.category, entry.action, entry.method) == (
        "marketing",
        "opt_out",
        "delivery_error",
    )


async def test_a_paused_template_stops_further_sends_of_it(world: World, people: People) -> None:
    template_id = await _approved_template(world, people)
    await _opt_in(world)
    outbox = world.services.outbox
    first = await outbox.submit(people.agent, people.agent.id, _template(world, "k1"))
    await _dispatcher(world, FakeSender([_refused(132015)])).dispatch_once()
    assert (await _item(world, first.id)).state == "failed"
    async with world.services.sessions() as session:
        template = await session.get(MessageTemplate, template_id)
    assert template is not None
    assert template.meta_status == "PAUSED"
    second = await outbox.submit(people.agent, people.agent.id, _template(world, "k2"))
    assert second.state == "blocked"
    assert second.decision is not None
    assert "template.not_approved_by_meta" in {r["code"] for r in second.decision["reasons"]}


async def test_a_restricted_number_stops_all_sending_and_alerts(
    world: World, people: People
) -> None:
    await _send_one(world, people, _refused(368))
    assert ("outbox.number_stopped", "ok") in await _states(world)
    view = await world.services.outbox.submit(
        people.agent, people.agent.id, _text(world, "k2", "Anything else?")
    )
    assert view.decision is not None
    assert "number.stopped" in {r["code"] for r in view.decision["reasons"]}
    assert await _dispatcher(world, FakeSender()).dispatch_once() == 0


async def test_a_post_graph_may_have_acted_on_is_never_sent_again(
    world: World, people: People
) -> None:
    error = GraphTransient("Graph API 500 (code 131000)", status=500, code=131000)
    item_id = await _send_one(world, people, error)
    row = await _item(world, item_id)
    assert row.state == "failed"
    sender = FakeSender()
    world.clock.advance(timedelta(hours=1))
    assert await _dispatcher(world, sender).dispatch_once() == 0
    assert sender.posted == []


async def test_service_trouble_before_graph_acted_is_retried(world: World, people: People) -> None:
    item_id = await _send_one(world, people, _refused(4, transient=True))
    assert (await _item(world, item_id)).state == "decided"
    world.clock.advance(timedelta(seconds=10))
    assert await _dispatcher(world, FakeSender()).dispatch_once() == 1
    assert (await _item(world, item_id)).state == "sent"


# -- concurrency ---------------------------------------------------------------------


async def test_two_dispatchers_never_send_one_item_twice(
    world: World, people: People, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: the write gate serialises dispatchers")
    outbox = world.services.outbox
    numbers = [f"4477009{n:05d}" for n in range(30)]
    await world.post(*(_inbound(world, f"wamid.IN{n}", "hi", sender=n) for n in numbers))
    for n, number in enumerate(numbers):
        await outbox.submit(
            people.agent, people.agent.id, _text(world, f"k{n}", f"Message {n}", to=number)
        )
    first, second = FakeSender(prefix="A"), FakeSender(prefix="B")
    a, b = _dispatcher(world, first, batch=4), _dispatcher(world, second, batch=4)
    per_second = []
    for _ in range(6):  # a new number sends 10 a second while it warms up
        before = len(first.posted) + len(second.posted)
        while sum(await asyncio.gather(a.dispatch_once(), b.dispatch_once())):
            pass
        per_second.append(len(first.posted) + len(second.posted) - before)
        world.clock.advance(timedelta(seconds=1))
    sent = [p["to"] for _, p in first.posted + second.posted]
    assert sorted(sent) == numbers  # each once, whichever dispatcher took it
    assert first.posted
    assert second.posted
    assert max(per_second) == 10  # the number's rate held across both dispatchers
    async with world.services.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(OutboxItem).where(OutboxItem.state == "sent")
        )
    assert count == len(numbers)
