"""The fake Graph API's messages endpoint: wamids, the request log, injected
errors in the Cloud API's shape, and signed status webhooks.

The fake is served in process (``httpx.ASGITransport``) and talked to through
the real ``GraphClient``; webhooks go to an ``httpx.MockTransport`` that keeps
them, and are delivered only when the test asks (no sleeps).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.sandbox.fake_graph import (
    CLOUD_API_ERRORS,
    FakeGraph,
    FakeMedia,
    create_fake_graph,
)
from archiver.whatsapp.graph import GraphClient, GraphError, GraphPermanent, GraphTransient

TOKEN = "EAAG-fake-graph-token-0123456789"
SECRET = "fake-graph-app-secret"
NUMBER = "106540352242922"
DISPLAY = "15550783881"
OTHER = "106540352242999"
CUSTOMER = "16505551234"
HOOK = "https://strongroom.test/webhooks/whatsapp"
WALL = 1_763_700_000.0


def text(to: str = CUSTOMER) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}}


def template(name: str, to: str = CUSTOMER) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "template": {"name": name, "language": {"code": "en"}},
    }


@pytest.fixture
def fake() -> FakeGraph:
    return FakeGraph(TOKEN, clock=lambda: WALL)


@pytest.fixture
async def graph(fake: FakeGraph) -> AsyncIterator[GraphClient]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_fake_graph(fake)))

    async def no_sleep(_: float) -> None:
        return None

    client = GraphClient("http://fake-graph", http=http, max_attempts=1, sleep=no_sleep)
    yield client
    await http.aclose()


class Receiver:
    """A webhook receiver that keeps every request and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[httpx.Request] = []
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, text="ok")

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


@pytest.fixture
async def receiver(fake: FakeGraph) -> AsyncIterator[Receiver]:
    fake.configure_webhook(HOOK, SECRET, {NUMBER: DISPLAY})
    receiver = Receiver()
    yield receiver
    await receiver.http.aclose()


def verifies(request: httpx.Request, secret: str = SECRET) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), request.content, hashlib.sha256).hexdigest()
    return hmac.compare_digest(request.headers["x-hub-signature-256"], expected)


async def test_a_send_answers_a_wamid_and_is_logged(fake: FakeGraph, graph: GraphClient) -> None:
    sent = await graph.send_message(NUMBER, TOKEN, text("+1 650-555-1234"))
    assert sent.wamid.startswith("wamid.")
    assert sent.wa_id == CUSTOMER
    (logged,) = fake.requests()
    assert logged.accepted
    assert (logged.phone_number_id, logged.to, logged.type) == (NUMBER, "+1 650-555-1234", "text")
    assert (logged.status, logged.error_code, logged.wamid) == (200, None, sent.wamid)
    assert (logged.template, logged.category, logged.wall) == (None, None, WALL)
    assert logged.recipient == CUSTOMER
    assert fake.sent == [{"phone_number_id": NUMBER, **text("+1 650-555-1234")}]
    assert FakeMedia is FakeGraph


async def test_the_log_keeps_templates_categories_and_refusals_in_order(
    fake: FakeGraph, graph: GraphClient
) -> None:
    fake.set_template_category("spring_sale", "marketing")
    first = await graph.send_message(NUMBER, TOKEN, template("spring_sale"))
    fake.fail_next(131056)
    with pytest.raises(GraphTransient):
        await graph.send_message(NUMBER, TOKEN, template("spring_sale"))
    with pytest.raises(GraphPermanent):
        await graph.send_message(NUMBER, "wrong-token", text())
    log = fake.requests()
    assert [(e.template, e.category, e.error_code, e.status) for e in log] == [
        ("spring_sale", "marketing", None, 200),
        ("spring_sale", "marketing", 131056, 400),
        (None, None, 190, 401),
    ]
    assert log[0].wamid == first.wamid
    assert [e.wamid for e in log[1:]] == [None, None]
    assert log[0].monotonic <= log[1].monotonic <= log[2].monotonic


@pytest.mark.parametrize(
    "payload",
    [
        {"to": CUSTOMER, "type": "text", "text": {"body": "x"}},
        {"messaging_product": "sms", "to": CUSTOMER, "type": "text", "text": {"body": "x"}},
        {"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}},
        {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "sticker", "sticker": {}},
        {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "image"},
        {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "template", "template": {}},
        {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "text", "text": {}},
    ],
)
async def test_a_malformed_message_is_refused_with_code_100(
    fake: FakeGraph, graph: GraphClient, payload: dict[str, Any]
) -> None:
    with pytest.raises(GraphPermanent) as caught:
        await graph.send_message(NUMBER, TOKEN, payload)
    assert (caught.value.status, caught.value.code) == (400, 100)
    assert [e.error_code for e in fake.requests()] == [100]
    assert fake.sent == []


@pytest.mark.parametrize("code", [*sorted(CLOUD_API_ERRORS), 987654])
async def test_each_injected_error_has_graphs_shape_and_status(fake: FakeGraph, code: int) -> None:
    fake.fail_next(code)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_fake_graph(fake)), base_url="http://fake"
    ) as http:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        refused = await http.post(f"/v21.0/{NUMBER}/messages", json=text(), headers=headers)
        again = await http.post(f"/v21.0/{NUMBER}/messages", json=text(), headers=headers)
    expected = CLOUD_API_ERRORS.get(code)
    assert refused.status_code == (expected.status if expected else 400)
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "code", "error_data", "fbtrace_id"}
    assert error["code"] == code
    assert error["type"] == "OAuthException"
    if expected:
        assert error["message"] == f"(#{code}) {expected.title}"
        assert error["error_data"] == {"messaging_product": "whatsapp", "details": expected.details}
    assert again.status_code == 200  # times=1: the next send goes through
    assert [e.error_code for e in fake.requests()] == [code, None]


def test_graphs_documented_titles_for_the_dispatchers_codes() -> None:
    titles = {code: error.title for code, error in CLOUD_API_ERRORS.items()}
    assert titles[130429] == "Rate limit hit"
    assert titles[131056] == "(Business Account, Consumer Account) pair rate limit hit"
    assert titles[131047] == "Re-engagement message"
    assert titles[4] == "Application request limit reached"
    assert (CLOUD_API_ERRORS[131000].status, CLOUD_API_ERRORS[131016].status) == (500, 503)


async def test_injected_errors_reach_the_client_as_its_classes(
    fake: FakeGraph, graph: GraphClient
) -> None:
    expected: dict[int, tuple[type[GraphError], bool | None]] = {
        130429: (GraphTransient, False),
        4: (GraphTransient, False),
        131000: (GraphTransient, True),
        131016: (GraphTransient, True),
        131047: (GraphPermanent, None),
        368: (GraphPermanent, None),
    }
    for code, (kind, maybe_processed) in expected.items():
        fake.fail_next(code)
        with pytest.raises(GraphError) as caught:
            await graph.send_message(NUMBER, TOKEN, text())
        assert type(caught.value) is kind
        assert caught.value.code == code
        assert caught.value.title == CLOUD_API_ERRORS[code].title
        assert getattr(caught.value, "maybe_processed", None) is maybe_processed
        assert not caught.value.auth_failed


async def test_failures_can_target_a_recipient_or_a_number_and_repeat(
    fake: FakeGraph, graph: GraphClient
) -> None:
    fake.fail_next(131026, to="+1 650 555 1234", times=2)
    fake.fail_next(131031, phone_number_id=OTHER)
    await graph.send_message(NUMBER, TOKEN, text("447700900123"))
    for _ in range(2):
        with pytest.raises(GraphPermanent) as caught:
            await graph.send_message(NUMBER, TOKEN, text(CUSTOMER))
        assert caught.value.code == 131026
    await graph.send_message(NUMBER, TOKEN, text(CUSTOMER))
    with pytest.raises(GraphPermanent) as caught:
        await graph.send_message(OTHER, TOKEN, text(CUSTOMER))
    assert caught.value.code == 131031
    await graph.send_message(OTHER, TOKEN, text(CUSTOMER))
    assert [e.error_code for e in fake.requests()] == [None, 131026, 131026, None, 131031, None]
    with pytest.raises(ValueError, match="times"):
        fake.fail_next(4, times=0)


async def test_statuses_are_delivered_when_asked_signed_and_shaped_like_metas(
    fake: FakeGraph, graph: GraphClient, receiver: Receiver
) -> None:
    fake.set_template_category("order_update", "utility")
    sent = await graph.send_message(NUMBER, TOKEN, template("order_update"))
    assert receiver.requests == []  # nothing goes out until asked
    assert [c.status for c in fake.pending()] == ["sent", "delivered", "read"]
    answers = await fake.deliver_pending(receiver.http)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert fake.pending() == []
    assert [c.status for c in fake.delivered()] == ["sent", "delivered", "read"]
    assert all(str(r.url) == HOOK for r in receiver.requests)
    assert all(verifies(r) for r in receiver.requests)
    assert not any(verifies(r, SECRET + "x") for r in receiver.requests)
    statuses = []
    for body in receiver.bodies():
        assert body["object"] == "whatsapp_business_account"
        (entry,) = body["entry"]
        (change,) = entry["changes"]
        assert change["field"] == "messages"
        value = change["value"]
        assert value["messaging_product"] == "whatsapp"
        assert value["metadata"] == {"display_phone_number": DISPLAY, "phone_number_id": NUMBER}
        (status,) = value["statuses"]
        statuses.append(status)
    assert [(s["id"], s["status"], s["recipient_id"]) for s in statuses] == [
        (sent.wamid, "sent", CUSTOMER),
        (sent.wamid, "delivered", CUSTOMER),
        (sent.wamid, "read", CUSTOMER),
    ]
    assert [int(s["timestamp"]) for s in statuses] == [int(WALL), int(WALL) + 1, int(WALL) + 2]
    assert statuses[0]["pricing"]["category"] == "utility"
    assert statuses[0]["conversation"]["origin"] == {"type": "utility"}
    assert "errors" not in statuses[0]


async def test_an_injected_delivery_failure_is_one_failed_status_with_metas_error(
    fake: FakeGraph, graph: GraphClient, receiver: Receiver
) -> None:
    fake.fail_delivery(131049, to=CUSTOMER)
    failed = await graph.send_message(NUMBER, TOKEN, text())
    fine = await graph.send_message(NUMBER, TOKEN, text("447700900123"))
    assert fake.requests()[0].accepted  # Graph took it; delivery failed later
    await fake.deliver_pending(receiver.http)
    statuses = [b["entry"][0]["changes"][0]["value"]["statuses"][0] for b in receiver.bodies()]
    assert [(s["id"], s["status"]) for s in statuses] == [
        (failed.wamid, "failed"),
        (fine.wamid, "sent"),
        (fine.wamid, "delivered"),
        (fine.wamid, "read"),
    ]
    (error,) = statuses[0]["errors"]
    assert error["code"] == 131049
    assert error["title"] == CLOUD_API_ERRORS[131049].title
    assert error["message"] == CLOUD_API_ERRORS[131049].title
    assert error["error_data"] == {"details": CLOUD_API_ERRORS[131049].details}


async def test_a_refused_delivery_stays_queued(
    fake: FakeGraph, graph: GraphClient, receiver: Receiver
) -> None:
    await graph.send_message(NUMBER, TOKEN, text())
    receiver.status = 401
    with pytest.raises(RuntimeError, match="401"):
        await fake.deliver_pending(receiver.http)
    assert len(fake.pending()) == 3
    receiver.status = 200
    await fake.deliver_pending(receiver.http)
    assert fake.pending() == []
    assert len(receiver.requests) == 4


async def test_no_statuses_are_queued_without_a_webhook_or_for_a_refusal(
    fake: FakeGraph, graph: GraphClient
) -> None:
    await graph.send_message(NUMBER, TOKEN, text())
    assert fake.pending() == []
    fake.configure_webhook(HOOK, SECRET, {NUMBER: DISPLAY})
    fake.fail_next(130429)
    with pytest.raises(GraphTransient):
        await graph.send_message(NUMBER, TOKEN, text())
    assert fake.pending() == []
