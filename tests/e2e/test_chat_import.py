"""Chat-export import and account registration through the HTTP API and the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select

from api.bootstrap import open_services
from api.settings import load_settings
from archiver.core.subjects import contact_subject
from archiver.imports.services import dedupe_key
from archiver.records.models import MediaItem, Record
from archiver.search.models import SearchToken
from tests.e2e.server import STRONGROOM, Server

EXPORTS = Path(__file__).parents[1] / "fixtures" / "chat_exports"
CONTACT = "+447700900123"
PHOTO = "00000005-PHOTO-2024-02-14-09-03-00.jpg"

# Two customers' Android exports (the en_GB format of android_en_gb.txt) that share
# two lines: the encryption notice and a broadcast, both in the same minute.
NOTICE = (
    "13/01/2024, 09:00 - Messages and calls are end-to-end encrypted. No one outside of "
    "this chat, not even WhatsApp, can read or listen to them. Tap to learn more."
)
BROADCAST = (
    "13/01/2024, 09:00 - Hartley Plumbing: Happy new year! Our winter boiler check is £49 "
    "until 31/01."
)
FIRST = "\n".join(
    [
        NOTICE,
        BROADCAST,
        "13/01/2024, 09:05 - +44 7700 900201: Yes please, any slot on Tuesday?",
        "13/01/2024, 09:06 - Hartley Plumbing: Booked: Tuesday 16/01, 10:00.",
        "",
    ]
)
SECOND = "\n".join(
    [NOTICE, BROADCAST, "13/01/2024, 09:07 - +44 7700 900202: Not this year, thanks.", ""]
)


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


def _raws(server: Server, contact_id: str) -> list[str]:
    return [r["content"]["item"]["raw"] for r in _imported(server, contact_id)]


def _contact(server: Server, phone: str) -> httpx.Response:
    return server.get("/api/v1/contacts", phone=phone)


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
    assert result["imported"] == result["messages"] > 5
    assert result["duplicates"] == 0
    assert result["date_order"] == "dmy"
    assert result["date_order_reason"].startswith("dmy: ")
    assert "only day first" in result["date_order_reason"]
    assert result["problems"] == result["warnings"] == []
    records = _imported(server, result["contact_id"])
    assert len(records) == result["imported"]
    directions = {r["direction"] for r in records}
    assert {"inbound", "outbound"} <= directions
    assert all(r["kind"] == "message" for r in records)
    reply = next(r for r in records if r["content"]["item"]["sender"] == "Hartley Plumbing")
    assert reply["direction"] == "outbound"
    assert reply["content"]["item"]["raw"].startswith("05/01/2024, 08:10 - Hartley Plumbing:")
    assert reply["content"]["metadata"]["date_order"] == "dmy"
    # 08:10 in London in January is 08:10 UTC.
    assert reply["occurred_at"].startswith("2024-01-05T08:10:00")

    again = _upload(server, "android_en_gb.txt", content, business_sender="Hartley Plumbing")
    assert again.status_code == 201
    assert (again.json()["imported"], again.json()["duplicates"]) == (0, result["imported"])
    assert len(_imported(server, result["contact_id"])) == result["imported"]


def test_exports_sharing_lines_keep_every_line_of_both_conversations(server: Server) -> None:
    """Dedupe is per conversation: shared lines are kept in each, a file imported
    twice for its contact adds nothing, and for a new contact it adds everything."""
    one = _upload(server, "a.txt", FIRST.encode(), contact="+447700900201")
    two = _upload(server, "b.txt", SECOND.encode(), contact="+447700900202")
    assert one.status_code == two.status_code == 201, (one.text, two.text)
    assert (two.json()["imported"], two.json()["duplicates"]) == (3, 0)
    assert _raws(server, one.json()["contact_id"]) == FIRST.splitlines()
    assert _raws(server, two.json()["contact_id"]) == SECOND.splitlines()

    again = _upload(server, "b.txt", SECOND.encode(), contact="+447700900202")
    assert (again.json()["imported"], again.json()["duplicates"]) == (0, 3)
    assert _raws(server, two.json()["contact_id"]) == SECOND.splitlines()

    other = _upload(server, "b.txt", SECOND.encode(), contact="+447700900203")
    assert (other.json()["imported"], other.json()["duplicates"]) == (3, 0)
    assert other.json()["contact_id"] not in {one.json()["contact_id"], two.json()["contact_id"]}
    assert _raws(server, other.json()["contact_id"]) == SECOND.splitlines()


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


def _broken_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("_chat.txt", "[13/01/2024, 10:00:00] Ana: hi\n" * 50)
    data = buffer.getvalue()
    return data[: len(data) // 2]


# What the API refuses, with the (line, reason, text) it must name; the contact of
# each is a fresh number, which a refused import must not create.
REFUSED = {
    "an impossible date": (
        "13/03/2024, 10:00 - +44 7700 900123: first line\n"
        "32/13/2024, 10:01 - +44 7700 900123: impossible date\n",
        {},
        [
            (
                2,
                "impossible date '32/13/2024'",
                "32/13/2024, 10:01 - +44 7700 900123: impossible date",
            )
        ],
    ),
    "a day and month order the file cannot tell": (
        "03/04/2024, 10:00 - Ana: a\n05/04/2024, 10:00 - Ana: b\n",
        {"partial": "true"},
        [(1, "day and month order cannot be told", "03/04/2024, 10:00 - Ana: a")],
    ),
    "not UTF-8": (
        "13/01/2024, 10:00 - Ana: caf\xe9\n".encode("latin-1"),
        {},
        [(1, "not UTF-8", "13/01/2024, 10:00 - Ana: caf\ufffd")],
    ),
    "no header at all": (
        "meeting notes\nno timestamps here\n",
        {},
        [(1, "not a WhatsApp message header", "meeting notes")],
    ),
    "an empty file": ("\n\n", {}, [(None, "is empty", None)]),
    "nothing readable, even in part": (
        "32/13/2024, 10:00 - Ana: x\n",
        {"partial": "true"},
        [(1, "impossible date", "32/13/2024, 10:00 - Ana: x")],
    ),
    "a damaged zip": (_broken_zip(), {}, [(None, "not a readable zip archive", None)]),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_name_line_text_and_reason_and_import_nothing(server: Server, name: str) -> None:
    content, fields, expected = REFUSED[name]
    phone = f"+4477009004{sorted(REFUSED).index(name):02}"
    data = content if isinstance(content, bytes) else content.encode()
    filename = "chat.zip" if name == "a damaged zip" else "chat.txt"
    refused = _upload(server, filename, data, contact=phone, **fields)
    assert refused.status_code == 422, refused.text
    problems = refused.json()["problems"]
    assert [(p.get("line"), p.get("text")) for p in problems] == [
        (line, text) for line, _, text in expected
    ]
    assert all(reason in p["reason"] for p, (_, reason, _) in zip(problems, expected, strict=True))
    assert _contact(server, phone).status_code == 404


def test_partial_imports_the_readable_lines_and_lists_every_other(server: Server) -> None:
    bad = (
        "13/03/2024, 10:00 - +44 7700 900123: first line of a broken export\n"
        "32/13/2024, 10:01 - +44 7700 900123: impossible date\n"
        "and its second line\n"
        "13/03/2024, 10:02 - +44 7700 900123: 13:05 PM is no 12-hour time\n"
        "13/03/2024, 13:05 PM - +44 7700 900123: read as 24-hour\n"
    )
    partial = _upload(server, "broken.txt", bad.encode(), partial="true")
    assert partial.status_code == 201, partial.text
    result = partial.json()
    assert (result["messages"], result["imported"]) == (3, 3)
    assert [(p["line"], p["text"]) for p in result["problems"]] == [
        (2, "32/13/2024, 10:01 - +44 7700 900123: impossible date"),
        (3, "and its second line"),
    ]
    assert result["problems"][1]["reason"] == "continues a message whose header is unreadable"
    (warning,) = result["warnings"]
    assert warning["line"] == 5
    assert "read as the 24-hour time 13:05" in warning["reason"]
    times = [r["occurred_at"] for r in _imported(server, result["contact_id"])]
    assert any(t.startswith("2024-03-13T13:05") for t in times)


def test_the_date_order_field_settles_an_ambiguous_file(server: Server) -> None:
    ambiguous = b"03/04/2024, 10:00 - Ana: a\n05/04/2024, 10:00 - Ana: b\n"
    read = _upload(server, "chat.txt", ambiguous, contact="+447700900301", date_order="mdy")
    assert read.status_code == 201, read.text
    assert read.json()["date_order"] == "mdy"
    assert read.json()["date_order_reason"] == "mdy, as given by the importer"
    records = _imported(server, read.json()["contact_id"])
    assert [r["occurred_at"][:10] for r in records] == ["2024-03-04", "2024-05-04"]
    wrong = _upload(server, "chat.txt", ambiguous, contact="+447700900302", date_order="myd")
    assert wrong.status_code == 400


def test_import_refuses_bad_input_clearly(server: Server) -> None:
    assert _upload(server, "x.txt", b"x", account_id="acc_missing").status_code == 404
    assert _upload(server, "x.txt", b"x", contact="not a phone").status_code == 400
    assert _upload(server, "x.txt", b"x", timezone="Mars/Olympus").status_code in (400, 422)
    assert server.client.post("/api/v1/imports/chat-export").status_code == 401


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STRONGROOM, *args], env=server.env, capture_output=True, text=True, timeout=60, check=False
    )


def _cli_import(server: Server, path: Path, contact: str, *args: str) -> Any:
    return _cli(
        server,
        "import",
        "chat-export",
        str(path),
        "--account",
        server.account_id,
        "--contact",
        contact,
        *args,
    )


def test_cli_import_reports_lines_dates_and_warnings(server: Server, tmp_path: Path) -> None:
    broken = tmp_path / "broken.txt"
    broken.write_text("13/03/2024, 10:00 - A: hi\n32/13/2024, 10:01 - A: impossible date\n")
    refused = _cli_import(server, broken, CONTACT)
    assert refused.returncode == 1
    assert (
        "broken.txt:2: impossible date '32/13/2024' (read as dmy): "
        "'32/13/2024, 10:01 - A: impossible date'" in refused.stderr
    )
    assert "nothing was imported" in refused.stderr

    partial = _cli_import(server, broken, "+447700900501", "--partial")
    assert partial.returncode == 0, partial.stderr
    assert "broken.txt:2: skipped: impossible date '32/13/2024'" in partial.stderr
    assert "dates read as dmy: 1 date fits only day first" in partial.stdout
    assert "imported 1 of 1 messages" in partial.stdout

    ambiguous = tmp_path / "ambiguous.txt"
    ambiguous.write_text("3/6/18, 1:55 p.m. - a: m\n04/15/2016 13:19:20 PM - a: late\n")
    told = _cli_import(server, ambiguous, "+447700900502")
    assert told.returncode == 0, told.stderr
    assert "ambiguous.txt:2: warning: 12-hour marker 'PM' beside hour 13" in told.stderr

    ambiguous.write_text("3/6/18, 1:55 p.m. - a: m\n")
    unsure = _cli_import(server, ambiguous, "+447700900503")
    assert unsure.returncode == 1
    assert "ambiguous.txt:1: day and month order cannot be told" in unsure.stderr
    assert "--date-order" in unsure.stderr
    given = _cli_import(server, ambiguous, "+447700900503", "--date-order", "mdy")
    assert given.returncode == 0, given.stderr
    assert "dates read as mdy, as given by the importer" in given.stdout


def _forget(server: Server, contact_id: str, lines: list[str]) -> None:
    """Take from a conversation the records of ``lines``: what an import made before
    per-conversation dedupe left when another conversation already held them."""
    keys = [dedupe_key(contact_id, line, 1) for line in lines]

    async def run() -> None:
        services = await open_services(load_settings(server.env))
        tokens = [services.meta_ids.dedupe_token(server.account_id, key) for key in keys]
        try:
            async with services.sessions() as session, session.begin():
                found = await session.scalars(
                    select(Record.id).where(Record.dedupe_token.in_(tokens))
                )
                ids = list(found)
                assert len(ids) == len(keys)
                await session.execute(delete(SearchToken).where(SearchToken.record_id.in_(ids)))
                await session.execute(delete(MediaItem).where(MediaItem.record_id.in_(ids)))
                await session.execute(delete(Record).where(Record.id.in_(ids)))
        finally:
            await services.close()

    asyncio.run(run())


def test_import_check_lists_imports_that_lost_lines_until_imported_again(
    server: Server, tmp_path: Path
) -> None:
    first, second, third = (tmp_path / n for n in ("first.txt", "second.txt", "third.txt"))
    first.write_text(FIRST)
    second.write_text(SECOND)
    third.write_text(f"{NOTICE}\n{BROADCAST}\n")
    contacts = {}
    for path, phone in (
        (first, "+447700900601"),
        (second, "+447700900602"),
        (third, "+447700900603"),
    ):
        done = _cli_import(server, path, phone)
        assert done.returncode == 0, done.stderr
        contacts[path.name] = done.stdout.split()[-1]
    clean = _cli(server, "import", "check")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "every imported file's messages are in its conversation" in clean.stdout

    # As the old importer left them: the shared lines kept only by the first import,
    # the third conversation (all shared) empty.
    _forget(server, contacts["second.txt"], [NOTICE, BROADCAST])
    _forget(server, contacts["third.txt"], [NOTICE, BROADCAST])
    hit = _cli(server, "import", "check")
    assert hit.returncode == 1
    lines = hit.stdout.splitlines()
    assert len(lines) == 2
    assert f"2 of 3 messages missing from contact {contacts['second.txt']}" in lines[0]
    assert f"2 of 2 messages missing from contact {contacts['third.txt']}" in lines[1]
    # The empty conversation's account is found through the lines the first one holds.
    assert all(f"(account {server.account_id})" in line for line in lines)
    assert all("import the file again for this contact" in line for line in lines)
    assert hashlib.sha256(SECOND.encode()).hexdigest() in lines[0]

    again = _cli_import(server, second, "+447700900602")
    assert "imported 2 of 3 messages (1 already present" in again.stdout
    _cli_import(server, third, "+447700900603")
    assert _cli(server, "import", "check").returncode == 0
    assert _raws(server, contacts["second.txt"]) == SECOND.splitlines()


def _seal_whole(server: Server, contact_id: str, data: bytes) -> None:
    """Seal ``data`` as imports sealed their file before they were streamed: whole,
    one object of kind ``import``."""

    async def run() -> None:
        services = await open_services(load_settings(server.env))
        try:
            async with services.sessions() as session, session.begin():
                await services.vault.seal(
                    session,
                    kind="import",
                    subject=contact_subject(contact_id),
                    plaintext=data,
                    retain_until=services.clock.now() + timedelta(days=1),
                )
        finally:
            await services.close()

    asyncio.run(run())


def test_import_check_reads_files_that_earlier_imports_sealed_whole(
    server: Server, tmp_path: Path
) -> None:
    first = tmp_path / "first.txt"
    first.write_text(FIRST)
    done = _cli_import(server, first, "+447700900611")
    assert done.returncode == 0, done.stderr
    contact = done.stdout.split()[-1]
    older = (
        "14/01/2024, 10:00 - +44 7700 900611: Is the Thursday slot still free?\n"
        "14/01/2024, 10:02 - Hartley Plumbing: It is, see you then.\n"
    )
    _seal_whole(server, contact, older.encode())
    hit = _cli(server, "import", "check")
    assert hit.returncode == 1
    sha = hashlib.sha256(older.encode()).hexdigest()
    (line,) = hit.stdout.splitlines()
    assert f"file sha256 {sha}: 2 of 2 messages missing from contact {contact}" in line

    again = tmp_path / "older.txt"
    again.write_text(older)
    assert _cli_import(server, again, "+447700900611").returncode == 0
    assert _cli(server, "import", "check").returncode == 0


def test_cli_import_and_accounts(server: Server, tmp_path: Path) -> None:
    export = EXPORTS / "android_de.txt"
    done = _cli_import(server, export, "+4915123456789")
    assert done.returncode == 0, done.stderr
    assert "imported " in done.stdout

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
