"""GET /api/v1/conversations/{id} and /api/v1/media/{id} through a real server."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from tests.e2e.server import Server, business_echo, customer_message, status_update

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
