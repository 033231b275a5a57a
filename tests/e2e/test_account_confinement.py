"""Message ids are Meta's, not ours: two business accounts may carry the same one.

Account B, signing with its own app secret, posts a status, an edit, a reaction, a
revoke and a reply for the ids of account A's messages (and a message of its own
under one of those ids). Nothing of it may reach A's messages: not in the
conversation, the message view, the console or search.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from tests.e2e.server import (
    Server,
    business_echo,
    customer_message,
    fixed_wamid,
    on_account,
    sign,
    status_update,
)
from tests.e2e.test_console import BROWSER, sign_in

CUSTOMER = "447700900222"
BASE = 1763720000
B_SECRET = "e2e-app-secret-of-account-b"
B_PHONE_ID = "206540352242922"
B_NUMBER = "15550783882"

ORIGINAL = "Original question in A"
SECOND = "Second message in A"
ANSWER = "Answer from A"
B_OWN = "Same id, account B's own message"
REWRITTEN = "Rewritten by account B"
REPLY = "Reply sent in account B"

W1 = fixed_wamid(CUSTOMER, 1)
W2 = fixed_wamid(CUSTOMER, 2)
W3 = fixed_wamid(CUSTOMER, 3, outbound=True)
EDIT, REACTION, REVOKE, REPLY_ID = (fixed_wamid(CUSTOMER, n) for n in (4, 5, 6, 7))


def _b(payload: dict[str, Any]) -> dict[str, Any]:
    return on_account(payload, B_PHONE_ID, B_NUMBER)


def _message(wamid: str, offset: int, **fields: Any) -> dict[str, Any]:
    return customer_message(CUSTOMER, wamid, BASE + offset, **fields)


@pytest.fixture(scope="module")
def colliding(server: Server) -> dict[str, Any]:
    """Account B (its own secret), and both accounts' records once projected."""
    account_b = server.add_account(
        phone_number_id=B_PHONE_ID,
        display_phone_number=B_NUMBER,
        app_secret=B_SECRET,
        verify_token="e2e-verify-token-b",
    )
    posts = [
        (None, _message(W1, 1, text={"body": ORIGINAL})),
        (None, _message(W2, 2, text={"body": SECOND})),
        (None, business_echo(CUSTOMER, W3, BASE + 3, ANSWER)),
        (None, status_update(CUSTOMER, W3, BASE + 4, "sent")),
        # Account B, with B's own valid signature, uses A's ids.
        (B_SECRET, _b(_message(W1, 5, text={"body": B_OWN}))),
        (B_SECRET, _b(business_echo(CUSTOMER, W3, BASE + 6, "B's echo"))),
        (B_SECRET, _b(status_update(CUSTOMER, W3, BASE + 7, "read"))),
        (
            B_SECRET,
            _b(
                _message(
                    EDIT,
                    8,
                    type="edit",
                    edit={
                        "original_message_id": W1,
                        "message": {"type": "text", "text": {"body": REWRITTEN}},
                    },
                )
            ),
        ),
        (
            B_SECRET,
            _b(_message(REACTION, 9, type="reaction", reaction={"message_id": W1, "emoji": "🔥"})),
        ),
        (
            B_SECRET,
            _b(_message(REVOKE, 10, type="revoke", revoke={"original_message_id": W2})),
        ),
        (B_SECRET, _b(_message(REPLY_ID, 11, text={"body": REPLY}, context={"id": W1}))),
    ]
    for secret, payload in posts:
        body = json.dumps(payload).encode()
        signature = sign(body, secret) if secret else None
        assert server.post_webhook(body, signature).status_code == 200

    # Every record carrying each id (as its own or the one it refers to) is projected.
    for wamid, count in ((W1, 5), (W2, 2), (W3, 4)):
        server.wait_for(lambda w=wamid, n=count: len(server.records_of(w)) == n)
    contact: str = server.get("/api/v1/contacts", phone="+" + CUSTOMER).json()["contact_id"]
    chat = server.get(f"/api/v1/conversations/{contact}").json()
    messages = {(m["account_id"], m["wamid"]): m for m in chat["messages"]}
    return {"messages": messages, "contact": contact, "b": account_b}


def test_the_conversation_keeps_each_accounts_items_apart(
    server: Server, colliding: dict[str, Any]
) -> None:
    messages, b = colliding["messages"], colliding["b"]
    a = server.account_id
    first = messages[a, W1]
    assert [v["text"] for v in first["versions"]] == [ORIGINAL]
    assert first["reactions"] == []
    assert list(messages[a, W3]["receipts"]) == ["sent"]
    assert messages[a, W2]["revoked"] is False
    # Within B they fold as usual: B's items were projected, and went to B's messages.
    assert [v["text"] for v in messages[b, W1]["versions"]] == [B_OWN, REWRITTEN]
    assert [r["emoji"] for r in messages[b, W1]["reactions"]] == ["🔥"]
    assert list(messages[b, W3]["receipts"]) == ["read"]
    assert messages[b, REPLY_ID]["reply_to"] == W1


def test_the_message_view_keeps_each_accounts_state(
    server: Server, colliding: dict[str, Any]
) -> None:
    a, b = server.account_id, colliding["b"]
    echoes = {r["account_id"]: r for r in server.records_of(W3) if r["kind"] == "echo"}
    assert echoes[a]["delivery_status"] == "sent"
    assert echoes[b]["delivery_status"] == "read"
    one = server.get(f"/api/v1/messages/{echoes[a]['id']}").json()
    assert one["delivery_status"] == "sent"
    second = colliding["messages"][a, W2]
    assert server.get(f"/api/v1/messages/{second['id']}").json()["revoked"] is False
    revoke = [r for r in server.records_of(W2) if r["type"] == "revoke"]
    assert [r["account_id"] for r in revoke] == [b]


def _bubble(html: str, record_id: int) -> str:
    match = re.search(rf'<li id="m{record_id}".*?</li>\s*(?=<li id="m|</ol>)', html, re.DOTALL)
    assert match, record_id
    return match.group()


def test_the_console_quotes_and_folds_within_an_account(
    server: Server, colliding: dict[str, Any]
) -> None:
    server.create_user("confined-officer", "compliance_officer")
    with httpx.Client(base_url=server.url, timeout=10, headers=BROWSER) as console:
        sign_in(console, "confined-officer")
        page = console.get(f"/conversations/{colliding['contact']}")
    assert page.status_code == 200, page.text
    messages, a, b = colliding["messages"], server.account_id, colliding["b"]
    first = _bubble(page.text, messages[a, W1]["id"])
    assert REWRITTEN not in first
    assert "🔥" not in first
    answer = _bubble(page.text, messages[a, W3]["id"])
    assert "receipt-sent" in answer
    assert "receipt-read" not in answer
    assert "deleted" not in _bubble(page.text, messages[a, W2]["id"])
    reply = _bubble(page.text, messages[b, REPLY_ID]["id"])
    assert f'href="#m{messages[b, W1]["id"]}"' in reply
    assert ORIGINAL not in reply


def test_search_shows_each_record_under_its_own_account(
    server: Server, colliding: dict[str, Any]
) -> None:
    def search(query: str) -> list[dict[str, Any]]:
        response = server.client.post(
            "/api/v1/search", json={"query": query}, headers=server.officer
        )
        assert response.status_code == 200, response.text
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    rewritten = search('"Rewritten by account B"')
    assert [(r["account_id"], r["type"]) for r in rewritten] == [(colliding["b"], "edit")]
    assert [(r["account_id"], r["revoked"]) for r in search('"Second message in A"')] == [
        (server.account_id, False)
    ]
    assert [r["account_id"] for r in search('"Original question in A"')] == [server.account_id]


def test_a_number_added_under_the_same_app_gets_its_own_items(
    server: Server, colliding: dict[str, Any]
) -> None:
    # The worker has read the accounts' secrets by now (``colliding`` was projected);
    # account C shares A's app secret and is added after that.
    c_phone_id, c_number = "706540352242922", "15550783883"
    account_c = server.add_account(
        phone_number_id=c_phone_id,
        display_phone_number=c_number,
        verify_token="e2e-verify-token-c",
    )
    wamid = fixed_wamid(CUSTOMER, 8)
    payload = on_account(_message(wamid, 12, text={"body": "For account C"}), c_phone_id, c_number)
    assert server.post_webhook(json.dumps(payload).encode()).status_code == 200

    (record,) = server.records_of(wamid)
    assert record["account_id"] == account_c
    assert record["account_id"] != server.account_id


def test_templates_and_consent_of_another_account_are_not_there(server: Server) -> None:
    """An officer of one account neither sees nor changes another's templates or
    consent: each is a 404, as if it did not exist."""
    theirs = server.add_account(
        phone_number_id="916540352242922",
        display_phone_number="+15550199871",
        verify_token="e2e-verify-token-c",
        waba_id="3065",
    )
    mine = server.add_account(
        phone_number_id="926540352242922",
        display_phone_number="+15550199872",
        verify_token="e2e-verify-token-d",
        waba_id="4065",
    )
    officer = server.officer
    made = server.client.post(
        "/api/v1/templates",
        json={
            "account_id": theirs,
            "name": "confined_update",
            "language": "en",
            "category": "utility",
            "components": [{"type": "BODY", "text": "Hello"}],
        },
        headers=officer,
    )
    assert made.status_code == 201, made.text
    template = made.json()["id"]
    entry = {
        "category": "marketing",
        "action": "opt_in",
        "method": "web_form",
        "evidence": "the confined form",
        "occurred_at": "2026-11-03T10:00:00+00:00",
    }
    recorded = server.client.post(
        "/api/v1/consent", json=entry | {"account_id": theirs, "phone": "+447700900777"},
        headers=officer,
    )  # fmt: skip
    assert recorded.status_code == 201, recorded.text
    contact = recorded.json()["contact_id"]

    me = server.officer_of("e2e-confined-officer", mine)
    client = server.client
    assert client.get("/api/v1/templates", headers=me).json() == []
    for answer in (
        client.get("/api/v1/templates", params={"account_id": theirs}, headers=me),
        client.get(f"/api/v1/templates/{template}", headers=me),
        client.post(
            "/api/v1/templates",
            json={
                "account_id": theirs,
                "name": "mine_now",
                "language": "en",
                "category": "utility",
                "components": [{"type": "BODY", "text": "Hi"}],
            },
            headers=me,
        ),
        client.patch(f"/api/v1/templates/{template}", json={"category": "marketing"}, headers=me),
        client.post(f"/api/v1/templates/{template}/submit", headers=me),
        client.post(f"/api/v1/templates/{template}/approve", json={}, headers=me),
        client.post(
            "/api/v1/consent",
            json=entry | {"account_id": theirs, "contact_id": contact},
            headers=me,
        ),
        client.get(f"/api/v1/consent/{contact}", params={"account_id": theirs}, headers=me),
    ):
        assert answer.status_code == 404, (answer.request.url, answer.text)
    assert client.get(f"/api/v1/consent/{contact}", headers=me).json() == []
    exported = client.get(f"/api/v1/consent/{contact}/export", headers=me)
    assert exported.json() == {"contact_id": contact, "entries": []}
    assert exported.headers["content-disposition"].startswith("attachment; ")
    # Nothing changed: the template is still the draft it was, with its one entry.
    assert client.get(f"/api/v1/templates/{template}", headers=officer).json()["status"] == "draft"
    assert len(client.get(f"/api/v1/consent/{contact}", headers=officer).json()) == 1
