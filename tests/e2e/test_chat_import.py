"""Chat-export import and account registration through the HTTP API and the CLI."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.server import STRONGROOM, Server

EXPORTS = Path(__file__).parents[1] / "fixtures" / "chat_exports"
CONTACT = "+447700900123"
PHOTO = "00000005-PHOTO-2024-02-14-09-03-00.jpg"


def _upload(server: Server, name: str, content: bytes, **fields: str) -> httpx.Response:
    data = {"account_id": server.account_id, "contact": CONTACT} | fields
    return server.client.post(
        "/api/v1/imports/chat-export",
        files={"file": (name, content)},
        data=data,
        headers=server.officer,
    )


def _imported(server: Server, contact_id: str) -> list[dict[str, Any]]:
    records = server.get(f"/api/v1/contacts/{contact_id}/messages", limit=500).json()["records"]
    return [r for r in records if r["source"] == "chat_import"]


def test_import_over_http_is_idempotent_and_directional(server: Server) -> None:
    content = (EXPORTS / "android_en_gb.txt").read_bytes()
    first = _upload(
        server,
        "android_en_gb.txt",
        content,
        business_sender="Hartley Plumbing",
        timezone="Europe/London",
    )
    assert first.status_code == 201, first.text
    result = first.json()
    assert result["imported"] > 5
    assert result["duplicates"] == 0
    records = _imported(server, result["contact_id"])
    assert len(records) == result["imported"]
    directions = {r["direction"] for r in records}
    assert {"inbound", "outbound"} <= directions
    assert all(r["kind"] == "message" for r in records)
    reply = next(r for r in records if r["content"]["item"]["sender"] == "Hartley Plumbing")
    assert reply["direction"] == "outbound"
    assert reply["content"]["item"]["raw"].startswith("05/01/2024, 08:10 - Hartley Plumbing:")
    # 08:10 in London in January is 08:10 UTC.
    assert reply["occurred_at"].startswith("2024-01-05T08:10:00")

    again = _upload(server, "android_en_gb.txt", content, business_sender="Hartley Plumbing")
    assert again.status_code == 201
    assert (again.json()["imported"], again.json()["duplicates"]) == (0, result["imported"])
    assert len(_imported(server, result["contact_id"])) == result["imported"]


def test_zip_with_media_is_imported_with_its_attachment(server: Server) -> None:
    chat = (EXPORTS / "ios_en_gb.txt").read_bytes()
    photo = b"\xff\xd8\xff\xe0 fake jpeg bytes for the archive"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("_chat.txt", chat)
        archive.writestr(PHOTO, photo)
    response = _upload(server, "WhatsApp Chat - Harbour Dental Rota.zip", buffer.getvalue())
    assert response.status_code == 201, response.text
    assert response.json()["media"] == 1
    records = _imported(server, response.json()["contact_id"])
    # Bound as imported, attachment included: every record passes its check.
    assert {r["integrity"]["status"] for r in records} == {"ok"}
    attached = [r for r in records if r["content"]["item"]["attachment"] == PHOTO]
    assert len(attached) == 1
    assert attached[0]["media"] == [
        {"state": "fetched", "mime_type": None, "size": len(photo), "error": None}
    ]


def test_unreadable_line_imports_nothing_unless_partial(server: Server) -> None:
    good = "12/03/2024, 10:00 - +44 7700 900123: first line of a broken export\n"
    bad = good + "32/13/2024, 10:01 - +44 7700 900123: impossible date\n"
    refused = _upload(server, "broken.txt", bad.encode())
    assert refused.status_code == 422
    assert refused.json()["problems"][0]["line"] == 2
    contact = server.get("/api/v1/contacts", phone=CONTACT).json()["contact_id"]
    texts = [r["content"]["item"]["text"] for r in _imported(server, contact)]
    assert "first line of a broken export" not in texts

    partial = _upload(server, "broken.txt", bad.encode(), partial="true")
    assert partial.status_code == 201, partial.text
    assert partial.json()["imported"] == 1
    assert partial.json()["problems"][0]["line"] == 2


def test_import_refuses_bad_input_clearly(server: Server) -> None:
    assert _upload(server, "x.txt", b"x", account_id="acc_missing").status_code == 404
    assert _upload(server, "x.txt", b"x", contact="not a phone").status_code == 400
    assert _upload(server, "x.txt", b"x", timezone="Mars/Olympus").status_code in (400, 422)
    assert server.client.post("/api/v1/imports/chat-export").status_code == 401


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STRONGROOM, *args], env=server.env, capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_import_and_accounts(server: Server, tmp_path: Path) -> None:
    broken = tmp_path / "broken.txt"
    broken.write_text("12/03/2024, 10:00 - A: hi\n32/13/2024, 10:01 - A: impossible date\n")
    refused = _cli(
        server,
        "import",
        "chat-export",
        str(broken),
        "--account",
        server.account_id,
        "--contact",
        CONTACT,
    )
    assert refused.returncode == 1
    assert "broken.txt:2:" in refused.stderr
    assert "nothing was imported" in refused.stderr

    export = EXPORTS / "android_de.txt"
    done = _cli(
        server,
        "import",
        "chat-export",
        str(export),
        "--account",
        server.account_id,
        "--contact",
        "+4915123456789",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported ")

    env = server.env | {"APP_SECRET_FOR_TEST": "cli-secret-value"}
    added = subprocess.run(
        [
            STRONGROOM,
            "accounts",
            "add",
            "--phone-number-id",
            "222333444555666",
            "--display-phone-number",
            "+15550100111",
            "--app-secret-env",
            "APP_SECRET_FOR_TEST",
            "--verify-token",
            "cli-verify-token",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    account_id = added.stdout.strip()
    assert account_id.startswith("acc_")
    assert "cli-secret-value" not in added.stdout + added.stderr
    listed = _cli(server, "accounts", "list")
    assert account_id in listed.stdout
    assert "cli-secret-value" not in listed.stdout
    duplicate = subprocess.run(
        [
            STRONGROOM,
            "accounts",
            "add",
            "--phone-number-id",
            "222333444555666",
            "--display-phone-number",
            "+15550100111",
            "--app-secret",
            "x",
            "--verify-token",
            "cli-verify-token",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert duplicate.returncode == 1
    assert "already registered" in duplicate.stderr
