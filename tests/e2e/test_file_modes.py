"""Everything the archive keeps on disk is its owner's alone, whatever the umask,
and a start-up refuses a data directory, database or vault others can reach."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from api.bootstrap import open_services
from api.migrate import upgrade
from api.settings import load_settings
from tests.e2e.conftest import running_server
from tests.e2e.server import STRONGROOM, clean_env, customer_message


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _open_modes(root: Path) -> list[str]:
    """Every path under ``root`` (and itself) that group or others may use."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            found.append(f"{path.relative_to(root)} {mode:04o}")
    return found


def test_a_served_archive_is_private_under_a_loose_umask(tmp_path: Path) -> None:
    """A real server, started with umask 022, that captured and projected a
    message: database, WAL, key, vault objects, sidecars, journal, all private."""
    with _umask(0o022), running_server(tmp_path, "sqlite") as server:
        body = json.dumps(customer_message("447700900123", "wamid.MODES1", 1_760_000_000))
        assert server.post_webhook(body.encode()).status_code == 200
        server.records_of("wamid.MODES1")
        data = server.data_dir
        files = {p.name for p in data.rglob("*") if p.is_file()}
        assert {"strongroom.db", "strongroom.db-wal", "strongroom.db-shm", "master.key"} <= files
        assert any((data / "vault" / "objects").rglob("*")), "nothing was sealed"
        assert _open_modes(data) == []


def test_services_create_private_files_without_the_cli(tmp_path: Path) -> None:
    """Without the command line's umask, each creation still says 0700 or 0600."""
    data = tmp_path / "data"
    settings = load_settings({"STRONGROOM_DATA_DIR": str(data)})

    async def seal() -> None:
        services = await open_services(settings)
        try:
            retain = datetime.now(UTC) + timedelta(days=1)
            await asyncio.to_thread(
                services.vault.store.put, "probe/object", b"sealed", retain_until=retain
            )
        finally:
            await services.close()

    with _umask(0o022):
        data.mkdir(mode=0o700)
        upgrade(settings.database_url)
        asyncio.run(seal())
    assert (data / "vault" / "objects" / "probe" / "object").is_file()
    assert (data / "strongroom.db").is_file()
    assert (data / "master.key").is_file()
    assert _open_modes(data) == []


@pytest.mark.parametrize(
    ("target", "setting"),
    [
        ("", "STRONGROOM_DATA_DIR"),
        ("strongroom.db", "STRONGROOM_DATABASE_URL"),
        ("vault", "STRONGROOM_VAULT_URL"),
    ],
)
def test_start_up_refuses_what_others_can_reach(tmp_path: Path, target: str, setting: str) -> None:
    data = tmp_path / "data"
    env = clean_env(STRONGROOM_DATA_DIR=str(data))

    def keys_status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [STRONGROOM, "keys", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    made = subprocess.run(
        [STRONGROOM, "migrate"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert made.returncode == 0, made.stderr
    first = keys_status()
    assert first.returncode == 0, first.stderr
    opened = data / target
    if target == "vault":
        opened.mkdir()  # nothing was written to the vault yet
    loose = 0o755 if opened.is_dir() else 0o644
    opened.chmod(loose)
    refused = keys_status()
    assert refused.returncode == 2
    assert refused.stderr == (
        f"strongroom: {setting}: {opened} is open to group or others (mode {loose:04o}): "
        f"chmod {'700' if opened.is_dir() else '600'} it\n"
    )
