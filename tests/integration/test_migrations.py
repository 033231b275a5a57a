"""Migrations run forwards and backwards on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

import asyncio

from sqlalchemy import inspect

from api.migrate import check, downgrade, upgrade
from api.models import metadata
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
