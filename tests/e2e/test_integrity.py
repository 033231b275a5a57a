"""Tampering with the archive under a real server, on SQLite and PostgreSQL.

Issue 14.5: a record moved to another account, or whose direction or time was
changed in the database, or whose binding was removed, fails its binding: it is
refused on read (no content, and nothing of it reaches the other account's
user) and `vault verify` reports it. Issue 14.8: a flipped byte in one object's
vault file and another object deleted break no view: conversation, search,
message views and console pages answer 200 with everything else and mark those
records; each failure is audited, logged (without content) and counted in the
metrics, and /readyz stays green.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import running_server
from tests.e2e.server import Server, business_echo, customer_message, status_update
from tests.e2e.test_console import sign_in

BASE = 1763720000
OTHER_PHONE_NUMBER_ID = "999888777666555"


@pytest.fixture(scope="module")
def server(database_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own: these tests damage its archive."""
    with running_server(tmp_path_factory.mktemp("integrity"), database_name) as srv:
        yield srv


@pytest.fixture(scope="module")
def auditor(server: Server) -> dict[str, str]:
    server.create_user("integrity-auditor", "auditor")
    return server.token("integrity-auditor", "audit.read")


def _chat(server: Server, customer: str, texts: dict[str, str]) -> dict[str, int]:
    """Post one message per ``wamid → text`` from ``customer``; their record ids."""
    for offset, (wamid, text) in enumerate(texts.items()):
        body = customer_message(customer, wamid, BASE + offset, text={"body": text})
        assert server.post_webhook(json.dumps(body).encode()).status_code == 200
    return {wamid: server.records_of(wamid)[0]["id"] for wamid in texts}


def _contact(server: Server, customer: str) -> str:
    found = server.get("/api/v1/contacts", phone="+" + customer)
    assert found.status_code == 200, found.text
    contact: str = found.json()["contact_id"]
    return contact


def _integrity(failure: str | None) -> dict[str, Any]:
    return (
        {"status": "ok", "reason": None}
        if failure is None
        else {
            "status": "failed",
            "reason": failure,
        }
    )


def _failures(server: Server) -> dict[str, int]:
    """The metrics' integrity failure counts, by reason."""
    response = server.client.get("/api/v1/metrics", headers=server.admin)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    found = re.findall(
        r'^strongroom_integrity_failures_total\{reason="([a-z ]+)"\} (\d+)$',
        response.text,
        re.MULTILINE,
    )
    assert len(found) == 4, response.text
    return {reason: int(count) for reason, count in found}


def _audited(server: Server, auditor: dict[str, str]) -> set[tuple[str, str]]:
    response = server.client.get(
        "/api/v1/audit", params={"action": "archive.integrity", "limit": 500}, headers=auditor
    )
    assert response.status_code == 200, response.text
    return {(e["target"], e["reason"]) for e in response.json()["events"]}


def _object_file(server: Server, record_id: int) -> Path:
    """The vault file of a record's sealed object."""
    query = "SELECT o.object_key FROM records r JOIN sealed_objects o ON o.id = r.object_id"
    ((key,),) = server.sql(f"{query} WHERE r.id = {record_id:d}")  # an int
    return server.data_dir / "vault" / "objects" / str(key)


def test_changed_metadata_is_refused_on_read_and_reported_by_verify(
    server: Server, auditor: dict[str, str]
) -> None:
    customer = "447700900501"
    texts = {
        "wamid.B1": "moved to another account",
        "wamid.B2": "direction changed",
        "wamid.B3": "time changed",
        "wamid.B4": "left alone",
        "wamid.B5": "binding removed",
    }
    ids = _chat(server, customer, texts)
    contact = _contact(server, customer)
    other = server.add_account(phone_number_id=OTHER_PHONE_NUMBER_ID, verify_token="other-token")
    outsider = server.officer_of("integrity-outsider", other)
    # Before the tampering, the other account's officer sees none of it.
    assert (
        server.client.get(f"/api/v1/messages/{ids['wamid.B1']}", headers=outsider).status_code
        == 404
    )
    clean = server.cli("vault", "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    before = _failures(server)

    earlier = (
        "datetime(occurred_at, '-1 day')" if server.on_sqlite else "occurred_at - interval '1 day'"
    )
    server.sql(
        f"UPDATE records SET account_id = '{other}' WHERE id = {ids['wamid.B1']:d}",  # noqa: S608
        f"UPDATE records SET direction = 'outbound' WHERE id = {ids['wamid.B2']:d}",  # noqa: S608
        f"UPDATE records SET occurred_at = {earlier} WHERE id = {ids['wamid.B3']:d}",  # noqa: S608
        f"UPDATE records SET binding = NULL WHERE id = {ids['wamid.B5']:d}",  # noqa: S608
    )

    # The other account's officer now finds the moved record, refused: nothing of it.
    moved = server.client.get(f"/api/v1/messages/{ids['wamid.B1']}", headers=outsider)
    assert moved.status_code == 200, moved.text
    view = moved.json()
    assert view["integrity"] == _integrity("binding mismatch")
    assert (view["content"], view["contact_id"], view["wamid"], view["media"]) == (
        None,
        None,
        None,
        [],
    )
    seen_by_outsider = [
        moved,
        server.client.get(f"/api/v1/accounts/{other}/records", headers=outsider),
        server.client.get(f"/api/v1/conversations/{contact}", headers=outsider),
        server.client.post("/api/v1/search", json={"account_id": other}, headers=outsider),
        server.client.post("/api/v1/search", json={"query": "moved"}, headers=outsider),
    ]
    for response in seen_by_outsider:
        assert response.status_code == 200, response.text
        assert "moved to another account" not in response.text
        assert customer not in response.text
        assert "wamid.B1" not in response.text
    chat = seen_by_outsider[2].json()
    assert [(m["id"], m["text"], m["integrity"]) for m in chat["messages"]] == [
        (ids["wamid.B1"], "", _integrity("binding mismatch"))
    ]

    # The account's own officer reads what was left alone, and is refused the rest.
    mine = server.all_records(server.account_id)
    marks = {
        r["id"]: (r["integrity"], r["content"] is None) for r in mine if r["id"] in ids.values()
    }
    assert marks == {
        ids["wamid.B2"]: (_integrity("binding mismatch"), True),
        ids["wamid.B3"]: (_integrity("binding mismatch"), True),
        ids["wamid.B4"]: (_integrity(None), False),
        ids["wamid.B5"]: (_integrity("binding mismatch"), True),
    }
    direct = server.get(f"/api/v1/messages/{ids['wamid.B2']}").json()
    assert direct["integrity"] == _integrity("binding mismatch")
    assert direct["content"] is None

    verify = server.cli("vault", "verify")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    for wamid in ("wamid.B1", "wamid.B2", "wamid.B3", "wamid.B5"):
        assert f"BINDING record {ids[wamid]}: binding mismatch" in verify.stdout
    assert f"BINDING record {ids['wamid.B4']}:" not in verify.stdout

    audited = _audited(server, auditor)
    assert {
        (f"record:{ids[w]}", "binding mismatch") for w in ("wamid.B1", "wamid.B2", "wamid.B3")
    } <= audited
    assert _failures(server)["binding mismatch"] > before["binding mismatch"]
    assert server.client.get("/readyz").status_code == 200


def test_a_damaged_object_is_marked_and_everything_else_shown(
    server: Server, auditor: dict[str, str], clients: Any
) -> None:
    customer = "447700900502"
    texts = {
        "wamid.D1": "ledger entry one",
        "wamid.D2": "ledger entry flipped",
        "wamid.D3": "ledger entry deleted",
        "wamid.D4": "ledger entry four",
    }
    ids = _chat(server, customer, texts)
    contact = _contact(server, customer)
    before = _failures(server)

    flipped = _object_file(server, ids["wamid.D2"])
    flipped.chmod(0o600)
    sealed = flipped.read_bytes()
    flipped.write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    _object_file(server, ids["wamid.D3"]).unlink()
    failed = {
        ids["wamid.D2"]: _integrity("authentication failed"),
        ids["wamid.D3"]: _integrity("object missing"),
    }

    def marks(items: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        return {i["id"]: i["integrity"] for i in items if i["id"] in ids.values()}

    chat = server.get(f"/api/v1/conversations/{contact}")
    assert chat.status_code == 200, chat.text
    messages = chat.json()["messages"]
    assert marks(messages) == failed | {
        ids["wamid.D1"]: _integrity(None),
        ids["wamid.D4"]: _integrity(None),
    }
    assert [m["text"] for m in messages] == ["ledger entry one", "", "", "ledger entry four"]

    search = server.client.post("/api/v1/search", json={"query": "ledger"}, headers=server.officer)
    assert search.status_code == 200, search.text
    results = search.json()["results"]
    assert marks(results) == failed | {
        ids["wamid.D1"]: _integrity(None),
        ids["wamid.D4"]: _integrity(None),
    }
    assert [r["snippet"] for r in results] == ["ledger entry one", "", "", "ledger entry four"]

    for record_id, mark in failed.items():
        one = server.get(f"/api/v1/messages/{record_id}")
        assert one.status_code == 200, one.text
        assert (one.json()["integrity"], one.json()["content"], one.json()["erased"]) == (
            mark,
            None,
            False,
        )
    by_wamid = server.get("/api/v1/messages", wamid="wamid.D3")
    assert by_wamid.status_code == 200
    assert marks(by_wamid.json()) == {ids["wamid.D3"]: failed[ids["wamid.D3"]]}

    console: httpx.Client = clients()
    server.create_user("integrity-officer", "compliance_officer")
    sign_in(console, "integrity-officer")
    for page in (f"/conversations/{contact}", "/search?q=ledger"):
        shown = console.get(page)
        assert shown.status_code == 200, shown.text
        assert "ledger entry one" in shown.text
        assert "ledger entry four" in shown.text
        assert "failed its integrity check (authentication failed)" in shown.text
        assert "failed its integrity check (object missing)" in shown.text

    audited = _audited(server, auditor)
    assert {(f"record:{i}", m["reason"]) for i, m in failed.items()} <= audited
    after = _failures(server)
    assert after["authentication failed"] > before["authentication failed"]
    assert after["object missing"] > before["object missing"]
    logged = [
        json.loads(line)
        for line in server.log_path.read_text().splitlines()
        if "integrity check failed" in line
    ]
    assert {(e["target"], e["reason"]) for e in logged} >= {
        (f"record:{i}", m["reason"]) for i, m in failed.items()
    }
    assert all(e["level"] == "error" for e in logged)
    assert "ledger" not in server.log_path.read_text()
    assert server.client.get("/readyz").status_code == 200


def test_a_damaged_message_keeps_its_statuses_out_of_the_unmatched(server: Server) -> None:
    customer = "447700900504"
    sent = business_echo(customer, "wamid.E1", BASE + 50, "an offer")
    assert server.post_webhook(json.dumps(sent).encode()).status_code == 200
    record_id = server.records_of("wamid.E1")[0]["id"]
    read = status_update(customer, "wamid.E1", BASE + 51, "read")
    assert server.post_webhook(json.dumps(read).encode()).status_code == 200
    server.wait_for(lambda: len(server.records_of("wamid.E1")) == 2)
    _object_file(server, record_id).unlink()
    chat = server.get(f"/api/v1/conversations/{_contact(server, customer)}").json()
    (message,) = chat["messages"]
    assert message["integrity"] == _integrity("object missing")
    # Its message is in the archive, though unreadable: not "a message not in this archive".
    assert chat["unmatched_statuses"] == []


def test_a_damaged_media_file_is_refused_and_its_conversation_still_shown(
    server: Server, auditor: dict[str, str], clients: Any
) -> None:
    photo = b"\x89PNG\r\n\x1a\n integrity image"
    chat = (
        "13/03/2024, 10:00 - +44 7700 900503: IMG-20240312-WA0009.jpg (file attached)\n"
        "13/03/2024, 10:01 - +44 7700 900503: a caption in words\n"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("WhatsApp Chat with Ines.txt", chat)
        archive.writestr("IMG-20240312-WA0009.jpg", photo)
    imported = server.client.post(
        "/api/v1/imports/chat-export",
        files={"file": ("chat.zip", buffer.getvalue())},
        # Every day is 12 or less, so the file cannot tell its date order.
        data={"account_id": server.account_id, "contact": "+447700900503", "date_order": "dmy"},
        headers=server.officer,
    )
    assert imported.status_code == 201, imported.text
    contact = imported.json()["contact_id"]
    (message,) = server.get(f"/api/v1/conversations/{contact}").json()["messages"][:1]
    media_id = message["media"][0]["id"]
    assert server.get(f"/api/v1/media/{media_id}").content == photo

    query = "SELECT o.object_key FROM media_items m JOIN sealed_objects o ON o.id = m.object_id"
    ((key,),) = server.sql(f"{query} WHERE m.id = {media_id:d}")  # an int
    file = server.data_dir / "vault" / "objects" / str(key)
    file.chmod(0o600)
    sealed = file.read_bytes()
    file.write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))

    refused = server.get(f"/api/v1/media/{media_id}")
    assert refused.status_code == 409, refused.text
    assert refused.json() == {
        "error": f"media {media_id} failed its integrity check: authentication failed"
    }
    chat_view = server.get(f"/api/v1/conversations/{contact}")
    assert chat_view.status_code == 200
    assert [m["integrity"]["status"] for m in chat_view.json()["messages"]] == ["ok", "ok"]
    console: httpx.Client = clients()
    server.create_user("integrity-viewer", "compliance_officer")
    sign_in(console, "integrity-viewer")
    viewer = console.get(f"/media/{media_id}/view")
    assert viewer.status_code == 200, viewer.text
    assert "failed its integrity check (authentication failed)" in viewer.text
    assert f'src="/api/v1/media/{media_id}"' not in viewer.text
    assert (f"media:{media_id}", "authentication failed") in _audited(server, auditor)
    assert server.client.get("/readyz").status_code == 200
