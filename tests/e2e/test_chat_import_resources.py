"""A chat import's memory is bounded by its largest file, not by the export's size,
and an import killed halfway is completed exactly by importing the file again.

Exports are built by :func:`tests.bench.chat_import.build_export` (an iOS zip of
media files of random bytes); ``python -m tests.bench.chat_import`` measures the
same at 300 MiB.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select

from api.settings import load_settings
from archiver.core.db import create_engine
from archiver.core.subjects import contact_subject
from archiver.crypto.models import SubjectKey
from archiver.imports.chat_export import parse_chat_export
from archiver.imports.services import MANIFEST_KIND, ORIGINAL_PART_BYTES, PART_KIND
from archiver.vault.models import SealedObject
from tests.bench.chat_import import (
    MIB,
    Export,
    build_export,
    cli_import,
    reset_peak,
    status_bytes,
)
from tests.e2e.server import STRONGROOM, Server


def _bound(export: Export) -> int:
    """What an import may add to a process's peak, whatever the export's size: the
    vault holds a file three times while sealing it (plaintext, ciphertext,
    envelope), the largest being a media file or a part of the original, and a
    constant for the chat, a batch's records and the interpreter's own."""
    return 3 * max(export.largest, ORIGINAL_PART_BYTES) + 32 * MIB


def test_cli_import_memory_is_bounded_by_the_largest_member(server: Server, tmp_path: Path) -> None:
    export = build_export(tmp_path / "export.zip", 40)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("[13/01/2024, 09:00:00] Maya Okafor: hello\n")
    base = cli_import(server.env, tiny, server.account_id, "+447700900701")
    big = cli_import(server.env, export.path, server.account_id, "+447700900702")
    assert base.returncode == big.returncode == 0, base.stderr + big.stderr
    assert f"imported {export.messages} of {export.messages} messages" in big.stdout
    assert f"{export.media} media files" in big.stdout
    assert big.peak - base.peak < _bound(export), (big.peak - base.peak) / MIB


def test_http_import_memory_is_bounded_by_the_largest_member(
    server: Server, tmp_path: Path
) -> None:
    export = build_export(tmp_path / "export.zip", 40, seed=2)
    assert server.proc is not None
    # A token's first use derives its hash (memory-hard) once; not the import's.
    assert server.get("/api/v1/accounts").status_code == 200
    before = reset_peak(server.proc.pid)
    with export.path.open("rb") as upload:
        response = server.client.post(
            "/api/v1/imports/chat-export",
            files={"file": ("WhatsApp Chat - Harbour Dental.zip", upload)},
            data={"account_id": server.account_id, "contact": "+447700900703"},
            headers=server.officer,
            timeout=120,
        )
    peak = status_bytes(server.proc.pid, "VmHWM")
    assert response.status_code == 201, response.text
    assert (response.json()["imported"], response.json()["media"]) == (
        export.messages,
        export.media,
    )
    assert peak - before < _bound(export), (peak - before) / MIB


def _records(server: Server, contact_id: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500} | ({"cursor": cursor} if cursor else {})
        page = server.get(f"/api/v1/contacts/{contact_id}/messages", **params).json()
        records += page["records"]
        if not (cursor := page["next_cursor"]):
            return records


def _sealed_kinds(server: Server, contact_id: str) -> Counter[str]:
    """How many objects of each kind the vault records under the contact's key."""

    async def run() -> Counter[str]:
        engine = create_engine(load_settings(server.env).database_url)
        try:
            async with engine.connect() as conn:
                kinds = await conn.scalars(
                    select(SealedObject.kind)
                    .join(SubjectKey, SubjectKey.key_id == SealedObject.key_id)
                    .where(SubjectKey.subject == contact_subject(contact_id))
                )
                return Counter(kinds)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STRONGROOM, *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_import_killed_halfway_is_completed_exactly_by_importing_it_again(
    server: Server, tmp_path: Path
) -> None:
    export = build_export(tmp_path / "export.zip", 24, texts=40, seed=3)
    with export.path.open("rb") as file:
        parsed = parse_chat_export(file, export.path.name)
        expected = [m.raw for m in parsed.messages]
        sizes = {name: parsed.media.size(name) for name in parsed.media}
    args = ["import", "chat-export", str(export.path), "--account", server.account_id]
    args += ["--contact", "+447700900704"]

    # Killed (SIGKILL) as soon as its first batch is committed.
    importing = subprocess.Popen(
        [STRONGROOM, *args], env=server.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert importing.stderr is not None
    contact = None
    for line in importing.stderr:
        event = json.loads(line)
        if event["event"] == "chat import batch committed":
            contact = event["contact_id"]
            break
    importing.kill()
    importing.wait()
    importing.stderr.close()
    assert contact is not None, "no batch was committed"
    kept = [r["content"]["item"]["raw"] for r in _records(server, contact)]
    assert 0 < len(kept) < len(expected)
    assert kept == expected[: len(kept)]  # whole batches, in the file's order
    # The file was sealed before the first batch: the check names what is missing.
    missing = len(expected) - len(kept)
    check = _cli(server, "import", "check")
    assert check.returncode == 1
    assert f"{missing} of {len(expected)} messages missing from contact {contact}" in check.stdout

    again = _cli(server, *args)
    assert again.returncode == 0, again.stderr
    assert f"imported {missing} of {len(expected)} messages ({len(kept)} already" in again.stdout
    records = _records(server, contact)
    assert [r["content"]["item"]["raw"] for r in records] == expected
    attached = {
        r["content"]["item"]["attachment"]: r["media"]
        for r in records
        if r["content"]["item"]["attachment"]
    }
    assert attached == {
        name: [{"state": "fetched", "mime_type": None, "size": size, "error": None}]
        for name, size in sizes.items()
    }
    # One sealed copy of each message, each media file and the file (its parts and
    # their manifest), whatever the killed run had written.
    assert _sealed_kinds(server, contact) == {
        "record": len(expected),
        "media": export.media,
        MANIFEST_KIND: 1,
        PART_KIND: math.ceil(export.size / ORIGINAL_PART_BYTES),
    }
    assert _cli(server, "import", "check").returncode == 0
