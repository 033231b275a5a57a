"""End-to-end fixtures: a real server on SQLite, and on PostgreSQL where available."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import _pg_execute, _pg_url, require_postgresql
from tests.e2e.server import Server, clean_env


def server_env(data_dir: Path, database: str, **settings: str) -> dict[str, str]:
    env = clean_env(STRONGROOM_DATA_DIR=str(data_dir), **settings)
    if database != "sqlite":
        env["STRONGROOM_DATABASE_URL"] = _pg_url(database)
    return env


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def database_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """``sqlite``, or the name of a fresh PostgreSQL database for one test module."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    require_postgresql()
    name = f"sr_e2e_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_execute(f"CREATE DATABASE {name}"))
    yield name
    asyncio.run(_pg_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@contextmanager
def running_server(
    data_dir: Path, database: str, settings: dict[str, str] | None = None, **account: str
) -> Iterator[Server]:
    """A started server with an admin, an officer and one account (``account_id``);
    ``settings`` are added to its environment, ``account`` to the account's fields."""
    env = server_env(data_dir / "data", database, **(settings or {}))
    srv = Server(env, data_dir / "data", data_dir / "log")
    try:
        srv.start()
        srv.bootstrap_users()
        srv.account_id = srv.add_account(**account)
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def server(database_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running server with one account registered (``server.account_id``)."""
    with running_server(tmp_path_factory.mktemp("server"), database_name) as srv:
        yield srv


@pytest.fixture
def clients(server: Server) -> Iterator[Callable[..., httpx.Client]]:
    """New cookie-keeping clients for ``server``, all closed afterwards."""
    made: list[httpx.Client] = []

    def new(**cookies: str) -> httpx.Client:
        client = httpx.Client(
            base_url=server.url, timeout=10, follow_redirects=False, cookies=cookies
        )
        made.append(client)
        return client

    yield new
    for client in made:
        client.close()
