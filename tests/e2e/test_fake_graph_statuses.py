"""The fake Graph API's status webhooks, delivered to a real Strongroom server
(SQLite and PostgreSQL): they verify with the account's app secret and become
the message's delivery statuses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from api.sandbox.fake_graph import FakeGraph, running_fake_graph
from archiver.whatsapp.graph import GraphClient, SentMessage
from tests.e2e.server import APP_SECRET, DISPLAY_NUMBER, PHONE_NUMBER_ID, Server

TOKEN = "EAAG-e2e-fake-graph-token-0123456789"


@pytest.fixture
def fake(server: Server) -> FakeGraph:
    fake = FakeGraph(TOKEN)
    fake.configure_webhook(
        f"{server.url}/webhooks/whatsapp", APP_SECRET, {PHONE_NUMBER_ID: DISPLAY_NUMBER}
    )
    return fake


@pytest.fixture
def graph_url(fake: FakeGraph) -> Iterator[str]:
    with running_fake_graph(fake) as url:
        yield url


def send(graph_url: str, to: str, payload: dict[str, Any] | None = None) -> SentMessage:
    async def run() -> SentMessage:
        client = GraphClient(graph_url)
        try:
            message = payload or {
                "messaging_product": "whatsapp",
                "to": to,
                "type": "text",
                "text": {"body": "your order has shipped"},
            }
            return await client.send_message(PHONE_NUMBER_ID, TOKEN, message)
        finally:
            await client.aclose()

    return asyncio.run(run())


def statuses(server: Server, wamid: str, count: int) -> list[str]:
    def probe() -> list[dict[str, Any]] | None:
        records = server.get("/api/v1/messages", wamid=wamid).json()
        return records if isinstance(records, list) and len(records) >= count else None

    records = server.wait_for(probe)
    return [str(r["delivery_status"]) for r in records]


def test_delivered_statuses_verify_and_reach_the_record(
    server: Server, fake: FakeGraph, graph_url: str
) -> None:
    sent = send(graph_url, "16505550101")
    answers = asyncio.run(fake.deliver_pending())
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert statuses(server, sent.wamid, 3)[-1] == "read"


def test_an_injected_delivery_failure_reaches_the_record_as_failed(
    server: Server, fake: FakeGraph, graph_url: str
) -> None:
    fake.fail_delivery(131026, to="16505550102")
    sent = send(graph_url, "16505550102")
    asyncio.run(fake.deliver_pending())
    assert statuses(server, sent.wamid, 1) == ["failed"]


def test_statuses_signed_with_another_secret_are_refused_and_stay_queued(
    server: Server,
) -> None:
    wrong = FakeGraph(TOKEN)
    wrong.configure_webhook(
        f"{server.url}/webhooks/whatsapp", APP_SECRET + "x", {PHONE_NUMBER_ID: DISPLAY_NUMBER}
    )
    with running_fake_graph(wrong) as url:
        send(url, "16505550103")
    with pytest.raises(RuntimeError, match="401"):
        asyncio.run(wrong.deliver_pending())
    assert len(wrong.pending()) == 3


def test_the_background_deliverer_sends_statuses_as_they_come(
    server: Server, fake: FakeGraph, graph_url: str
) -> None:
    fake.start_delivery()
    try:
        sent = send(graph_url, "16505550104")
        assert statuses(server, sent.wamid, 3)[-1] == "read"
    finally:
        fake.stop_delivery()
    assert fake.pending() == []
