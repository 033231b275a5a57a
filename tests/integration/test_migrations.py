"""Migrations run forwards and backwards on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import inspect

from api.migrate import check, downgrade, upgrade
from api.models import metadata
from archiver.binding import BINDING_SUBJECT, RecordBinding
from archiver.blind_index import time_key
from archiver.clock import SystemClock
from archiver.db import create_engine, session_factory
from archiver.filestore import FileStore
from archiver.keyring import Keyring, new_root_key
from archiver.records import BindingReport, IntegrityAlarm, RecordReader
from archiver.vault import Vault


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


async def _seed_record(url: str, occurred_at: datetime, *, token: bool = False) -> None:
    """One record (and one search token, as revision 0003 knows them), without a
    binding, as revisions before 0007 know records."""
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


def test_search_tokens_keep_their_record_and_gain_its_time(database_url: str) -> None:
    occurred_at = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    downgrade(database_url, "0003")
    asyncio.run(_seed_record(database_url, occurred_at, token=True))

    upgrade(database_url, keyring=Keyring([new_root_key()], SystemClock()))
    assert asyncio.run(_rows(database_url, "SELECT token, at, record_id FROM search_tokens")) == [
        (b"12345678", time_key(occurred_at), 7)
    ]
    assert time_key(occurred_at) == 1_741_064_767_890_123

    downgrade(database_url, "0003")
    assert asyncio.run(_rows(database_url, "SELECT token, record_id FROM search_tokens")) == [
        (b"12345678", 7)
    ]


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
    database_url: str, tmp_path: Path
) -> None:
    downgrade(database_url, "0005")
    asyncio.run(_seed_record(database_url, datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)))

    with pytest.raises(RuntimeError, match="needs the root key"):
        upgrade(database_url)
    assert asyncio.run(_rows(database_url, "SELECT version_num FROM alembic_version")) == [
        ("0005",)
    ]

    keyring = Keyring([new_root_key()], SystemClock())
    upgrade(database_url, keyring=keyring)
    check(database_url)
    bound = asyncio.run(_verify_bindings(database_url, keyring, tmp_path / "vault"))
    assert (bound.checked, bound.failures) == (1, [])

    asyncio.run(_rows(database_url, "UPDATE records SET direction = 'outbound' WHERE id = 7"))
    moved = asyncio.run(_verify_bindings(database_url, keyring, tmp_path / "vault"))
    assert moved.failures == [(7, "binding mismatch")]
