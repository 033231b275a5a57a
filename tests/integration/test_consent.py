"""The consent ledger on real databases: entries sealed whole under the contact's
key, found by phone through capture's contacts, audited in their transaction,
refusals recorded as denied, reads scoped to the caller's accounts, and the
batch read the send rules use."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from archiver.audit.services import Actor
from archiver.records.models import Contact, Record
from policy.consent import ConsentLedger
from policy.decision import Category, ConsentState
from policy.errors import ConsentAlreadyRecorded, ContactNotFound, InvalidConsent
from policy.models import ConsentEntry
from tests.conftest import database_bytes
from tests.integration.policy_world import START, World, text_message, world

__all__ = ["world"]

OFFICER = Actor(id="usr_officer", name="olivia")
PHONE = "+44 7700 900123"
EVIDENCE = "signed paper form no. 4471, Oliver Hughes, Leeds branch"


async def _record(world: World, **kwargs: Any) -> ConsentEntry:
    values: dict[str, Any] = {
        "category": "marketing",
        "action": "opt_in",
        "method": "web_form",
        "evidence": EVIDENCE,
        "occurred_at": START,
        "phone": PHONE,
    }
    values.update(kwargs)
    account = values.pop("account_id", world.account_id)
    return await world.ledger.record(OFFICER, account, **values)


async def test_an_entry_is_sealed_whole_and_the_row_holds_nothing_personal(world: World) -> None:
    row = await _record(world)
    same = await _record(world, phone="447700900123", action="opt_out", method="agent_attestation")
    assert same.contact_id == row.contact_id  # two spellings of one number, one contact
    assert (row.category, row.action, row.method, row.recorded_by) == (
        "marketing",
        "opt_in",
        "web_form",
        OFFICER.id,
    )
    views = await world.ledger.entries(OFFICER, None, row.contact_id)
    assert [(v.action, v.evidence, v.how) for v in views] == [
        ("opt_in", EVIDENCE, "by web form"),
        ("opt_out", EVIDENCE, "as attested by an agent"),
    ]
    exported = await world.ledger.export(OFFICER, None, row.contact_id)
    assert exported[0]["evidence"] == EVIDENCE
    assert exported[0]["occurred_at"] == START.isoformat()
    stored = await database_bytes(world.database_url)
    for secret in (b"447700900123", b"7700 900123", EVIDENCE.encode(), b"Oliver Hughes"):
        assert secret not in stored
    assert [e.action for e in await world.audit_events("consent.read")] == ["consent.read"]
    assert len(await world.audit_events("consent.export")) == 1


async def test_each_entry_is_audited_in_its_own_transaction(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = await _record(world)
    (audited,) = await world.audit_events("consent.record")
    assert (audited.outcome, audited.target, audited.actor) == (
        "ok",
        f"contact:{row.contact_id} category:marketing",
        OFFICER.id,
    )
    details = await world.services.audit.open_details(audited)
    assert details is not None
    assert details["evidence"] == EVIDENCE
    assert EVIDENCE not in (audited.reason or "")

    async def broken(*_: Any) -> None:
        raise RuntimeError("the audit trail is down")

    monkeypatch.setattr(world.services.audit, "record_in", broken)
    with pytest.raises(RuntimeError):
        await _record(world, phone="+33 6 12 34 56 78")
    assert await world.count(ConsentEntry) == 1  # the entry went with its event
    assert await world.count(Contact) == 1


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"phone": "12"}, InvalidConsent, "not a phone number"),
        ({"phone": "+999 123456789"}, InvalidConsent, "not a phone number"),
        ({"category": "newsletters"}, InvalidConsent, "unknown category 'newsletters'"),
        ({"action": "maybe"}, InvalidConsent, "unknown action"),
        ({"method": "telepathy"}, InvalidConsent, "unknown method"),
        ({"evidence": "  "}, InvalidConsent, "evidence is empty"),
        ({"account_id": "acc_nope"}, InvalidConsent, "no account"),
        ({"phone": None, "contact_id": "ct_nobody"}, ContactNotFound, "no contact"),
        ({"phone": None}, InvalidConsent, "either a phone number or a contact id"),
    ],
)
async def test_refusals_are_audited_as_denied_and_change_nothing(
    world: World, change: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await _record(world, **change)
    assert await world.count(ConsentEntry) == 0
    assert await world.count(Contact) == 0  # a refused number leaves no contact behind
    (denied,) = await world.audit_events("consent.record")
    assert denied.outcome == "denied"
    assert denied.reason
    assert b"900123" not in await database_bytes(world.database_url)


async def test_a_source_record_gives_a_categorys_consent_once(world: World) -> None:
    await world.post(text_message("wamid.A", "hi"))
    async with world.services.sessions() as session:
        record = (await session.scalars(select(Record))).one()
    first = await _record(
        world, phone=None, contact_id=record.contact_id, source_record_id=record.id
    )
    with pytest.raises(ConsentAlreadyRecorded):
        await _record(world, phone=None, contact_id=first.contact_id, source_record_id=record.id)
    other = await _record(
        world,
        phone=None,
        contact_id=first.contact_id,
        source_record_id=record.id,
        category="utility",
    )
    assert other.category == "utility"
    assert await world.count(ConsentEntry) == 2


async def test_entries_are_scoped_to_the_callers_accounts(world: World) -> None:
    other = await world.register("106540352249999", None)
    mine = await _record(world)
    await _record(world, account_id=other, category="utility")
    await _record(world, account_id=None, category="authentication")
    contact = mine.contact_id
    everything = await world.ledger.entries(OFFICER, None, contact)
    assert sorted(v.category for v in everything) == ["authentication", "marketing", "utility"]
    only_mine = await world.ledger.entries(OFFICER, [world.account_id], contact)
    assert [v.category for v in only_mine] == ["marketing"]
    assert await world.ledger.entries(OFFICER, [], contact) == []
    both = await world.ledger.export(OFFICER, [world.account_id, other], contact)
    assert sorted(e["category"] for e in both) == ["marketing", "utility"]  # not the firm-wide one


async def test_latest_reads_any_number_of_contacts_in_one_query(world: World) -> None:
    first = await _record(world)
    world.clock.advance(timedelta(days=1))
    await _record(
        world, action="opt_out", method="chat_keyword", occurred_at=START + timedelta(days=1)
    )
    second = await _record(world, phone="+33 6 12 34 56 78", category="utility")
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    engine = world.services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        async with world.services.sessions() as session:
            many = [f"ct_{n}" for n in range(40_000)]  # past any bound-parameter limit
            states = await ConsentLedger.latest(
                session, [first.contact_id, second.contact_id, *many]
            )
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len([s for s in statements if "consent_entries" in s]) == 1
    assert states == {
        (first.contact_id, Category.MARKETING): ConsentState(
            START,
            "by web form",
            START + timedelta(days=1),
            "by replying with a stop word (STOP)",
        ),
        (second.contact_id, Category.UTILITY): ConsentState(START, "by web form"),
    }
