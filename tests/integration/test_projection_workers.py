"""Several projectors on one database (two services, as two workers would run
them) share the journal: each entry is claimed by one of them, none is projected
twice, and an entry whose projector died or failed is projected by another."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from api.bootstrap import Services, open_services
from api.settings import load_settings
from archiver.audit.services import Actor
from archiver.capture.models import JournalEntry
from archiver.capture.services import PROJECTION_LEASE
from archiver.core.clock import FixedClock
from archiver.core.db import sqlite_file
from archiver.records.models import Record
from archiver.vault.models import SealedObject

APP_SECRET = "projection-workers-secret"
PHONE_NUMBER_ID = "106540352242922"
START = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def delivery(serial: int, messages: int = 3) -> bytes:
    """A Cloud API delivery of ``messages`` text messages from one customer."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "Kerry"}, "wa_id": "16505551234"}],
        "messages": [
            {
                "from": "16505551234",
                "id": f"wamid.projection-workers-{serial}-{n}",
                "timestamp": str(int(START.timestamp()) + serial),
                "type": "text",
                "text": {"body": f"message {n} of delivery {serial}"},
            }
            for n in range(messages)
        ],
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
    }
    return json.dumps(body).encode()


def signature(body: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), body, "sha256").hexdigest()


@dataclass
class Workers:
    """Two services on one database and vault, sharing a clock, and their account."""

    first: Services
    second: Services
    clock: FixedClock
    account_id: str

    async def journal(self, deliveries: int) -> None:
        for serial in range(deliveries):
            body = delivery(serial)
            await self.first.capture.journal(self.account_id, body, signature(body))

    async def count(self, query: Any) -> int:
        async with self.first.sessions() as session:
            return int(await session.scalar(query) or 0)


@pytest.fixture
async def workers(database_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    database = sqlite_file(database_url)
    if database is not None:
        os.chmod(database, 0o600)  # as the service creates it; the fixture copies it
    settings = load_settings(
        {
            "STRONGROOM_DATA_DIR": str(tmp_path / "data"),
            "STRONGROOM_DATABASE_URL": database_url,
            "STRONGROOM_MASTER_KEY": secrets.token_bytes(32).hex(),
        }
    )
    clock = FixedClock(START)
    first = await open_services(settings, clock)
    second = await open_services(settings, clock)
    try:
        account = await first.accounts.register(
            Actor(id="test"),
            phone_number_id=PHONE_NUMBER_ID,
            display_phone_number="+1 555 078 3881",
            app_secret=APP_SECRET,
            verify_token="projection-workers-verify",
        )
        for services in (first, second):
            await services.capture.refresh_secrets()
        yield Workers(first, second, clock, account.id)
    finally:
        await first.close()
        await second.close()


async def test_an_entry_one_projector_works_on_is_not_taken_by_another(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = workers.first, workers.second
    await workers.journal(6)
    sealing, go_on = asyncio.Event(), asyncio.Event()
    write_objects = first.vault.write_objects

    async def slow_write(*args: Any, **kwargs: Any) -> Any:
        sealing.set()
        await go_on.wait()
        return await write_objects(*args, **kwargs)

    monkeypatch.setattr(first.vault, "write_objects", slow_write)
    working = asyncio.create_task(first.capture.project_pending(limit=3))
    await sealing.wait()  # the first has claimed entries 1-3 and is sealing them
    assert await second.capture.project_pending(limit=3) == 3
    projected = select(JournalEntry.id).where(JournalEntry.projected_at.is_not(None))
    async with first.sessions() as session:
        assert set(await session.scalars(projected)) == {4, 5, 6}
    go_on.set()
    assert await working == 3
    assert await workers.count(select(func.count()).select_from(Record)) == 18
    # Neither sealed what the other had claimed: one object per record.
    assert await workers.count(select(func.count()).where(SealedObject.kind == "record")) == 18


async def test_projectors_running_together_project_every_entry_once(workers: Workers) -> None:
    first, second = workers.first, workers.second
    await workers.journal(12)
    total = 0
    while done := await asyncio.gather(
        first.capture.project_pending(limit=2), second.capture.project_pending(limit=2)
    ):
        if not any(done):
            break
        total += sum(done)
    assert total == 12
    assert await workers.count(select(func.count()).select_from(Record)) == 36
    assert await workers.count(select(func.count()).where(SealedObject.kind == "record")) == 36
    leased = select(func.count()).where(JournalEntry.leased_until.is_not(None))
    assert await workers.count(leased) == 0


async def test_an_entry_claimed_by_a_worker_that_died_waits_for_its_lease_to_pass(
    workers: Workers,
) -> None:
    first, second, clock = workers.first, workers.second, workers.clock
    await workers.journal(1)
    # A worker claimed the entry and died before projecting it.
    async with first.sessions() as session, session.begin():
        await session.execute(
            update(JournalEntry).values(leased_until=clock.now() + PROJECTION_LEASE)
        )
    assert await second.capture.project_pending() == 0
    clock.advance(PROJECTION_LEASE - timedelta(seconds=1))
    assert await second.capture.project_pending() == 0
    clock.advance(timedelta(seconds=1))
    assert await second.capture.project_pending() == 1
    assert await workers.count(select(func.count()).select_from(Record)) == 3


async def test_an_entry_that_failed_is_free_for_the_next_batch(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = workers.first, workers.second
    await workers.journal(1)

    async def vault_down(*args: object, **kwargs: object) -> object:
        raise OperationalError("write", {}, Exception("the vault is unreachable"))

    with monkeypatch.context() as patch:
        patch.setattr(first.vault, "write_objects", vault_down)
        assert await first.capture.project_pending() == 0
    entry = select(JournalEntry.attempts, JournalEntry.leased_until)
    async with first.sessions() as session:
        assert (await session.execute(entry)).one() == (1, None)
    # Not leased: the other projector takes it at once.
    assert await second.capture.project_pending() == 1
    assert await workers.count(select(func.count()).select_from(Record)) == 3
