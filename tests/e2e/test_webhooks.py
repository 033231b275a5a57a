"""Webhook capture through a real server: handshake, signatures, every documented
shape sealed verbatim, idempotency, forward-only statuses, history order,
edits and revokes, identities, and no plaintext at rest."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from api.bootstrap import open_services
from api.settings import load_settings
from archiver.records.models import Record
from archiver.vault.models import SealedObject
from tests.conftest import database_bytes
from tests.e2e.server import (
    APP_SECRET,
    FIXTURES,
    VERIFY_TOKEN,
    Server,
    fixture,
    fixture_bytes,
    sign,
    wamid_number,
)

ALL_FIXTURES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def expected_items(payload: dict[str, Any]) -> list[Any]:
    """The items of a payload, as documented by Meta, each of which must be kept whole."""
    items: list[Any] = []
    for entry in payload["entry"]:
        for change in entry["changes"]:
            field, value = change["field"], change["value"]
            if field == "messages":
                items += value.get("messages", []) + value.get("statuses", [])
            elif field == "smb_message_echoes":
                items += value["message_echoes"]
            elif field == "history":
                for chunk in value.get("history", []):
                    if "errors" in chunk:
                        items.append(chunk)
                    for thread in chunk.get("threads", []):
                        items += thread["messages"]
                items += value.get("messages", [])
            elif field == "smb_app_state_sync":
                items += value["state_sync"]
            elif field == "user_preferences":
                items += value["user_preferences"]
            elif field == "calls":
                items += value["calls"]
            else:
                items.append(value)
    return items


def test_verification_handshake(server: Server) -> None:
    ok = server.client.get(
        "/webhooks/whatsapp",
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert (ok.status_code, ok.text) == (200, "1158201444")
    wrong = server.client.get(
        "/webhooks/whatsapp",
        params={"hub.mode": "subscribe", "hub.verify_token": "not-it", "hub.challenge": "1"},
    )
    assert wrong.status_code == 403
    assert "1" not in wrong.text.replace("verify", "")
    assert server.client.get("/webhooks/whatsapp").status_code == 400


def _files(root: Path) -> set[Path]:
    """The vault's objects but the audit trail's anchors: a refusal is audited, and
    the worker anchors the trail whenever it has new events."""
    objects = root / "vault" / "objects"
    return {p for p in objects.rglob("*") if p.is_file() and "audit-checkpoint" not in p.parts}


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=", "sha256=" + "0" * 64, "md5=abc", sign(b"other body")],
    ids=["absent", "empty", "bare", "zeros", "other-scheme", "other-body"],
)
def test_bad_signature_is_refused_and_nothing_is_stored(
    server: Server, signature: str | None
) -> None:
    body = fixture_bytes("message_text").replace(b"wamid.", b"wamid.UNSIGNED")
    before = _files(server.data_dir)
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    response = server.client.post("/webhooks/whatsapp", content=body, headers=headers)
    assert response.status_code == 401
    assert _files(server.data_dir) == before
    wamid = fixture("message_text")["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert (
        server.get("/api/v1/messages", wamid=wamid.replace("wamid.", "wamid.UNSIGNED")).status_code
        == 404
    )


def test_signature_of_another_secret_is_refused(server: Server) -> None:
    body = fixture_bytes("message_text")
    assert server.post_webhook(body, sign(body, APP_SECRET + "x")).status_code == 401


def test_oversized_body_is_413(server: Server) -> None:
    body = b'{"object": "whatsapp_business_account", "pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    before = _files(server.data_dir)
    assert server.post_webhook(body).status_code == 413
    assert _files(server.data_dir) == before


def test_oversized_body_without_announced_length_is_413(server: Server) -> None:
    body = b'{"object": "whatsapp_business_account", "pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    before = _files(server.data_dir)
    response = server.client.post(
        "/webhooks/whatsapp",
        content=iter(chunks),  # sent chunked: no Content-Length to refuse it early
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)},
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413
    assert _files(server.data_dir) == before


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_other_methods_are_405(server: Server, method: str) -> None:
    body = fixture_bytes("message_text")
    before = _files(server.data_dir)
    response = server.client.request(
        method, "/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": sign(body)}
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert _files(server.data_dir) == before


def test_signed_non_json_is_400(server: Server) -> None:
    before = _files(server.data_dir)
    assert server.post_webhook(b"not json at all").status_code == 400
    assert _files(server.data_dir) == before


def test_every_documented_shape_is_sealed_verbatim(server: Server) -> None:
    expected: list[tuple[str, Any, Any]] = []
    for name in ALL_FIXTURES:
        payload = fixture(name)
        response = server.post_webhook(fixture_bytes(name))
        assert response.status_code == 200, (name, response.text)
        metadata = payload["entry"][0]["changes"][0]["value"].get("metadata")
        expected += [(name, item, metadata) for item in expected_items(payload)]

    def all_found() -> list[dict[str, Any]] | None:
        records = server.all_records(server.account_id)
        items = [json.dumps(r["content"]["item"], sort_keys=True) for r in records]
        missing = [n for n, item, _ in expected if json.dumps(item, sort_keys=True) not in items]
        return records if not missing else None

    records = server.wait_for(all_found, timeout=30)
    by_item = {json.dumps(r["content"]["item"], sort_keys=True): r for r in records}
    for name, item, metadata in expected:
        record = by_item[json.dumps(item, sort_keys=True)]
        assert record["content"]["item"] == item, name
        assert record["content"]["metadata"] == metadata, name
    kinds = {(r["kind"], r["source"]) for r in records}
    assert {
        ("message", "cloud_api"),
        ("echo", "business_app"),
        ("history", "history_sync"),
    } <= kinds
    assert {("status", "cloud_api"), ("event", "cloud_api")} <= kinds
    unknown = [r for r in records if r["type"] == "hologram"]
    assert len(unknown) == 1
    assert unknown[0]["content"]["item"]["hologram"]


def _message(wamid: str, body: str, **extra: Any) -> dict[str, Any]:
    payload = fixture("message_text")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message.update({"id": wamid, "text": {"body": body}} | extra)
    return payload


def _post(server: Server, payload: dict[str, Any]) -> None:
    response = server.post_webhook(json.dumps(payload).encode())
    assert response.status_code == 200, response.text


def test_redelivery_creates_no_duplicate(server: Server) -> None:
    body = json.dumps(_message("wamid.REDELIVERED", "deliver me twice")).encode()
    for _ in range(3):
        assert server.post_webhook(body).status_code == 200
    server.records_of("wamid.REDELIVERED")
    # Let the later deliveries be projected too, then count.
    marker = _message("wamid.REDELIVERED-MARK", "after")
    _post(server, marker)
    server.records_of("wamid.REDELIVERED-MARK")
    records = server.get("/api/v1/messages", wamid="wamid.REDELIVERED").json()
    assert len(records) == 1


def _status(wamid: str, status: str, timestamp: int) -> dict[str, Any]:
    payload = fixture("status_delivered")
    item = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
    item.update({"id": wamid, "status": status, "timestamp": str(timestamp)})
    return payload


def _delivery(server: Server, wamid: str, statuses: int) -> str:
    def probe() -> list[dict[str, Any]] | None:
        records = server.get("/api/v1/messages", wamid=wamid).json()
        return records if isinstance(records, list) and len(records) >= statuses else None

    records = server.wait_for(probe)
    return str(records[-1]["delivery_status"])


def test_statuses_only_move_forward(server: Server) -> None:
    for n, status in enumerate(["sent", "read", "delivered"]):
        _post(server, _status("wamid.FORWARD", status, 1763700000 + n))
    assert _delivery(server, "wamid.FORWARD", 3) == "read"


def test_failed_is_terminal(server: Server) -> None:
    for n, status in enumerate(["sent", "failed", "delivered", "read"]):
        _post(server, _status("wamid.TERMINAL", status, 1763700000 + n))
    assert _delivery(server, "wamid.TERMINAL", 4) == "failed"


def test_history_chunks_out_of_order_assemble(server: Server) -> None:
    second, first = fixture("history_phase0_chunk2"), fixture("history_phase0_chunk1")
    for payload in (second, first):
        _post(server, payload)
    threads: dict[str, list[dict[str, Any]]] = {}
    for payload in (first, second):
        for chunk in payload["entry"][0]["changes"][0]["value"]["history"]:
            for thread in chunk["threads"]:
                threads.setdefault(thread["id"], []).extend(thread["messages"])
    for messages in threads.values():
        last = server.records_of(messages[-1]["id"])[0]
        conversation = server.get(f"/api/v1/contacts/{last['contact_id']}/messages").json()[
            "records"
        ]
        ours = {m["id"] for m in messages}  # other tests add history for the same contact
        history = [
            r["wamid"] for r in conversation if r["wamid"] in ours and r["kind"] == "history"
        ]
        expected = sorted(messages, key=lambda m: (int(m["timestamp"]), m["id"]))
        assert history == [m["id"] for m in expected]


def _action(wamid: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    payload = _message(wamid, "", type=kind, **{kind: body})
    del payload["entry"][0]["changes"][0]["value"]["messages"][0]["text"]
    return payload


def test_edits_and_revokes_keep_every_version(server: Server) -> None:
    new_text = {"type": "text", "text": {"body": "edited words"}}
    revoke = _action("wamid.REVOKE", "revoke", {"original_message_id": "wamid.ORIGINAL"})
    edit = _action(
        "wamid.EDIT", "edit", {"original_message_id": "wamid.ORIGINAL", "message": new_text}
    )
    original = _message("wamid.ORIGINAL", "the original words")
    for payload in (revoke, original, edit):  # the revoke arrives before its message
        _post(server, payload)

    def probe() -> list[dict[str, Any]] | None:
        records = server.get("/api/v1/messages", wamid="wamid.ORIGINAL").json()
        return records if isinstance(records, list) and len(records) == 3 else None

    records = {r["type"]: r for r in server.wait_for(probe)}
    assert records["text"]["revoked"] is True
    assert records["text"]["content"]["item"]["text"]["body"] == "the original words"
    assert records["edit"]["content"]["item"]["edit"]["message"] == new_text
    assert records["revoke"]["related_wamid"] == "wamid.ORIGINAL"


def test_a_message_whose_revoke_was_projected_earlier_is_revoked(server: Server) -> None:
    revoke = _action("wamid.REVOKE-FIRST", "revoke", {"original_message_id": "wamid.LATE"})
    _post(server, revoke)
    server.records_of("wamid.REVOKE-FIRST")  # projected before the message is even posted
    _post(server, _message("wamid.LATE", "words taken back"))

    def probe() -> list[dict[str, Any]] | None:
        records = server.get("/api/v1/messages", wamid="wamid.LATE").json()
        texts = [r for r in records if r["type"] == "text"] if isinstance(records, list) else []
        return texts or None

    (message,) = server.wait_for(probe)
    assert message["revoked"] is True


def test_identities_link_phone_and_business_scoped_ids(server: Server) -> None:
    with_both = fixture("message_text_bsuid_parent")
    value = with_both["entry"][0]["changes"][0]["value"]
    user_id = value["messages"][0]["from_user_id"]
    only_bsuid = copy.deepcopy(with_both)
    message = only_bsuid["entry"][0]["changes"][0]["value"]["messages"][0]
    message.update({"id": "wamid.BSUID-ONLY", "from": ""})
    only_bsuid["entry"][0]["changes"][0]["value"]["contacts"] = [
        {"profile": {"name": "x"}, "wa_id": "", "user_id": user_id}
    ]
    _post(server, with_both)
    first = server.records_of(value["messages"][0]["id"])[0]
    _post(server, only_bsuid)
    second = server.records_of("wamid.BSUID-ONLY")[0]
    assert first["contact_id"] == second["contact_id"]
    by_phone = server.get("/api/v1/contacts", phone="+16505551234").json()
    assert by_phone["contact_id"] == first["contact_id"]


def test_archive_api_needs_a_permitted_principal(server: Server) -> None:
    assert server.client.get("/api/v1/accounts").status_code == 401
    wrong = {"Authorization": "Bearer sr_000000000000_not-a-real-token-at-all"}
    assert server.client.get("/api/v1/accounts", headers=wrong).status_code == 401
    # An admin manages accounts but reads no message content.
    assert server.client.get("/api/v1/accounts", headers=server.admin).status_code == 200
    path = f"/api/v1/accounts/{server.account_id}/records"
    assert server.client.get(path, headers=server.admin).status_code == 403
    assert server.get(path).status_code == 200


AT_REST_FIXTURES = (
    "message_text",
    "message_text_japanese",
    "smb_app_state_sync_add",
    "message_reply_context",
    "message_reaction",
    "message_image",
    "smb_message_echo_text",
    "status_sent",
    "status_read",
    "history_phase0_chunk1",
)
_WAMID = re.compile(rb"wamid\.[A-Za-z0-9+/=_-]+")


def base64_forms(secret: bytes) -> set[bytes]:
    """The stretches of base64 that encode ``secret`` wherever it starts in a blob
    (three alignments), in the standard and the URL-safe alphabet."""
    forms = set()
    for skew in range(3):
        encoded = base64.b64encode(bytes(skew) + secret)
        inner = encoded[-(-8 * skew // 6) : 8 * (skew + len(secret)) // 6]
        forms |= {inner, inner.translate(bytes.maketrans(b"+/", b"-_"))}
    return forms


def _outbound_at_rest(server: Server) -> list[str]:
    """An outbox message and a consent entry with its evidence: what they carry
    must be sealed too. Returns the texts and the number to look for."""
    number, text = "447700900777", "Your parcel ZQXJ-4471 waits at the depot"
    evidence = "signed paper form KQW-99 witnessed by Imelda Quist"
    server.create_user("atrest-agent", "agent", account=server.account_id)
    agent = server.token("atrest-agent", "outbox.send")
    sent = server.client.post(
        "/api/v1/outbox",
        json={
            "account_id": server.account_id,
            "to": number,
            "content": {"kind": "text", "text": text},
            "idempotency_key": "at-rest-1",
        },
        headers=agent,
    )
    assert sent.status_code == 201, sent.text  # blocked (no window), and sealed all the same
    recorded = server.client.post(
        "/api/v1/consent",
        json={
            "account_id": server.account_id,
            "phone": "+" + number,
            "category": "marketing",
            "action": "opt_in",
            "method": "web_form",
            "evidence": evidence,
            "occurred_at": "2026-12-01T10:00:00Z",
        },
        headers=server.officer,
    )
    assert recorded.status_code == 201, recorded.text
    return [number, text, "ZQXJ-4471", evidence, "Imelda Quist"]


def test_nothing_readable_at_rest(server: Server) -> None:
    for name in AT_REST_FIXTURES:
        server.post_webhook(fixture_bytes(name))
    for name in AT_REST_FIXTURES:  # wait until what carries an id is projected
        if found := _WAMID.search(fixture_bytes(name)):
            server.records_of(found.group().decode())
    secrets = [
        "Sheena Nelson",
        "16505551234",
        "819012345678",
        "明日",
        "山田",
        "Pablo Morales",
        APP_SECRET,
        VERIFY_TOKEN,
    ]
    text = fixture("message_text")["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"]
    secrets.append(text)
    secrets += _outbound_at_rest(server)
    # Meta's ids carry the customer's number: the ids, their base64 bodies, and the
    # numbers they decode to, in digits or in base64 at any alignment.
    wamids = {w.decode() for name in AT_REST_FIXTURES for w in _WAMID.findall(fixture_bytes(name))}
    numbers = {wamid_number(w) for w in wamids} - {None}
    assert {"16505551234", "819012345678"} <= numbers
    hidden = {s.encode() for s in secrets}
    hidden |= {w.encode() for w in wamids} | {w.removeprefix("wamid.").encode() for w in wamids}
    for number in numbers:
        assert number is not None
        hidden |= {number.encode(), *base64_forms(number.encode())}
    hidden.add(b"1003383421387001")  # Meta's media id: kept only in the sealed record
    files = [p for p in server.data_dir.rglob("*") if p.is_file() and p.name != "master.key"]
    files.append(server.log_path)  # and nothing personal in the server's own log
    stores = [(path.name, path.read_bytes()) for path in files]
    if "STRONGROOM_DATABASE_URL" in server.env:
        url = server.env["STRONGROOM_DATABASE_URL"]
        stores.append(("postgresql", asyncio.run(database_bytes(url))))
    else:
        assert any(p.suffix == ".db" for p in files)
    for name, data in stores:
        assert b"wamid." not in data, name
        for secret in hidden:
            assert secret not in data, (name, secret)


def test_every_item_of_an_unknown_array_becomes_a_record_that_outlives_the_journal(
    server: Server,
) -> None:
    payload = fixture("message_text")
    value = payload["entry"][0]["changes"][0]["value"]
    del value["messages"]
    value["holograms"] = [
        {"id": f"holo.{n}", "timestamp": "1763701000", "from": "16505551234", "n": n}
        for n in range(3)
    ]
    _post(server, payload)
    _post(server, payload)  # redelivered: nothing new

    def holograms() -> list[dict[str, Any]] | None:
        found = [r for r in server.all_records(server.account_id) if r["type"] == "holograms"]
        return found if len(found) >= 3 else None

    records = server.wait_for(holograms)
    assert sorted(r["content"]["item"]["n"] for r in records) == [0, 1, 2]
    assert {(r["kind"], r["contact_id"] is not None) for r in records} == {("event", True)}
    # Each is sealed for the records' retention, not the journal's 30 days.
    lifetimes = asyncio.run(_lifetimes(server, "holograms"))
    assert len(lifetimes) == 3
    assert all(lasts > timedelta(days=365) for lasts in lifetimes)


async def _lifetimes(server: Server, item_type: str) -> list[timedelta]:
    """How long the sealed objects of the records of ``item_type`` are kept."""
    services = await open_services(load_settings(server.env))
    try:
        async with services.sessions() as session:
            rows = await session.execute(
                select(SealedObject.retain_until, Record.received_at)
                .join(Record, Record.object_id == SealedObject.id)
                .where(Record.item_type == item_type)
            )
            return [retain_until - received_at for retain_until, received_at in rows]
    finally:
        await services.close()
