"""Migrations run forwards and backwards on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncConnection

import archiver.core.db
from api.migrate import check, downgrade, upgrade
from api.models import metadata
from archiver.audit.services import AuditEntry, AuditLog, AuditVerifyReport
from archiver.core.clock import SystemClock, time_key
from archiver.core.db import create_engine, session_factory, sqlite_file
from archiver.core.subjects import META_ID_SUBJECT
from archiver.crypto.keyring import Keyring
from archiver.records.binding import BINDING_SUBJECT, RecordBinding
from archiver.records.services import BindingReport, IntegrityAlarm, RecordReader
from archiver.search.blind_index import MetaIdIndex
from archiver.vault.filestore import FileStore
from archiver.vault.services import Vault
from tests.conftest import database_bytes


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    return names - {"alembic_version"}


def test_migrations_round_trip_without_drift(database_url: str) -> None:
    # The fixture's database is already at head.
    check(database_url)
    assert asyncio.run(_tables(database_url)) == set(metadata.tables)
    downgrade(database_url, "base")
    assert asyncio.run(_tables(database_url)) == set()
    upgrade(database_url)
    check(database_url)
    assert asyncio.run(_tables(database_url)) == set(metadata.tables)


_OLD_TOKENS = sa.table("search_tokens", sa.column("token"), sa.column("record_id"))
# The records table as revisions 0002 to 0005 know it.
_OLD_ACCOUNTS = sa.table(
    "accounts",
    *(sa.column(c) for c in ("id", "phone_number_id", "display_phone_token")),
    *(sa.column(c) for c in ("display_phone_sealed", "app_secret_sealed")),
    sa.column("verify_token_sha256"),
    sa.column("created_at", archiver.core.db.UTCDateTime()),
)
_OLD_RECORDS = sa.table(
    "records",
    *(sa.column(c) for c in ("id", "account_id", "dedupe_key", "kind", "source", "direction")),
    *(sa.column(c) for c in ("item_type", "wamid", "related_wamid", "has_media", "forwarded")),
    *(sa.column(c) for c in ("contact_id", "revoked", "opens_window", "object_id")),
    *(sa.column(c, archiver.core.db.UTCDateTime()) for c in ("occurred_at", "received_at")),
)


async def _insert_account(conn: AsyncConnection, account_id: str, now: datetime) -> None:
    """An account row, naming only the columns every revision has had."""
    await conn.execute(
        _OLD_ACCOUNTS.insert(),
        {
            "id": account_id,
            "phone_number_id": account_id,
            "display_phone_token": b"t",
            "display_phone_sealed": b"s",
            "app_secret_sealed": b"s",
            "verify_token_sha256": "0" * 64,
            "created_at": now,
        },
    )


async def _insert_object(conn: AsyncConnection, object_id: int, now: datetime) -> None:
    """A sealed object row of a record (its content is never read here)."""
    await conn.execute(
        metadata.tables["sealed_objects"].insert(),
        {
            "id": object_id,
            "object_key": f"records/{object_id}",
            "version_id": "v",
            "kind": "record",
            "key_id": "k",
            "sha256": "0" * 64,
            "size": 1,
            "retain_until": now,
            "legal_hold": False,
            "sealed_at": now,
        },
    )


async def _seed_record(url: str, occurred_at: datetime, *, token: bool = False) -> None:
    """One record (and one search token, as revision 0003 knows them), without a
    binding, as revisions before 0007 know records."""
    engine = create_engine(url)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            await _insert_account(conn, "acc", now)
            await _insert_object(conn, 1, now)
            await conn.execute(
                _OLD_RECORDS.insert(),
                {
                    "id": 7,
                    "account_id": "acc",
                    "dedupe_key": "m:1",
                    "kind": "message",
                    "source": "cloud_api",
                    "direction": "inbound",
                    "item_type": "text",
                    "occurred_at": occurred_at,
                    "received_at": now,
                    "has_media": False,
                    "forwarded": False,
                    "revoked": False,
                    "opens_window": True,
                    "object_id": 1,
                },
            )
            if token:
                await conn.execute(_OLD_TOKENS.insert(), {"token": b"12345678", "record_id": 7})
    finally:
        await engine.dispose()


async def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(sa.text(query))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()


def test_search_tokens_keep_their_record_and_gain_its_time(
    database_url: str, keyring: Keyring
) -> None:
    occurred_at = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    downgrade(database_url, "0003")
    asyncio.run(_seed_record(database_url, occurred_at, token=True))

    upgrade(database_url, keyring=keyring)
    assert asyncio.run(_rows(database_url, "SELECT token, at, record_id FROM search_tokens")) == [
        (b"12345678", time_key(occurred_at), 7)
    ]
    assert time_key(occurred_at) == 1_741_064_767_890_123

    downgrade(database_url, "0003")
    assert asyncio.run(_rows(database_url, "SELECT token, record_id FROM search_tokens")) == [
        (b"12345678", 7)
    ]


CUSTOMER = "447700900222"
WAMID = "wamid.HBgMNDQ3NzAwOTAwMjIyFQIAERgSM0E4MUM5RjA1NEE3QTNDRDlBAA=="
REPLY = "wamid.HBgMNDQ3NzAwOTAwMjIyFQIAEhgUM0FCOEQ2QTJEODlFNzUxQzRGMjcA"


async def seed_meta_ids(url: str) -> None:
    """A message, its status, a reply and its delivery state and media, written as
    revision 0005 knows them: with Meta's ids (which carry the number) in the rows."""
    engine = create_engine(url)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    record = {
        "account_id": "acc",
        "source": "cloud_api",
        "occurred_at": now,
        "received_at": now,
        "has_media": False,
        "forwarded": False,
        "revoked": False,
        "opens_window": False,
        "object_id": 1,
        "related_wamid": None,
    }
    try:
        async with engine.begin() as conn:
            await _insert_account(conn, "acc", now)
            await _insert_object(conn, 1, now)
            await conn.execute(
                _OLD_RECORDS.insert(),
                [
                    record
                    | {"id": 1, "dedupe_key": f"m:{WAMID}:text", "wamid": WAMID}
                    | {"kind": "echo", "direction": "outbound", "item_type": "text"},
                    record
                    | {"id": 2, "dedupe_key": f"s:{WAMID}:read", "wamid": WAMID}
                    | {"kind": "status", "direction": "outbound", "item_type": "read"},
                    record
                    | {"id": 3, "dedupe_key": f"m:{REPLY}:text", "wamid": REPLY}
                    | {"related_wamid": WAMID, "kind": "message", "direction": "inbound"}
                    | {"item_type": "text"},
                ]
                # Enough rows that the rebuilt table leaves pages free in the file.
                + [
                    record
                    | {"id": n, "dedupe_key": f"s:{WAMID}:{n}", "wamid": WAMID}
                    | {"kind": "status", "direction": "outbound", "item_type": "sent"}
                    for n in range(10, 400)
                ],
            )
            await conn.execute(
                sa.table(
                    "delivery_states",
                    *(sa.column(c) for c in ("account_id", "wamid", "status")),
                    sa.column("updated_at", archiver.core.db.UTCDateTime()),
                ).insert(),
                {"account_id": "acc", "wamid": WAMID, "status": "read", "updated_at": now},
            )
            await conn.execute(
                sa.table(
                    "media_items",
                    *(sa.column(c) for c in ("record_id", "media_id", "state", "attempts")),
                    sa.column("next_attempt_at", archiver.core.db.UTCDateTime()),
                ).insert(),
                {
                    "record_id": 3,
                    "media_id": "1037543291543636",
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                },
            )
    finally:
        await engine.dispose()


async def _meta_id_index(url: str, keyring: Keyring) -> MetaIdIndex:
    """The token index the running service would use (the same subject key)."""
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            _, key = await keyring.key_for(session, META_ID_SUBJECT)
    finally:
        await engine.dispose()
    return MetaIdIndex(key)


def _tokens(url: str) -> list[tuple[object, ...]]:
    query = "SELECT id, dedupe_token, wamid_token, related_wamid_token FROM records ORDER BY id"
    return asyncio.run(_rows(url, query))


def test_meta_ids_become_blind_tokens_and_survive_a_round_trip(
    database_url: str, keyring: Keyring
) -> None:
    downgrade(database_url, "0005")
    asyncio.run(seed_meta_ids(database_url))
    # Without the root key nothing can be tokenised, and nothing is changed.
    with pytest.raises(RuntimeError, match="needs the root key"):
        upgrade(database_url)
    assert asyncio.run(_rows(database_url, "SELECT version_num FROM alembic_version")) == [
        ("0005",)
    ]
    assert asyncio.run(_rows(database_url, "SELECT wamid FROM delivery_states")) == [(WAMID,)]

    upgrade(database_url, keyring=keyring)
    check(database_url)
    ids = asyncio.run(_meta_id_index(database_url, keyring))
    token = ids.token
    assert sorted(_tokens(database_url))[:3] == [
        (1, ids.dedupe_token("acc", f"m:{WAMID}:text"), token("acc", WAMID), None),
        (2, ids.dedupe_token("acc", f"s:{WAMID}:read"), token("acc", WAMID), None),
        (3, ids.dedupe_token("acc", f"m:{REPLY}:text"), token("acc", REPLY), token("acc", WAMID)),
    ]
    assert asyncio.run(_rows(database_url, "SELECT wamid_token, status FROM delivery_states")) == [
        (token("acc", WAMID), "read")
    ]
    stored = asyncio.run(database_bytes(database_url))
    database = sqlite_file(database_url)
    if database is not None:  # and not in the file's free pages either
        stored += b"".join(p.read_bytes() for p in Path(database).parent.glob("*.db*"))
    for secret in (WAMID, REPLY, WAMID[6:30], CUSTOMER, "1037543291543636"):
        assert secret.encode() not in stored, secret

    # Down and up again: the tokens are kept (as hex), never the ids.
    before = _tokens(database_url)
    downgrade(database_url, "0005")
    kept = asyncio.run(_rows(database_url, "SELECT wamid FROM delivery_states"))
    assert kept == [("tok:" + token("acc", WAMID).hex(),)]
    upgrade(database_url, keyring=keyring)
    assert _tokens(database_url) == before


async def _verify_bindings(url: str, keyring: Keyring, vault_dir: Path) -> BindingReport:
    engine = create_engine(url)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:
            _, key = await keyring.key_for(session, BINDING_SUBJECT)
            vault = Vault(FileStore(vault_dir, SystemClock()), keyring, SystemClock())
            reader = RecordReader(vault, RecordBinding(key), IntegrityAlarm(None))
            return await reader.verify(session)
    finally:
        await engine.dispose()


def test_existing_records_are_bound_by_the_migration_under_the_root_key(
    database_url: str, keyring: Keyring, tmp_path: Path
) -> None:
    downgrade(database_url, "0005")
    asyncio.run(_seed_record(database_url, datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)))

    with pytest.raises(RuntimeError, match="needs the root key"):
        upgrade(database_url)
    assert asyncio.run(_rows(database_url, "SELECT version_num FROM alembic_version")) == [
        ("0005",)
    ]

    upgrade(database_url, keyring=keyring)
    check(database_url)
    bound = asyncio.run(_verify_bindings(database_url, keyring, tmp_path / "vault"))
    assert (bound.checked, bound.failures) == (1, [])

    asyncio.run(_rows(database_url, "UPDATE records SET direction = 'outbound' WHERE id = 7"))
    moved = asyncio.run(_verify_bindings(database_url, keyring, tmp_path / "vault"))
    assert moved.failures == [(7, "binding mismatch")]


_DIGEST = "ab" * 20


async def _seed_imports(url: str) -> None:
    """As revision 0005 left them: two conversations' imported lines, one webhook
    record, and a record of each kind with the same old import key in two accounts."""
    engine = create_engine(url)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    tables = metadata.tables
    try:
        async with engine.begin() as conn:
            for account in ("acc_a", "acc_b"):
                await _insert_account(conn, account, now)
            for contact in ("ct_one", "ct_two"):
                await conn.execute(tables["contacts"].insert(), {"id": contact, "created_at": now})
            rows = [
                (1, "acc_a", "ct_one", f"x:{_DIGEST}:1", "chat_import"),
                (2, "acc_a", "ct_two", f"x:{_DIGEST}:2", "chat_import"),
                (3, "acc_b", "ct_two", f"x:{_DIGEST}:1", "chat_import"),
                (4, "acc_a", "ct_one", "m:wamid.1:text", "cloud_api"),
            ]
            for n, account, contact, key, source in rows:
                await _insert_object(conn, n, now)
                await conn.execute(
                    _OLD_RECORDS.insert(),
                    {
                        "id": n,
                        "account_id": account,
                        "contact_id": contact,
                        "dedupe_key": key,
                        "kind": "message",
                        "source": source,
                        "direction": "inbound",
                        "item_type": "text",
                        "occurred_at": now,
                        "received_at": now,
                        "has_media": False,
                        "forwarded": False,
                        "revoked": False,
                        "opens_window": False,
                        "object_id": n,
                    },
                )
    finally:
        await engine.dispose()


def test_imported_keys_gain_their_contact_and_lose_it_again(database_url: str) -> None:
    downgrade(database_url, "0005")
    asyncio.run(_seed_imports(database_url))
    keys = "SELECT dedupe_key FROM records ORDER BY id"

    upgrade(database_url, "0006")
    assert asyncio.run(_rows(database_url, keys)) == [
        (f"x:{_DIGEST}:1:ct_one",),
        (f"x:{_DIGEST}:2:ct_two",),
        (f"x:{_DIGEST}:1:ct_two",),
        ("m:wamid.1:text",),
    ]

    downgrade(database_url, "0005")
    assert asyncio.run(_rows(database_url, keys)) == [
        (f"x:{_DIGEST}:1",),
        (f"x:{_DIGEST}:2",),
        (f"x:{_DIGEST}:1",),
        ("m:wamid.1:text",),
    ]


def test_the_downgrade_refuses_once_two_conversations_share_lines(database_url: str) -> None:
    downgrade(database_url, "0005")
    asyncio.run(_seed_imports(database_url))
    upgrade(database_url, "0006")
    # Contact two's copy of contact one's line, as an import now keeps it.
    asyncio.run(_rows(database_url, "UPDATE records SET account_id = 'acc_a' WHERE id = 3"))
    keys = "SELECT dedupe_key FROM records ORDER BY id"
    before = asyncio.run(_rows(database_url, keys))

    with pytest.raises(sa.exc.IntegrityError):
        downgrade(database_url, "0005")
    assert asyncio.run(_rows(database_url, keys)) == before


def _old_events(count: int) -> list[dict[str, object]]:
    """Audit event rows as revisions before 0011 wrote them: no actor name, hashed
    over the version 1 encoding as an auditor's standard-library verifier knows it."""
    rows: list[dict[str, object]] = []
    prev = "0" * 64
    for seq in range(1, count + 1):
        occurred = datetime(2026, 1, 1, 0, 0, seq, tzinfo=UTC)
        fields = {
            "action": "http.GET /api/v1/messages/{id}",
            "actor": f"us_{seq}",
            "client_ip": "203.0.113.7",
            "details_sha256": None,
            "occurred_at": occurred.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "outcome": "allowed",
            "reason": None,
            "request_id": f"req-{seq}",
            "role": "auditor",
            "scope": None,
            "seq": seq,
            "target": f"record:{seq}",
            "user_agent": "Mozilla/5.0",
            "v": 1,
        }
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(bytes.fromhex(prev) + canonical.encode()).hexdigest()
        rows.append(
            {
                **{k: v for k, v in fields.items() if k not in ("details_sha256", "v")},
                "occurred_at": occurred,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    return rows


_OLD_EVENTS = sa.table(
    "audit_events",
    *(sa.column(c) for c in ("seq", "actor", "role", "action", "target", "scope", "outcome")),
    *(sa.column(c) for c in ("reason", "request_id", "client_ip", "user_agent")),
    *(sa.column(c) for c in ("prev_hash", "hash")),
    sa.column("occurred_at", archiver.core.db.UTCDateTime()),
)


async def _seed_events(url: str, rows: list[dict[str, object]]) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(_OLD_EVENTS.insert(), rows)
    finally:
        await engine.dispose()


async def _audit_after_upgrade(url: str, keyring: Keyring, vault_dir: Path) -> AuditVerifyReport:
    """Verify the chain, append an event with its actor's name, verify again."""
    engine = create_engine(url)
    sessions = session_factory(engine)
    clock = SystemClock()
    audit = AuditLog(sessions, Vault(FileStore(vault_dir, clock), keyring, clock), keyring, clock)
    try:
        before = await audit.verify()
        assert (before.ok, before.events) == (True, 3), before.problems
        entry = AuditEntry(actor="us_9", actor_name="ana", action="http.GET /", outcome="allowed")
        await audit.record_durable(entry)
        return await audit.verify()
    finally:
        await audit.close()
        await engine.dispose()


def test_audit_events_written_before_actor_names_still_verify(
    database_url: str, keyring: Keyring, tmp_path: Path
) -> None:
    downgrade(database_url, "0010")
    asyncio.run(_seed_events(database_url, _old_events(3)))
    upgrade(database_url)
    check(database_url)
    after = asyncio.run(_audit_after_upgrade(database_url, keyring, tmp_path / "vault"))
    assert (after.ok, after.events) == (True, 4), after.problems
    names = "SELECT actor_name FROM audit_events ORDER BY seq"
    assert asyncio.run(_rows(database_url, names)) == [(None,), (None,), (None,), ("ana",)]

    # Down again: the names go, the table stays append-only.
    downgrade(database_url, "0010")
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        asyncio.run(_rows(database_url, "UPDATE audit_events SET actor = 'x' WHERE seq = 1"))
    upgrade(database_url)
