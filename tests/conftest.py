"""Shared fixtures: migrated databases (SQLite and PostgreSQL), keyring, vault."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.migrate import upgrade
from archiver.core.clock import FixedClock
from archiver.core.db import create_engine, session_factory
from archiver.crypto.keyring import Keyring
from archiver.vault.filestore import FileStore
from archiver.vault.services import Vault

PG_ADMIN_DSN = os.environ.get("STRONGROOM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("STRONGROOM_TEST_REQUIRE_PG") == "1"
START = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


async def _pg_execute(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_available() -> bool:
    try:
        asyncio.run(_pg_execute("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


async def database_bytes(url: str) -> bytes:
    """Every value in every table of the database at ``url``, as bytes (``bytea`` raw,
    the rest as text), for scans of what it must not hold."""
    engine = create_engine(url)
    out: list[bytes] = []
    try:
        async with engine.connect() as conn:
            for table in await conn.run_sync(lambda sync: inspect(sync).get_table_names()):
                every = sa.select(sa.literal_column("*")).select_from(sa.table(table))
                for row in await conn.execute(every):
                    out += [v if isinstance(v, bytes) else str(v).encode() for v in row]
    finally:
        await engine.dispose()
    return b"\n".join(out)


def require_postgresql() -> None:
    """Skip the test without PostgreSQL; fail it where PostgreSQL is required."""
    if not _pg_available():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required here but unreachable at {PG_ADMIN_DSN}")
        pytest.skip("PostgreSQL is not reachable")


def _pg_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database that each test copies; skips without PostgreSQL."""
    require_postgresql()
    name = f"sr_tmpl_{os.getpid()}"
    asyncio.run(_pg_execute(f"DROP DATABASE IF EXISTS {name}"))
    asyncio.run(_pg_execute(f"CREATE DATABASE {name}"))
    upgrade(_pg_url(name))
    yield name
    asyncio.run(_pg_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "strongroom.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    template = request.getfixturevalue("pg_template")
    name = f"sr_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_execute(f"CREATE DATABASE {name} TEMPLATE {template}"))
    yield _pg_url(name)
    asyncio.run(_pg_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
def root_key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def keyring(root_key: bytes, clock: FixedClock) -> Keyring:
    return Keyring([root_key], clock)


@pytest.fixture
def file_store(tmp_path: Path, clock: FixedClock) -> FileStore:
    return FileStore(tmp_path / "vault", clock)


@pytest.fixture
def vault(file_store: FileStore, keyring: Keyring, clock: FixedClock) -> Vault:
    return Vault(file_store, keyring, clock)
