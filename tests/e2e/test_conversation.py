"""GET /api/v1/conversations/{id} and /api/v1/media/{id} through a real server."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from tests.e2e.server import (
    Server,
    business_echo,
    customer_message,
    fixture,
    on_account,
    sign,
    status_update,
)

CUSTOMER = "447700900123"
BASE = 1763710000


def _message(wamid: str, offset: int, **fields: Any) -> dict[str, Any]:
    return customer_message(CUSTOMER, wamid, BASE + offset, **fields)


def _echo(wamid: str, offset: int, body: str) -> dict[str, Any]:
    return business_echo(CUSTOMER, wamid, BASE + offset, body)


def _status(wamid: str, offset: int, status: str) -> dict[str, Any]:
    return status_update(CUSTOMER, wamid, BASE + offset, status)


def test_a_conversation_reads_as_it_happened(server: Server) -> None:
    payloads = [
        _message("wamid.C1", 1, text={"body": "Can I move my appointment?"}),
        _message(
            "wamid.C2",
            2,
            text={"body": "To Thursday, please"},
            context={"from": CUSTOMER, "id": "wamid.C1"},
        ),
        _message(
            "wamid.C3", 3, type="reaction", reaction={"message_id": "wamid.C1", "emoji": "👍"}
        ),
        _message(
            "wamid.C4",
            4,
            type="edit",
            edit={
                "original_message_id": "wamid.C1",
                "message": {
                    "type": "text",
                    "text": {"body": "Can I move my appointment to Friday?"},
                },
            },
        ),
        _message("wamid.C5", 5, text={"body": "oops, wrong chat"}),
        _message("wamid.C6", 6, type="revoke", revoke={"original_message_id": "wamid.C5"}),
        _echo("wamid.C7", 7, "Friday at 10:00 is booked."),
        _status("wamid.C7", 8, "sent"),
        _status("wamid.C7", 9, "delivered"),
        _status("wamid.C7", 10, "read"),
    ]
    for payload in payloads:
        assert server.post_webhook(json.dumps(payload).encode()).status_code == 200
    server.records_of("wamid.C7")
    contact = server.get("/api/v1/contacts", phone="+" + CUSTOMER).json()["contact_id"]

    def complete() -> dict[str, Any] | None:
        chat = server.get(f"/api/v1/conversations/{contact}").json()
        ours = {m["wamid"]: m for m in chat["messages"] if (m["wamid"] or "").startswith("wamid.C")}
        done = (
            "wamid.C1" in ours
            and len(ours["wamid.C1"]["versions"]) == 2
            and len(ours.get("wamid.C7", {}).get("receipts", {})) == 3
        )
        return ours if done else None

    ours = server.wait_for(complete)
    assert list(ours) == ["wamid.C1", "wamid.C2", "wamid.C5", "wamid.C7"]  # folded items are gone
    first = ours["wamid.C1"]
    assert [v["text"] for v in first["versions"]] == [
        "Can I move my appointment?",
        "Can I move my appointment to Friday?",
    ]
    assert first["text"] == "Can I move my appointment to Friday?"
    assert [r["emoji"] for r in first["reactions"]] == ["👍"]
    assert ours["wamid.C2"]["reply_to"] == "wamid.C1"
    revoked = ours["wamid.C5"]
    assert revoked["revoked"] is True
    assert revoked["text"] == "oops, wrong chat"  # the original is kept
    echo = ours["wamid.C7"]
    assert (echo["source"], echo["direction"]) == ("business_app", "outbound")
    assert set(echo["receipts"]) == {"sent", "delivered", "read"}
    assert first["source"] == "cloud_api"


RECEIVER = "447700900155"
RECEIVER_NAME = "Priya Raman"
OPTED_OUT = 131050
OTHER_NUMBER_ID = "309876543210987"
OTHER_DISPLAY = "15550000002"
OTHER_SECRET = "e2e-app-secret-of-the-receipts-account"


def _failed(template: str, wamid: str, offset: int) -> dict[str, Any]:
    """A failed status of ``wamid`` to the receipts customer, Meta's error as in the fixture."""
    payload = fixture(template)
    item = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
    item.update({"id": wamid, "timestamp": str(BASE + offset), "recipient_id": RECEIVER})
    return payload


def receipts_conversation(server: Server) -> str:
    """A customer who wrote once (profile name :data:`RECEIVER_NAME`), a business
    message that was read, a marketing message refused with 131050, and a failed
    status (131047) for a message this archive never captured. Its contact id."""
    greeting = customer_message(RECEIVER, "wamid.R0", BASE + 100, text={"body": "Hello there"})
    greeting["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = RECEIVER_NAME
    payloads = [
        greeting,
        business_echo(RECEIVER, "wamid.R1", BASE + 101, "Your order has shipped."),
        status_update(RECEIVER, "wamid.R1", BASE + 102, "sent"),
        status_update(RECEIVER, "wamid.R1", BASE + 103, "delivered"),
        status_update(RECEIVER, "wamid.R1", BASE + 104, "read"),
        business_echo(RECEIVER, "wamid.R2", BASE + 105, "Spring sale: 20% off."),
        status_update(RECEIVER, "wamid.R2", BASE + 106, "sent"),
        _failed("status_failed_marketing_stopped", "wamid.R2", 107),
        _failed("status_failed", "wamid.R9", 108),  # its message is not in the archive
    ]
    for payload in payloads:
        assert server.post_webhook(json.dumps(payload).encode()).status_code == 200
    contact: str = server.wait_for(
        lambda: server.get("/api/v1/contacts", phone="+" + RECEIVER).json().get("contact_id")
    )

    def complete() -> bool:
        chat = server.get(f"/api/v1/conversations/{contact}").json()
        receipts = sum(len(m["receipts"]) for m in chat.get("messages", []))
        return receipts == 5 and len(chat["unmatched_statuses"]) == 1

    server.wait_for(complete)
    return contact


def test_delivery_states_failures_and_the_customer_are_shown(server: Server) -> None:
    contact = receipts_conversation(server)
    chat = server.get(f"/api/v1/conversations/{contact}").json()
    assert chat["customer"] == {"name": RECEIVER_NAME, "wa_id": RECEIVER}
    ours = {m["wamid"]: m for m in chat["messages"]}
    assert ours["wamid.R0"]["delivery"] is None  # the customer's own message
    read = ours["wamid.R1"]
    assert read["delivery"] == "read"
    assert read["receipts"] == {
        "sent": "2025-11-21T07:28:22Z",
        "delivered": "2025-11-21T07:28:23Z",
        "read": "2025-11-21T07:28:24Z",
    }
    assert read["delivery_error"] is None
    refused = ours["wamid.R2"]
    assert refused["delivery"] == "failed"
    assert set(refused["receipts"]) == {"sent", "failed"}
    assert refused["delivery_error"]["code"] == OPTED_OUT
    assert refused["delivery_error"]["title"].startswith("Unable to deliver the message.")
    (orphan,) = chat["unmatched_statuses"]
    assert (orphan["wamid"], orphan["status"]) == ("wamid.R9", "failed")
    assert orphan["occurred_at"] == "2025-11-21T07:28:28Z"
    assert orphan["error"] == {"code": 131047, "title": "Re-engagement message"}


def test_the_customer_is_named_only_to_who_may_read_their_account(server: Server) -> None:
    contact = receipts_conversation(server)
    other = server.add_account(
        phone_number_id=OTHER_NUMBER_ID,
        display_phone_number=OTHER_DISPLAY,
        app_secret=OTHER_SECRET,
        verify_token="receipts-other",
    )
    outsider = server.officer_of("receipts-outsider", other)
    refused = server.client.get(f"/api/v1/conversations/{contact}", headers=outsider)
    assert refused.status_code == 404
    assert RECEIVER_NAME not in refused.text
    # The same customer writes to the other account under another profile name: its
    # officer sees that conversation named as that account's records name it.
    # Earlier than the first account's messages, so a name taken from those would win.
    hello = customer_message(RECEIVER, "wamid.R20", BASE + 50, text={"body": "Hi other shop"})
    hello["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = "P. R."
    body = json.dumps(on_account(hello, OTHER_NUMBER_ID, OTHER_DISPLAY)).encode()
    assert server.post_webhook(body, sign(body, OTHER_SECRET)).status_code == 200

    def seen() -> dict[str, Any] | None:
        response = server.client.get(f"/api/v1/conversations/{contact}", headers=outsider)
        return response.json() if response.status_code == 200 else None

    theirs = server.wait_for(seen)
    assert theirs["customer"] == {"name": "P. R.", "wa_id": RECEIVER}
    assert RECEIVER_NAME not in json.dumps(theirs)
    assert [m["wamid"] for m in theirs["messages"]] == ["wamid.R20"]
    assert theirs["unmatched_statuses"] == []


def test_a_status_to_a_business_scoped_id_finds_its_customer(server: Server) -> None:
    # The customer is known only by a business-scoped user id: no number at all.
    hello = fixture("message_text_bsuid_username")
    wamid = hello["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    failed = fixture("status_delivered_bsuid")
    item = failed["entry"][0]["changes"][0]["value"]["statuses"][0]
    item.update(
        {
            "id": "wamid.BSUID-NOT-ARCHIVED",
            "status": "failed",
            "errors": [{"code": OPTED_OUT, "title": "Marketing messages stopped"}],
        }
    )
    for payload in (hello, failed):
        assert server.post_webhook(json.dumps(payload).encode()).status_code == 200
    contact = server.records_of(wamid)[0]["contact_id"]

    def shown() -> dict[str, Any] | None:
        chat = server.get(f"/api/v1/conversations/{contact}").json()
        return chat if chat["unmatched_statuses"] else None

    chat = server.wait_for(shown)
    assert chat["customer"] == {"name": "Sheena Nelson", "wa_id": None}
    (status,) = chat["unmatched_statuses"]
    assert (status["wamid"], status["status"]) == ("wamid.BSUID-NOT-ARCHIVED", "failed")
    assert status["error"] == {"code": OPTED_OUT, "title": "Marketing messages stopped"}


def test_media_streams_decrypted_to_permitted_readers_only(server: Server) -> None:
    photo = b"\x89PNG\r\n\x1a\n conversation test image"
    chat = "13/03/2024, 10:00 - +44 7700 900124: IMG-20240312-WA0001.jpg (file attached)\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("WhatsApp Chat with Sam.txt", chat)
        archive.writestr("IMG-20240312-WA0001.jpg", photo)
    imported = server.client.post(
        "/api/v1/imports/chat-export",
        files={"file": ("chat.zip", buffer.getvalue())},
        data={"account_id": server.account_id, "contact": "+447700900124"},
        headers=server.officer,
    )
    assert imported.status_code == 201, imported.text
    contact = imported.json()["contact_id"]
    conversation = server.get(f"/api/v1/conversations/{contact}").json()
    media = [m for message in conversation["messages"] for m in message["media"]]
    assert len(media) == 1
    assert media[0]["state"] == "fetched"
    streamed = server.get(media[0]["url"])
    assert streamed.status_code == 200
    assert streamed.content == photo
    # Nobody without a content role on that account can fetch it.
    assert server.client.get(media[0]["url"], headers=server.admin).status_code == 403
    assert server.client.get(media[0]["url"]).status_code == 401
    assert server.get("/api/v1/conversations/ct_does_not_exist").status_code == 404
