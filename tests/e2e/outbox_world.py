"""Seeding for the outbox's console tests: a send policy with (nearly) no quiet hours (the
tests run at any time of day), a hold term, templates approved by both sides,
consent entries and an open customer service window, on a running server."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from api.bootstrap import open_services
from api.settings import load_settings
from archiver.audit.services import Actor
from tests.e2e.server import Server, customer_message

MAKER = Actor(id="e2e-template-maker", name="template maker")
CHECKER = Actor(id="e2e-template-checker", name="template checker")
HOLD_TERM = "guaranteed returns"
OPTED_OUT = "447700900801"  # opted out of marketing by replying STOP
OPTED_IN = "447700900802"  # opted in to marketing by web form
IN_WINDOW = "447700900803"  # wrote to the business a moment ago
WABA_ID = "102290129340398"  # templates belong to a WhatsApp Business Account


@dataclass(frozen=True)
class Seeded:
    promo: int  # a marketing template with one variable, approved by both
    opted_out_on: str  # the day the STOP was recorded (YYYY-MM-DD)


def seed_outbox(server: Server) -> Seeded:
    """Everything the compose, hold and consent pages need, on ``server.account_id``."""
    policy = server.client.put(
        f"/api/v1/policy/{server.account_id}",
        json={"quiet_hours": {"start": "00:00:00", "end": "23:59:59"}, "pair_burst": 50},
        headers=server.officer,
    )
    assert policy.status_code == 200, policy.text
    term = server.client.post(
        "/api/v1/lexicon", json={"term": HOLD_TERM, "action": "hold"}, headers=server.officer
    )
    assert term.status_code == 201, term.text
    seeded = asyncio.run(_seed(server))
    # Meta's approval arrives by webhook (policy.reactions); here it is set directly.
    approved = (
        "UPDATE message_templates SET meta_status = 'APPROVED', quality = 'GREEN' WHERE id = "
    )
    server.sql(approved + str(int(seeded.promo)))
    inbound = customer_message(IN_WINDOW, "wamid.OUTBOX.IN1", int(time.time()) - 60)
    assert server.post_webhook(json.dumps(inbound).encode()).status_code == 200
    server.records_of("wamid.OUTBOX.IN1")
    return seeded


async def _seed(server: Server) -> Seeded:
    services = await open_services(load_settings(server.env))
    try:
        row = await services.templates.create(
            MAKER,
            None,
            server.account_id,
            name="spring_promo",
            language="en_GB",
            category="marketing",
            components=[{"type": "BODY", "text": "Hello {{1}}, our spring sale starts today."}],
            parameters=[{"name": "1", "type": "text"}],
        )
        await services.templates.submit(MAKER, None, row.id)
        await services.templates.approve(CHECKER, None, row.id, "wording checked")
        now = datetime.now(UTC)
        stop = now - timedelta(days=2)
        await services.consent.record(
            CHECKER,
            server.account_id,
            category="marketing",
            action="opt_out",
            method="chat_keyword",
            evidence="The customer replied STOP",
            occurred_at=stop,
            phone="+" + OPTED_OUT,
        )
        await services.consent.record(
            CHECKER,
            server.account_id,
            category="marketing",
            action="opt_in",
            method="web_form",
            evidence="Newsletter form, ticked box",
            occurred_at=now - timedelta(days=1),
            phone="+" + OPTED_IN,
        )
        await services.audit.flush()
        return Seeded(promo=row.id, opted_out_on=f"{stop:%Y-%m-%d}")
    finally:
        await services.close()
