"""Migrations run forwards and backwards on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import inspect

from api.migrate import check, downgrade, upgrade
from api.models import metadata
from archiver.blind_index import time_key
from archiver.db import create_engine


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


async def _seed_record_with_token(url: str, occurred_at: datetime) -> None:
    """One record and one search token, written as revision 0003 knows them."""
    engine = create_engine(url)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                metadata.tables["accounts"].insert(),
                {
                    "id": "acc",
                    "phone_number_id": "1",
                    "display_phone_token": b"t",
                    "display_phone_sealed": b"s",
                    "app_secret_sealed": b"s",
                    "verify_token_sha256": "0" * 64,
                    "created_at": now,
                },
            )
            await conn.execute(
                metadata.tables["sealed_objects"].insert(),
                {
                    "id": 1,
                    "object_key": "records/x",
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
            await conn.execute(
                metadata.tables["records"].insert(),
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
            await conn.execute(_OLD_TOKENS.insert(), {"token": b"12345678", "record_id": 7})
    finally:
        await engine.dispose()


async def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(sa.text(query))]
    finally:
        await engine.dispose()


def test_search_tokens_keep_their_record_and_gain_its_time(database_url: str) -> None:
    occurred_at = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    downgrade(database_url, "0003")
    asyncio.run(_seed_record_with_token(database_url, occurred_at))

    upgrade(database_url)
    assert asyncio.run(_rows(database_url, "SELECT token, at, record_id FROM search_tokens")) == [
        (b"12345678", time_key(occurred_at), 7)
    ]
    assert time_key(occurred_at) == 1_741_064_767_890_123

    downgrade(database_url, "0003")
    assert asyncio.run(_rows(database_url, "SELECT token, record_id FROM search_tokens")) == [
        (b"12345678", 7)
    ]


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
                await conn.execute(
                    tables["accounts"].insert(),
                    {
                        "id": account,
                        "phone_number_id": account,
                        "display_phone_token": b"t",
                        "display_phone_sealed": b"s",
                        "app_secret_sealed": b"s",
                        "verify_token_sha256": "0" * 64,
                        "created_at": now,
                    },
                )
            for contact in ("ct_one", "ct_two"):
                await conn.execute(tables["contacts"].insert(), {"id": contact, "created_at": now})
            rows = [
                (1, "acc_a", "ct_one", f"x:{_DIGEST}:1", "chat_import"),
                (2, "acc_a", "ct_two", f"x:{_DIGEST}:2", "chat_import"),
                (3, "acc_b", "ct_two", f"x:{_DIGEST}:1", "chat_import"),
                (4, "acc_a", "ct_one", "m:wamid.1:text", "cloud_api"),
            ]
            for n, account, contact, key, source in rows:
                await conn.execute(
                    tables["sealed_objects"].insert(),
                    {
                        "id": n,
                        "object_key": f"records/{n}",
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
                await conn.execute(
                    tables["records"].insert(),
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

    upgrade(database_url)
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
    upgrade(database_url)
    # Contact two's copy of contact one's line, as an import now keeps it.
    asyncio.run(_execute(database_url, "UPDATE records SET account_id = 'acc_a' WHERE id = 3"))
    keys = "SELECT dedupe_key FROM records ORDER BY id"
    before = asyncio.run(_rows(database_url, keys))

    with pytest.raises(sa.exc.IntegrityError):
        downgrade(database_url, "0005")
    assert asyncio.run(_rows(database_url, keys)) == before


async def _execute(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()
