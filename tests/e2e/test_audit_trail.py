"""The audit trail through a real server: what is recorded, what auditors read, the
signed export, and `strongroom audit verify` catching a changed row."""

from __future__ import annotations

import asyncio
import base64
import sqlite3

import asyncpg
import pytest

from archiver.audit.services import verify_export
from tests.conftest import PG_ADMIN_DSN
from tests.e2e.server import Server, fixture, fixture_bytes


@pytest.fixture(scope="module")
def auditor(server: Server) -> dict[str, str]:
    """An auditor, granted through the CLI and approved by the admin over HTTP."""
    server.create_user("e2e-auditor", "auditor")
    return server.token("e2e-auditor", "audit.read", "audit.export")


def _events(server: Server, auditor: dict[str, str], **filters: str) -> list[dict[str, object]]:
    response = server.client.get("/api/v1/audit", params=filters, headers=auditor)
    assert response.status_code == 200, response.text
    events: list[dict[str, object]] = response.json()["events"]
    return events


def test_requests_reads_refusals_and_approvals_are_recorded(
    server: Server, auditor: dict[str, str]
) -> None:
    assert server.client.get("/api/v1/accounts").status_code == 401
    assert (
        server.client.get("/no/such/place", headers={"User-Agent": "probe/1.0"}).status_code == 404
    )
    read = server.get(f"/api/v1/accounts/{server.account_id}/records")
    assert read.status_code == 200

    denied = _events(server, auditor, outcome="denied")
    assert any(
        e["action"] == "http.GET /api/v1/accounts"
        and e["actor"] == "anonymous"
        and e["actor_name"] is None
        for e in denied
    )
    unrouted = _events(server, auditor, action="http.GET (no route)")
    assert any(
        e["user_agent"] == "probe/1.0" and e["reason"].startswith("HTTP 404") for e in unrouted
    )
    assert all("/no/such/place" not in str(e) for e in unrouted)  # the client's path is not kept
    approvals = _events(server, auditor, action="identity.grant.approve")
    assert approvals
    assert approvals[-1]["role"] == "admin"
    assert "maker:cli" in str(approvals[-1]["target"])
    cli = _events(server, auditor, action="cli.users.grant")
    assert cli
    assert cli[-1]["actor"] == "cli"

    # Every read of content is in the trail, with the reader's role and the records.
    assert server.post_webhook(fixture_bytes("message_text")).status_code == 200
    assert server.post_webhook(b"{}", signature="sha256=" + "0" * 64).status_code == 401
    deliveries = _events(server, auditor, action="http.POST /webhooks/whatsapp")
    assert {"allowed", "denied"} <= {e["outcome"] for e in deliveries}
    wamid = fixture("message_text")["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    record = server.records_of(wamid)[0]
    reads = _events(server, auditor, action="archive.read")
    assert reads[-1]["role"] == "compliance_officer"
    assert reads[-1]["actor_name"] == "e2e-officer"  # who, as named then
    requests = _events(server, auditor, action="http.GET /api/v1/accounts/{account_id}/records")
    assert requests[-1]["actor_name"] == "e2e-officer"
    assert f"records:{record['id']}" in str(reads[-1]["target"])


def test_auditors_page_through_and_others_cannot(server: Server, auditor: dict[str, str]) -> None:
    first = server.client.get("/api/v1/audit", params={"limit": 3}, headers=auditor).json()
    assert len(first["events"]) == 3
    after = first["next_after"]
    second = server.client.get(
        "/api/v1/audit", params={"limit": 3, "after": after}, headers=auditor
    ).json()
    assert [e["seq"] for e in second["events"]] == [after + 1, after + 2, after + 3]
    assert server.client.get("/api/v1/audit", headers=server.officer).status_code == 403
    assert server.client.get("/api/v1/audit", headers=server.admin).status_code == 403


def test_export_is_signed(server: Server, auditor: dict[str, str]) -> None:
    export = server.client.get("/api/v1/audit/export", headers=auditor)
    assert export.status_code == 200
    signature = base64.b64decode(export.headers["x-strongroom-signature"])
    pem = server.client.get("/api/v1/audit/public-key", headers=auditor).text
    assert verify_export(export.content, signature, pem)
    tampered = bytearray(export.content)
    tampered[len(tampered) // 2] ^= 0x01
    assert not verify_export(bytes(tampered), signature, pem)


def _alter_row(server: Server, seq: int) -> None:
    """What a database administrator could do: bypass the append-only triggers."""
    url = server.env.get("STRONGROOM_DATABASE_URL")
    if url is None:
        with sqlite3.connect(server.data_dir / "strongroom.db") as db:
            db.execute("DROP TRIGGER audit_events_no_update")
            db.execute("UPDATE audit_events SET actor = 'someone-else' WHERE seq = ?", (seq,))
        return
    database = url.rsplit("/", 1)[1]

    async def alter() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + database)
        try:
            await conn.execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
            await conn.execute("UPDATE audit_events SET actor = 'someone-else' WHERE seq = $1", seq)
            await conn.execute("ALTER TABLE audit_events ENABLE TRIGGER USER")
        finally:
            await conn.close()

    asyncio.run(alter())


def test_cli_verify_is_clean_then_catches_a_changed_row(server: Server) -> None:
    clean = server.cli("audit", "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert " 0 problems" in clean.stdout
    _alter_row(server, 3)
    tampered = server.cli("audit", "verify")
    assert tampered.returncode == 1
    assert "TAMPERED seq 3 altered" in tampered.stdout
