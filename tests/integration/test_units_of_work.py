"""Each change is one unit of work: the change and its audit event commit together
(or neither, when the transaction fails after the change), and a refused change
leaves a denied event and no change. Reading (paging, account scoping, finding a
contact by phone) is tested once, at the Records service. Real SQLite and PostgreSQL."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.bootstrap import Services, open_services
from api.settings import load_settings
from archiver.accounts.models import Account
from archiver.audit.models import AuditEvent
from archiver.audit.services import Actor, AuditLog
from archiver.core.clock import FixedClock
from archiver.core.db import sqlite_file
from archiver.core.errors import AccountExists, AccountNotFound, RecordNotFound
from archiver.crypto.keyring import new_root_key, root_key_id
from archiver.crypto.models import SubjectKey
from archiver.records.models import Record
from archiver.records.queries import InvalidCursor
from policy.errors import DuplicateTerm
from policy.models import LexiconTerm

OFFICER = Actor(id="usr_officer", name="olivia", role="compliance_officer", request_id="req-1")
PHONE = "+447700900201"
EXPORT = "\n".join(
    [
        "13/01/2024, 09:05 - +44 7700 900201: Yes please, any slot on Tuesday?",
        "13/01/2024, 09:06 - Hartley Plumbing: Booked: Tuesday 16/01, 10:00.",
        "13/01/2024, 09:07 - +44 7700 900201: Thanks!",
    ]
).encode()


class Injected(Exception):
    """A failure after the change, inside its transaction."""


@pytest.fixture
async def services(
    database_url: str, tmp_path: Path, root_key: bytes, clock: FixedClock
) -> AsyncIterator[Services]:
    database = sqlite_file(database_url)
    if database is not None:
        os.chmod(database, 0o600)
    env = {
        "STRONGROOM_DATA_DIR": str(tmp_path / "data"),
        "STRONGROOM_DATABASE_URL": database_url,
        "STRONGROOM_MASTER_KEY": root_key.hex(),
    }
    opened = await open_services(load_settings(env), clock)
    try:
        yield opened
    finally:
        await opened.close()


async def _events(services: Services, action: str) -> list[AuditEvent]:
    await services.audit.flush()
    return await services.audit.query(action=action)


async def _details(services: Services, event: AuditEvent) -> dict[str, Any] | None:
    return await services.audit.open_details(event)


async def _count(services: Services, model: type[Any]) -> int:
    async with services.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def _fail_after_append(monkeypatch: pytest.MonkeyPatch, audit: AuditLog) -> None:
    """Make the event's append succeed, then fail the transaction it is in."""
    original = audit.record_in

    async def append_then_fail(session: AsyncSession, entry: Any) -> None:
        await original(session, entry)
        raise Injected

    monkeypatch.setattr(audit, "record_in", append_then_fail)


def _clear(event: AuditEvent) -> str:
    return " ".join(
        str(v)
        for v in (event.actor, event.action, event.target, event.scope, event.reason)
        if v is not None
    )


async def _register(services: Services, phone_number_id: str = "1001") -> str:
    account = await services.accounts.register(
        OFFICER,
        phone_number_id=phone_number_id,
        display_phone_number="+44 20 7946 0000",
        app_secret="app-secret",
        verify_token="verify-token",
    )
    return account.id


async def _import(services: Services, account_id: str, export: bytes = EXPORT) -> Any:
    return await services.importer.import_export(
        OFFICER,
        account_id=account_id,
        contact_phone=PHONE,
        file=io.BytesIO(export),
        filename="WhatsApp Chat with Jo Bloggs.txt",
        business_sender="Hartley Plumbing",
    )


# -- lexicon -----------------------------------------------------------------


async def test_a_term_and_its_event_commit_together_the_term_sealed(services: Services) -> None:
    row = await services.lexicon.add(OFFICER, "off the record", "block")
    (event,) = await _events(services, "lexicon.add")
    assert (event.actor, event.outcome, event.role) == (OFFICER.id, "ok", "compliance_officer")
    assert event.target == f"lexicon:{row.id} action:block"
    assert event.request_id == "req-1"
    assert "record" not in _clear(event)  # the term is only in the sealed details
    assert await _details(services, event) == {"term": "off the record"}
    await services.lexicon.remove(OFFICER, row.id)
    (removed,) = await _events(services, "lexicon.remove")
    assert removed.target == f"lexicon:{row.id} action:block"


async def test_a_lexicon_change_that_fails_in_its_transaction_leaves_neither(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_after_append(monkeypatch, services.audit)
    with pytest.raises(Injected):
        await services.lexicon.add(OFFICER, "guarantee", "flag")
    assert await _count(services, LexiconTerm) == 0
    assert await _events(services, "lexicon.add") == []


async def test_a_refused_term_is_audited_as_denied_and_changes_nothing(
    services: Services,
) -> None:
    await services.lexicon.add(OFFICER, "guarantee", "flag")
    with pytest.raises(DuplicateTerm):
        await services.lexicon.add(OFFICER, "GUARANTEE!", "hold")
    events = await _events(services, "lexicon.add")
    assert [e.outcome for e in events] == ["ok", "denied"]
    denied = events[1]
    assert denied.reason == "duplicate term"
    assert "guarantee" not in _clear(denied).lower()
    details = await _details(services, denied)
    assert details is not None
    assert details["term"] == "GUARANTEE!"
    assert await _count(services, LexiconTerm) == 1


# -- accounts ----------------------------------------------------------------


async def test_an_account_and_its_event_commit_together(services: Services) -> None:
    account_id = await _register(services)
    (event,) = await _events(services, "account.register")
    assert (event.target, event.outcome, event.actor) == (f"account:{account_id}", "ok", OFFICER.id)
    assert "7946" not in _clear(event)  # the number only sealed
    assert await _details(services, event) == {
        "phone_number_id": "1001",
        "display_phone_number": "+442079460000",
    }


async def test_a_registration_that_fails_in_its_transaction_leaves_neither(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_after_append(monkeypatch, services.audit)
    with pytest.raises(Injected):
        await _register(services)
    assert await _count(services, Account) == 0
    assert await _events(services, "account.register") == []


async def test_a_refused_registration_is_audited_as_denied(services: Services) -> None:
    await _register(services)
    with pytest.raises(AccountExists):
        await _register(services)
    events = await _events(services, "account.register")
    assert [e.outcome for e in events] == ["ok", "denied"]
    assert events[1].reason is not None
    assert "already registered" in events[1].reason
    assert await _count(services, Account) == 1


# -- imports -----------------------------------------------------------------


async def test_an_import_and_its_summary_commit_together(services: Services) -> None:
    account_id = await _register(services)
    result = await _import(services, account_id)
    (event,) = await _events(services, "import.chat_export")
    assert event.target == f"import:{account_id}:{result.contact_id}"
    assert (event.outcome, event.scope) == ("ok", account_id)
    assert event.reason is not None
    assert event.reason.startswith("3 of 3 messages imported")
    assert "7700" not in _clear(event)
    assert "Bloggs" not in _clear(event)
    assert await _details(services, event) == {
        "file": "WhatsApp Chat with Jo Bloggs.txt",
        "contact": PHONE,
    }
    again = await _import(services, account_id)  # nothing new: its own transaction
    assert again.imported == 0
    assert len(await _events(services, "import.chat_export")) == 2


async def test_an_import_that_fails_in_its_transaction_leaves_neither(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    account_id = await _register(services)
    _fail_after_append(monkeypatch, services.audit)
    with pytest.raises(Injected):
        await _import(services, account_id)
    assert await _count(services, Record) == 0
    assert await _events(services, "import.chat_export") == []


async def test_a_refused_import_is_audited_as_denied(services: Services) -> None:
    with pytest.raises(AccountNotFound):
        await _import(services, "acc_missing")
    (event,) = await _events(services, "import.chat_export")
    assert (event.outcome, event.target) == ("denied", "import:acc_missing")
    assert await _count(services, Record) == 0


# -- key rotation --------------------------------------------------------------


async def _roots(services: Services) -> set[str]:
    async with services.sessions() as session:
        query = select(SubjectKey.root_key_id).where(SubjectKey.wrapped_key.is_not(None))
        return set(await session.scalars(query))


async def test_a_rotation_and_its_event_commit_together(services: Services) -> None:
    new_root = new_root_key()
    rotated = await services.key_rotation.rotate(Actor(id="cli"), new_root)
    assert await _roots(services) == {root_key_id(new_root)}
    (event,) = await _events(services, "keys.rotate")
    assert (event.actor, event.outcome) == ("cli", "ok")
    assert event.target == f"root-key:{root_key_id(new_root)}"
    assert event.reason is not None
    assert f"re-wrapped {rotated.rewrapped} subject keys" in event.reason


async def test_a_rotation_that_fails_in_its_transaction_leaves_neither(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await _roots(services)
    _fail_after_append(monkeypatch, services.audit)
    with pytest.raises(Injected):
        await services.key_rotation.rotate(Actor(id="cli"), new_root_key())
    assert await _roots(services) == before
    assert await _events(services, "keys.rotate") == []


# -- reading: paging, scoping, phone lookup ------------------------------------


async def test_records_page_by_cursor_within_the_callers_accounts(services: Services) -> None:
    account_id = await _register(services)
    other = await _register(services, "1002")
    result = await _import(services, account_id)
    seen: list[int] = []
    cursor = None
    while True:
        page = await services.records.page(
            OFFICER, {account_id}, contact_id=result.contact_id, cursor=cursor, limit=2
        )
        seen += [v.record.id for v in page.views]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == 3 == len(set(seen))
    everything = await services.records.page(OFFICER, None, contact_id=result.contact_id)
    assert [v.record.id for v in everything.views] == seen
    outside = await services.records.page(OFFICER, {other}, contact_id=result.contact_id)
    assert outside.views == []
    with pytest.raises(RecordNotFound):
        await services.records.one(OFFICER, {other}, seen[0])
    with pytest.raises(InvalidCursor):
        await services.records.page(OFFICER, None, cursor="not a cursor")
    reads = await _events(services, "archive.read")
    assert reads[0].target == "records:" + ",".join(map(str, seen[:2]))


async def test_a_contact_is_found_by_phone_only_within_the_callers_accounts(
    services: Services,
) -> None:
    account_id = await _register(services)
    other = await _register(services, "1002")
    result = await _import(services, account_id)
    for written in (PHONE, "+44 7700 900201", "+44 (0)7700 900201"):
        assert await services.records.contact_of(written, {account_id}) == result.contact_id
    assert await services.records.contact_of(PHONE, None) == result.contact_id
    with pytest.raises(RecordNotFound):
        await services.records.contact_of(PHONE, {other})
    with pytest.raises(RecordNotFound):
        await services.records.contact_of("+447700900999", None)
    assert await services.records.contacts_of(PHONE) == {result.contact_id}
    assert await services.records.contacts_of("+447700900999") == frozenset()
    assert await services.records.contacts_of(None) is None
