"""The outbox end to end, over HTTP, against the fake Graph API: an agent's reply
is decided, sent by the server's own worker, archived with ``source=outbox``
and moved to ``read`` by the statuses the fake delivers through the real signed
webhook; a held message goes only once a second supervisor approves it; an
injected Graph error ends the item ``failed`` with Meta's code. SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from api.sandbox.fake_graph import FakeGraph, running_fake_graph
from archiver.identity.services import ROLE_PERMISSIONS, Role
from tests.e2e.conftest import running_server
from tests.e2e.server import (
    APP_SECRET,
    DISPLAY_NUMBER,
    PHONE_NUMBER_ID,
    Server,
    customer_message,
)

TOKEN = "EAAG-e2e-outbox-token-0123456789"
CUSTOMER = "447700900123"


@pytest.fixture(scope="module")
def fake() -> FakeGraph:
    return FakeGraph(TOKEN)


@pytest.fixture(scope="module")
def graph_url(fake: FakeGraph) -> Iterator[str]:
    with running_fake_graph(fake) as url:
        yield url


@pytest.fixture(scope="module")
def sender_server(
    database_name: str,
    graph_url: str,
    fake: FakeGraph,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("outbox"),
        database_name,
        {"STRONGROOM_GRAPH_BASE_URL": graph_url},
        access_token=TOKEN,
    ) as server:
        fake.configure_webhook(
            f"{server.url}/webhooks/whatsapp", APP_SECRET, {PHONE_NUMBER_ID: DISPLAY_NUMBER}
        )
        yield server


@pytest.fixture(scope="module")
def people(sender_server: Server) -> dict[str, dict[str, str]]:
    server = sender_server
    found = {}
    for name, role in (
        ("agent-ann", "agent"),
        ("sup-sam", "supervisor"),
        ("sup-sue", "supervisor"),
    ):
        server.create_user(name, role, account=server.account_id)
        found[name] = server.token(name, *sorted(ROLE_PERMISSIONS[Role(role)]))
    return found


def _inbound(server: Server, wamid: str, body: str, sender: str) -> None:
    """A customer's message, sent now: it opens the service window."""
    payload = customer_message(sender, wamid, int(time.time()), text={"body": body})
    assert server.post_webhook(json.dumps(payload).encode()).status_code == 200
    server.records_of(wamid)


def _send(server: Server, who: dict[str, str], key: str, text: str, to: str) -> dict[str, Any]:
    response = server.client.post(
        "/api/v1/outbox",
        json={
            "account_id": server.account_id,
            "to": to,
            "content": {"kind": "text", "text": text},
            "idempotency_key": key,
            "source": "agent",
        },
        headers=who,
    )
    assert response.status_code == 201, response.text
    item: dict[str, Any] = response.json()
    return item


def _until(server: Server, who: dict[str, str], item_id: str, *states: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        item: dict[str, Any] = server.client.get(f"/api/v1/outbox/{item_id}", headers=who).json()
        return item if item["state"] in states else None

    found: dict[str, Any] = server.wait_for(probe, timeout=30)
    return found


def test_a_reply_is_sent_archived_and_read(
    sender_server: Server, people: dict[str, dict[str, str]], fake: FakeGraph
) -> None:
    server, agent = sender_server, people["agent-ann"]
    _inbound(server, "wamid.HTTP-IN-1", "Where is my parcel?", CUSTOMER)
    item = _send(server, agent, "reply-1", "Your parcel arrives on Tuesday.", CUSTOMER)
    assert item["decision"]["outcome"] == "allow"
    sent = _until(server, agent, item["id"], "sent")
    posted = [r for r in fake.requests() if r.recipient == CUSTOMER and r.accepted]
    assert posted
    wamid = posted[-1].wamid
    assert wamid is not None
    records = server.records_of(wamid)
    assert records[0]["source"] == "outbox"
    assert sent["record_id"] == records[0]["id"]
    asyncio.run(fake.deliver_pending())
    done = _until(server, agent, item["id"], "read")
    assert [e["to_state"] for e in done["events"]] == [
        "queued",
        "decided",
        "dispatching",
        "sent",
        "delivered",
        "read",
    ]
    again = _send(server, agent, "reply-1", "Your parcel arrives on Tuesday.", CUSTOMER)
    assert again["id"] == item["id"]  # the same key: the same item, sent once
    found = server.client.post(
        "/api/v1/search",
        json={"query": "parcel Tuesday", "source": "outbox"},
        headers=server.officer,
    ).json()
    assert [hit["id"] for hit in found["results"]] == [records[0]["id"]]


def test_a_held_message_waits_for_a_second_supervisor(
    sender_server: Server, people: dict[str, dict[str, str]]
) -> None:
    server = sender_server
    added = server.client.post(
        "/api/v1/lexicon",
        json={"term": "guaranteed returns", "action": "hold"},
        headers=server.officer,
    )
    assert added.status_code == 201, added.text
    customer = "447700900124"
    _inbound(server, "wamid.HTTP-IN-2", "Is this fund safe?", customer)
    sam, sue = people["sup-sam"], people["sup-sue"]
    item = _send(server, sam, "held-1", "It has guaranteed returns.", customer)
    assert item["state"] == "held"
    assert [r["code"] for r in item["decision"]["reasons"]] == ["lexicon.hold"]
    queue = server.client.get("/api/v1/outbox/review", headers=sue).json()
    assert item["id"] in [i["id"] for i in queue]
    own = server.client.post(
        f"/api/v1/outbox/{item['id']}/approve", json={"comment": "fine"}, headers=sam
    )
    assert own.status_code == 409, own.text
    assert "own item" in own.json()["error"]
    agent_try = server.client.post(
        f"/api/v1/outbox/{item['id']}/approve",
        json={"comment": "fine"},
        headers=people["agent-ann"],
    )
    assert agent_try.status_code == 403
    approved = server.client.post(
        f"/api/v1/outbox/{item['id']}/approve", json={"comment": "approved wording"}, headers=sue
    )
    assert approved.status_code == 200, approved.text
    assert _until(server, sam, item["id"], "sent", "delivered", "read")["approved_by"]


def test_a_graph_error_fails_the_item_with_metas_code(
    sender_server: Server, people: dict[str, dict[str, str]], fake: FakeGraph
) -> None:
    server, agent = sender_server, people["agent-ann"]
    customer = "447700900125"
    _inbound(server, "wamid.HTTP-IN-3", "Hello?", customer)
    fake.fail_next(131026, to=customer)
    item = _send(server, agent, "fail-1", "We could not reach you.", customer)
    failed = _until(server, agent, item["id"], "failed")
    assert failed["error_code"] == 131026
    blocked = _send(server, agent, "late-1", "Hello again.", "447700900199")
    assert blocked["state"] == "blocked"
    assert "window.closed_free_form" in [r["code"] for r in blocked["decision"]["reasons"]]
