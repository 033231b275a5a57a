"""A whole system on a real database for the policy's integration tests: the
services as the application opens them, one registered account, the consent
ledger, the template registry and the webhook reactions, and a way to post real
signed webhooks through capture."""

from __future__ import annotations

import asyncio
import copy
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
from sqlalchemy import func, select

from api.bootstrap import Services, open_services
from api.settings import load_settings
from archiver.audit.models import AuditEvent
from archiver.audit.services import Actor
from archiver.core.clock import FixedClock
from archiver.core.db import sqlite_file
from policy.consent import ConsentLedger
from policy.reactions import Reactions
from policy.templates import TemplateRegistry

APP_SECRET = "policy-world-secret"
PHONE_NUMBER_ID = "106540352242922"  # the fixtures' number
WABA_ID = "102290129340398"  # the fixtures' business account
START = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"


def fixture(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return payload


def value_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The first change's ``value`` of a webhook body (to edit a fixture)."""
    value: dict[str, Any] = payload["entry"][0]["changes"][0]["value"]
    return value


def text_message(wamid: str, body: str, sender: str = "447700900123") -> dict[str, Any]:
    """A Cloud API text message from ``sender``."""
    payload = copy.deepcopy(fixture("message_text"))
    value = value_of(payload)
    value["contacts"][0]["wa_id"] = sender
    message = value["messages"][0]
    message.update({"id": wamid, "from": sender, "text": {"body": body}})
    return payload


def status(wamid: str, state: str, code: int | None = None, to: str = "447700900123") -> Any:
    """A status of ``wamid`` (``failed`` with error ``code``)."""
    payload = copy.deepcopy(fixture("status_failed_marketing_stopped"))
    entry = value_of(payload)["statuses"][0]
    entry.update({"id": wamid, "status": state, "recipient_id": to})
    if code is None:
        del entry["errors"]
    else:
        entry["errors"][0].update({"code": code, "title": f"error title {code}"})
    return payload


def waba_event(field: str, value: dict[str, Any]) -> dict[str, Any]:
    """A WhatsApp Business Account level webhook (templates, number quality)."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {"id": WABA_ID, "time": 1763700600, "changes": [{"value": value, "field": field}]}
        ],
    }


@dataclass
class World:
    services: Services
    clock: FixedClock
    account_id: str
    ledger: ConsentLedger
    templates: TemplateRegistry
    reactions: Reactions
    database_url: str

    async def post(self, *payloads: dict[str, Any]) -> None:
        """Post signed webhooks through capture and project them."""
        capture = self.services.capture
        for payload in payloads:
            body = json.dumps(payload).encode()
            sig = "sha256=" + hmac.new(APP_SECRET.encode(), body, "sha256").hexdigest()
            await capture.journal(self.account_id, body, sig)
            self.clock.advance(timedelta(seconds=1))
        while await capture.project_pending():
            pass

    async def react(self) -> int:
        """Catch up until every record seen is within the reactions' horizon (on
        PostgreSQL, a transaction of the audit writer or capture may be running
        when a snapshot is taken); the records read."""
        total = await self.reactions.catch_up()
        for _ in range(10_000):
            if self.reactions.settled:
                return total
            await asyncio.sleep(0)  # let this loop's own writers finish
            total += await self.reactions.catch_up()
        raise AssertionError("the reactions' horizon never settled")

    async def audit_events(self, action: str) -> list[AuditEvent]:
        await self.services.audit.flush()
        async with self.services.sessions() as session:
            query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            return list(await session.scalars(query))

    async def count(self, model: Any) -> int:
        async with self.services.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    async def register(self, phone_number_id: str, waba_id: str | None) -> str:
        account = await self.services.accounts.register(
            Actor(id="admin"),
            phone_number_id=phone_number_id,
            display_phone_number="+1 555 078 " + phone_number_id[-4:],
            app_secret=APP_SECRET,
            verify_token="policy-world-verify-" + phone_number_id,
            waba_id=waba_id,
        )
        await self.services.capture.refresh_secrets()
        return account.id


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
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
    services = await open_services(settings, clock)
    try:
        account = await services.accounts.register(
            Actor(id="admin"),
            phone_number_id=PHONE_NUMBER_ID,
            display_phone_number="+1 555 078 3881",
            app_secret=APP_SECRET,
            verify_token="policy-world-verify",
            waba_id=WABA_ID,
        )
        await services.capture.refresh_secrets()
        ledger, templates, reactions = services.consent, services.templates, services.reactions
        yield World(services, clock, account.id, ledger, templates, reactions, database_url)
    finally:
        await services.close()
