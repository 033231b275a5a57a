"""The webhook reactions on real databases, fed with real signed webhooks through
capture: stop and resume words, the user_preferences webhook, error 131050,
Meta's template and number updates, and outbox items moved by their statuses;
each in the batch's audited transaction, and harmless to replay."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from archiver.audit.services import Actor
from archiver.core.subjects import contact_subject
from archiver.records.models import Record
from archiver.whatsapp.items import Identity
from policy.jobs import jobs
from policy.models import (
    ConsentEntry,
    MessageTemplate,
    NumberSendState,
    OutboxEvent,
    OutboxItem,
    PolicyCursor,
)
from tests.conftest import database_bytes
from tests.integration.policy_world import (
    World,
    fixture,
    status,
    text_message,
    value_of,
    waba_event,
    world,
)
from tests.integration.test_templates import MAKER, PARAMS

__all__ = ["world"]

CUSTOMER = "447700900123"


async def _consent(world: World) -> list[tuple[str, str, str, int | None]]:
    async with world.services.sessions() as session:
        rows = await session.scalars(select(ConsentEntry).order_by(ConsentEntry.id))
        return [(r.category, r.action, r.method, r.source_record_id) for r in rows]


async def _record_id(world: World, kind: str) -> int:
    async with world.services.sessions() as session:
        query = select(Record.id).where(Record.kind == kind).order_by(Record.id.desc())
        return int((await session.scalars(query)).first() or 0)


@pytest.mark.parametrize(
    ("text", "action"),
    [("STOP", "opt_out"), ("Arrêt !", "opt_out"), ("配信停止", "opt_out"), ("start", "opt_in")],
)
async def test_a_keyword_reply_changes_consent_for_every_business_category(
    world: World, text: str, action: str
) -> None:
    await world.post(text_message("wamid.KEY1", text))
    assert await world.react() == 1
    record = await _record_id(world, "message")
    assert sorted(await _consent(world)) == [
        ("authentication", action, "chat_keyword", record),
        ("marketing", action, "chat_keyword", record),
        ("utility", action, "chat_keyword", record),
    ]
    audited = await world.audit_events("consent.record")
    assert [(e.actor, e.outcome) for e in audited] == [("system", "ok")] * 3
    stored = await database_bytes(world.database_url)
    assert CUSTOMER.encode() not in stored
    (entry, *_) = await world.ledger.entries(Actor(id="usr_officer"), None, await _contact(world))
    assert text in (entry.evidence or "")


async def _contact(world: World) -> str:
    async with world.services.sessions() as session:
        contact = await world.services.capture.resolve_contact(
            session, [Identity("wa_id", CUSTOMER)]
        )
        await session.commit()
    assert contact is not None
    return contact


@pytest.mark.parametrize(
    "text",
    ["stop sending me the wrong size", "Can I start an order?", "STOP?? why", "yes"],
)
async def test_other_messages_change_nothing(world: World, text: str) -> None:
    await world.post(text_message("wamid.NEAR", text))
    assert await world.react() == 1
    assert await _consent(world) == []


async def test_an_outbound_or_imported_stop_is_not_the_customers(world: World) -> None:
    echo = copy.deepcopy(fixture("smb_message_echo_text"))
    value_of(echo)["message_echoes"][0]["text"] = {"body": "STOP"}
    history = text_message("wamid.HIST", "STOP")
    change = history["entry"][0]["changes"][0]
    change["field"] = "history"
    message = change["value"].pop("messages")[0]
    change["value"]["history"] = [
        {"metadata": {"phase": 0}, "threads": [{"id": CUSTOMER, "messages": [message]}]}
    ]
    await world.post(echo, history)
    assert await world.react() > 0
    assert await _consent(world) == []


async def test_user_preferences_stop_and_resume_marketing(world: World) -> None:
    await world.post(fixture("user_preferences_stop"))
    await world.react()
    stop = await _record_id(world, "event")
    await world.post(fixture("user_preferences_resume"))
    await world.react()
    resume = await _record_id(world, "event")
    assert await _consent(world) == [
        ("marketing", "opt_out", "webhook", stop),
        ("marketing", "opt_in", "webhook", resume),
    ]
    async with world.services.sessions() as session:
        states = await world.ledger.latest(session, [await _contact(world)])
    (state,) = states.values()
    assert state.opted_out_how == "through the WhatsApp marketing preference"


async def test_error_131050_opts_out_of_marketing(world: World) -> None:
    await world.post(fixture("status_failed_marketing_stopped"))
    await world.react()
    record = await _record_id(world, "status")
    assert await _consent(world) == [("marketing", "opt_out", "delivery_error", record)]


async def _template(world: World, name: str = "order_confirmation", language: str = "en_US") -> int:
    row = await world.templates.create(
        MAKER,
        None,
        world.account_id,
        name=name,
        language=language,
        category="utility",
        components=[{"type": "BODY", "text": "Order {{1}} ships on {{2}}."}],
        parameters=PARAMS,
    )
    return row.id


async def _template_row(world: World, template_id: int) -> MessageTemplate:
    async with world.services.sessions() as session:
        row = await session.get(MessageTemplate, template_id)
    assert row is not None
    return row


async def test_meta_template_webhooks_update_the_template(world: World) -> None:
    template = await _template(world)
    await world.post(fixture("template_status_update"))  # names it by (WABA, name, language)
    await world.react()
    row = await _template_row(world, template)
    assert (row.meta_status, row.meta_template_id) == ("APPROVED", "1689556908129832")
    # Later ones by Meta's id alone.
    by_id = {"message_template_id": 1689556908129832}
    await world.post(
        waba_event(
            "message_template_quality_update",
            by_id | {"previous_quality_score": "GREEN", "new_quality_score": "YELLOW"},
        ),
        waba_event(
            "template_category_update",
            by_id | {"previous_category": "UTILITY", "new_category": "MARKETING"},
        ),
        waba_event("message_template_status_update", by_id | {"event": "PAUSED"}),
        waba_event(
            "message_template_status_update", {"event": "APPROVED", "message_template_id": 7}
        ),
    )
    await world.react()
    row = await _template_row(world, template)
    assert (row.meta_status, row.quality, row.category) == ("PAUSED", "YELLOW", "marketing")
    reasons = [e.reason or "" for e in await world.audit_events("template.meta_status")]
    assert [r.split(" (")[0] for r in reasons] == ["none -> APPROVED", "APPROVED -> PAUSED"]
    assert len(await world.audit_events("template.quality")) == 1
    assert len(await world.audit_events("template.category")) == 1


async def test_the_number_quality_webhook_keeps_the_messaging_tier(world: World) -> None:
    event = {"display_phone_number": "15550783881", "event": "UPGRADE", "current_limit": "TIER_10K"}
    await world.post(waba_event("phone_number_quality_update", event))
    await world.react()
    async with world.services.sessions() as session:
        state = await session.get(NumberSendState, world.account_id)
    assert state is not None
    assert state.messaging_tier == "TIER_10K"
    (audited,) = await world.audit_events("number.messaging_tier")
    assert audited.reason == "none -> TIER_10K"


async def _outbox_item(
    world: World, wamid: str, *, state: str = "sent", template_id: int | None = None
) -> str:
    contact = await _contact(world)
    item_id = "ob_" + wamid.replace(".", "_")
    now = world.clock.now()
    async with world.services.writer.transaction() as session:
        sealed = await world.services.vault.seal(
            session,
            kind="outbox",
            subject=contact_subject(contact),
            plaintext=b'{"text": "hello"}',
            retain_until=now + timedelta(days=30),
        )
        session.add(
            OutboxItem(
                id=item_id,
                account_id=world.account_id,
                source="agent",
                sender_id="usr_agent",
                idempotency_key=wamid,
                contact_id=contact,
                kind="template" if template_id else "text",
                category="marketing",
                template_id=template_id,
                content_object_id=sealed.id,
                content_digest=b"\0" * 32,
                state=state,
                created_at=now,
                updated_at=now,
                attempts=1,
                wamid_token=world.services.meta_ids.token(world.account_id, wamid),
            )
        )
    return item_id


async def _item(world: World, item_id: str) -> tuple[OutboxItem, list[tuple[str | None, str]]]:
    async with world.services.sessions() as session:
        row = await session.get(OutboxItem, item_id)
        query = select(OutboxEvent).where(OutboxEvent.item_id == item_id).order_by(OutboxEvent.id)
        moves = [(e.from_state, e.to_state) for e in await session.scalars(query)]
    assert row is not None
    return row, moves


async def test_statuses_move_an_outbox_item_forward_only(world: World) -> None:
    item = await _outbox_item(world, "wamid.OUT1")
    await world.post(status("wamid.OUT1", "delivered"), status("wamid.OUT1", "read"))
    await world.post(status("wamid.OUT1", "sent"))  # late, and behind
    await world.post(status("wamid.OTHER", "read"))  # no item of ours
    await world.react()
    row, moves = await _item(world, item)
    assert row.state == "read"
    assert moves == [("sent", "delivered"), ("delivered", "read")]
    assert [e.target for e in await world.audit_events("outbox.read")] == [f"outbox:{item}"]
    assert len(await world.audit_events("outbox.delivered")) == 1
    assert await world.audit_events("outbox.sent") == []


async def test_a_failure_keeps_its_code_and_applies_its_meaning(world: World) -> None:
    template = await _template(world)
    paused = await _outbox_item(world, "wamid.OUT2", template_id=template)
    opted = await _outbox_item(world, "wamid.OUT3", state="delivered")
    await world.post(status("wamid.OUT2", "failed", 132015), status("wamid.OUT3", "failed", 131050))
    await world.post(status("wamid.OUT3", "read"))  # failed is terminal
    await world.react()
    row, moves = await _item(world, paused)
    assert (row.state, row.error_code, row.error_title) == ("failed", 132015, "error title 132015")
    assert moves == [("sent", "failed")]
    assert (await _template_row(world, template)).meta_status == "PAUSED"
    row, moves = await _item(world, opted)
    assert (row.state, moves) == ("failed", [("delivered", "failed")])
    async with world.services.sessions() as session:
        failed = await session.scalars(
            select(OutboxEvent.note).where(OutboxEvent.to_state == "failed")
        )
        assert sorted(n or "" for n in failed) == ["error 131050", "error 132015"]
    consent = await _consent(world)
    assert [(c[0], c[1], c[2]) for c in consent] == [("marketing", "opt_out", "delivery_error")]
    assert len(await world.audit_events("outbox.failed")) == 2
    assert len(await world.audit_events("template.meta_status")) == 1


async def test_replaying_every_record_changes_nothing(world: World) -> None:
    template = await _template(world)
    item = await _outbox_item(world, "wamid.OUT4")
    await world.post(
        text_message("wamid.KEY2", "STOP"),
        fixture("user_preferences_stop"),
        fixture("status_failed_marketing_stopped"),
        fixture("template_status_update"),
        status("wamid.OUT4", "delivered"),
    )
    first = await world.react()
    before = (
        await _consent(world),
        await _item(world, item),
        (await _template_row(world, template)).meta_status,
        len(await world.audit_events("consent.record")),
    )
    async with world.services.writer.transaction() as session:
        await session.execute(update(PolicyCursor).values(position=0))
    assert await world.react() == first
    after = (
        await _consent(world),
        await _item(world, item),
        (await _template_row(world, template)).meta_status,
        len(await world.audit_events("consent.record")),
    )
    assert after[0] == before[0]
    assert len(after[0]) == 5  # 3 keyword + preference + 131050
    assert after[1][1] == before[1][1]
    assert after[2:] == before[2:]
    assert await world.react() == 0  # nothing new


async def test_a_batch_and_its_audit_events_commit_together(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.post(text_message("wamid.KEY3", "STOP"))

    async def broken(*_: Any) -> None:
        raise RuntimeError("the audit trail is down")

    monkeypatch.setattr(world.services.audit, "record_in", broken)
    with pytest.raises(RuntimeError):
        await world.reactions.catch_up()
    assert await _consent(world) == []
    async with world.services.sessions() as session:
        assert await session.get(PolicyCursor, "reactions") is None  # nothing moved
    monkeypatch.undo()
    assert await world.react() == 1
    assert len(await _consent(world)) == 3


async def test_batches_are_read_in_order_up_to_the_newest(world: World) -> None:
    world.reactions._batch = 2  # a small batch, to cross several
    await world.post(*[text_message(f"wamid.B{n}", "hi") for n in range(4)])
    await world.post(text_message("wamid.B9", "unsubscribe"))
    (job,) = jobs(world.reactions)
    assert job.singleton
    summary = await job.run()
    rest = await world.react()
    assert summary == (f"reacted to {5 - rest} records" if rest < 5 else None)
    assert await job.run() is None
    assert len(await _consent(world)) == 3
    async with world.services.sessions() as session:
        cursor = await session.get(PolicyCursor, "reactions")
    assert cursor is not None
    assert cursor.position == await _record_id(world, "message")


async def test_on_postgresql_records_wait_for_the_transactions_running_beside_them(
    world: World,
) -> None:
    """A record id is taken before its transaction commits: while a transaction
    that may hold a lower id runs, the cursor does not move past what it saw."""
    if not world.database_url.startswith("postgresql"):
        pytest.skip("SQLite has a single writer: its ids commit in order")
    await world.post(text_message("wamid.PG1", "STOP"))
    async with world.services.engine.connect() as other:
        transaction = await other.begin()
        await other.execute(text("SELECT txid_current()"))  # a writer, still running
        assert await world.reactions.catch_up() == 0
        await transaction.commit()
    assert await world.react() == 1
    assert len(await _consent(world)) == 3
