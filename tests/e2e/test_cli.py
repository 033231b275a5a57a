"""The ``strongroom`` command line, run as a real process on the embedded default."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import click
import httpx
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from api.bootstrap import open_services
from api.cli.main import main
from api.migrate import alembic_config, upgrade
from api.settings import load_settings
from archiver.vault.models import SealedObject
from tests.conftest import _pg_execute, database_bytes, require_postgresql
from tests.e2e.conftest import server_env
from tests.integration.test_migrations import WAMID, seed_meta_ids

STRONGROOM = str(Path(sys.executable).with_name("strongroom"))


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STRONGROOM, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    return clean | {"STRONGROOM_DATA_DIR": str(tmp_path / "data")}


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


@pytest.mark.parametrize(
    "command", [(), *_commands(main)], ids=lambda c: " ".join(c) or "strongroom"
)
def test_every_command_has_help(command: tuple[str, ...], env: dict[str, str]) -> None:
    result = run(env, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_bad_setting_stops_with_one_line(env: dict[str, str]) -> None:
    result = run(env | {"STRONGROOM_VAULT_URL": "ftp://nowhere"}, "vault", "verify")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "strongroom: STRONGROOM_VAULT_URL: unknown scheme 'ftp' (use file:// or s3://)"
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_is_healthy_and_ready_within_five_seconds(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = _free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [STRONGROOM, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = None
        while time.monotonic() - started < 5 and ready is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            except httpx.TransportError:
                time.sleep(0.05)
        assert ready is not None, "the service did not answer within 5 s"
        assert health.status_code == 200
        assert ready.status_code == 200
        assert ready.json() == {"database": "ok", "vault": "ok", "status": "ok"}
        schema = httpx.get(f"http://127.0.0.1:{port}/schema/openapi.json", timeout=2)
        assert schema.status_code == 200
        assert "/readyz" in schema.json()["paths"]
        assert ready.headers["x-request-id"]
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    key_file = tmp_path / "data" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "for evaluation" in output
    assert key_file.read_text().strip() not in output


def test_keys_init_writes_a_private_file_and_never_overwrites(
    env: dict[str, str], tmp_path: Path
) -> None:
    first = run(env, "keys", "init")
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "data" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    content = key_file.read_text()
    assert content.strip() not in first.stdout + first.stderr
    second = run(env, "keys", "init")
    assert second.returncode == 1
    assert "already exists" in second.stderr
    assert key_file.read_text() == content


def _seal_some(env: dict[str, str], count: int) -> list[SealedObject]:
    settings = load_settings(env)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    upgrade(settings.database_url)

    async def seal() -> list[SealedObject]:
        services = await open_services(settings)
        records = []
        async with services.sessions() as session, session.begin():
            for i in range(count):
                records.append(
                    await services.vault.seal(
                        session,
                        kind="message",
                        subject=f"contact:{i}",
                        plaintext=f"message {i}".encode(),
                        retain_until=services.clock.now() + timedelta(days=30),
                    )
                )
        await services.close()
        return records

    return asyncio.run(seal())


def _open_all(env: dict[str, str], records: list[SealedObject]) -> list[bytes]:
    async def read() -> list[bytes]:
        services = await open_services(load_settings(env))
        async with services.sessions() as session:
            out = [await services.vault.open(session, r) for r in records]
        await services.close()
        return out

    return asyncio.run(read())


def test_vault_verify_exit_codes(env: dict[str, str], tmp_path: Path) -> None:
    records = _seal_some(env, 3)
    clean = run(env, "vault", "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "checked 3 objects: 0 drift" in clean.stdout

    target = tmp_path / "data" / "vault" / "objects" / records[1].object_key
    target.chmod(0o644)
    sealed = target.read_bytes()
    # The last byte flipped: set to a fixed value, it was unchanged once in 256 runs.
    target.write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    drift = run(env, "vault", "verify")
    assert drift.returncode == 1
    assert f"DRIFT sha256 {records[1].object_key}" in drift.stdout


def test_keys_rotate_rewraps_and_objects_stay_readable(env: dict[str, str], tmp_path: Path) -> None:
    records = _seal_some(env, 4)
    vault_dir = tmp_path / "data" / "vault" / "objects"
    before = {r.object_key: (vault_dir / r.object_key).read_bytes() for r in records}
    assert "subject keys wrapped by" in run(env, "keys", "status").stdout

    rotated = run(env, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert {r.object_key: (vault_dir / r.object_key).read_bytes() for r in records} == before
    assert _open_all(env, records) == [f"message {i}".encode() for i in range(4)]

    status = run(env, "keys", "status")
    assert status.returncode == 0
    new_id = rotated.stdout.split("root key ")[1].split()[0]
    assert f"root key: {new_id}" in status.stdout
    # Every live key (the contacts', the blind index's, the Meta id tokens', the record
    # binding's, the audit trail's signing, details and checkpoint keys) moved.
    wrapped = [
        line for line in status.stdout.splitlines() if line.startswith("subject keys wrapped")
    ]
    assert wrapped == [f"subject keys wrapped by {new_id}: {len(records) + 6}"]
    assert f"re-wrapped {len(records) + 6} subject keys" in rotated.stdout


def test_migrate_turns_meta_ids_into_tokens_with_the_archives_root_key(
    env: dict[str, str],
) -> None:
    settings = load_settings(env)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    upgrade(settings.database_url, "0005")
    asyncio.run(seed_meta_ids(settings.database_url))

    migrated = run(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr

    async def tokens() -> tuple[list[tuple[object, ...]], bytes]:
        services = await open_services(settings)
        try:
            async with services.sessions() as session:
                rows = await session.execute(sa.text("SELECT id, wamid_token FROM records"))
                found = sorted(tuple(row) for row in rows)
            return found, services.meta_ids.token("acc", WAMID)
        finally:
            await services.close()

    rows, token = asyncio.run(tokens())
    assert (1, token) in rows  # what the service computes, under the same subject key
    assert WAMID.encode() not in asyncio.run(database_bytes(settings.database_url))


def test_tokens_carry_only_permissions_the_user_holds(env: dict[str, str]) -> None:
    assert run(env, "migrate").returncode == 0
    password = {"CLI_PASSWORD": "correct horse battery staple"}
    for username, role in (("cli-agent", "agent"), ("cli-officer", "compliance_officer")):
        made = run(
            env | password,
            "users",
            "create",
            username,
            "--role",
            role,
            "--password-env",
            "CLI_PASSWORD",
        )
        assert made.returncode == 0, made.stderr
    refused = run(env, "tokens", "create", "cli-agent", "--scope", "archive.read")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "strongroom: cli-agent lacks archive.read: a token cannot hold a permission its user lacks"
    )
    beyond = run(
        env, "tokens", "create", "cli-officer", "--scope", "archive.read", "--scope", "audit.read"
    )
    assert beyond.returncode == 1
    assert "cli-officer lacks audit.read:" in beyond.stderr
    for username in ("cli-agent", "cli-officer"):
        assert "sr_" not in run(env, "tokens", "list", username).stdout  # nothing was issued
    issued = run(env, "tokens", "create", "cli-officer", "--scope", "archive.read")
    assert issued.returncode == 0, issued.stderr
    assert issued.stdout.startswith("sr_")


def test_users_create_refuses_a_weak_password_with_the_reason(env: dict[str, str]) -> None:
    assert run(env, "migrate").returncode == 0
    weak = run(
        env | {"CLI_PASSWORD": "password1234"},
        "users",
        "create",
        "cli-weak",
        "--password-env",
        "CLI_PASSWORD",
    )
    assert weak.returncode == 1
    assert weak.stderr.strip().splitlines()[-1] == (
        "strongroom: this password is too easy to guess: this is a very common password"
    )
    assert "cli-weak" not in run(env, "users", "list").stdout


# The commands that may make an archive where there is none.
CREATE_AN_ARCHIVE = {("serve",), ("migrate",), ("keys", "init")}
# Every other command, with arguments it accepts: each needs an existing archive.
CHAT_EXPORT = str(Path(__file__).parents[1] / "fixtures" / "chat_exports" / "android_de.txt")
NEED_AN_ARCHIVE: dict[tuple[str, ...], list[str]] = {
    ("worker",): [],
    ("keys", "status"): [],
    ("keys", "rotate"): [],
    ("vault", "verify"): [],
    ("accounts", "add"): [
        *("--phone-number-id", "1", "--display-phone-number", "+15550100111"),
        *("--app-secret", "s", "--verify-token", "t"),
    ],
    ("accounts", "list"): [],
    ("import", "chat-export"): [CHAT_EXPORT, "--account", "acc_x", "--contact", "+4915123456789"],
    ("import", "check"): [],
    ("users", "create"): ["someone", "--password-env", "CLI_PASSWORD"],
    ("users", "grant"): ["someone", "admin"],
    ("users", "revoke"): ["someone", "admin"],
    ("users", "reset-mfa"): ["someone"],
    ("users", "list"): [],
    ("tokens", "create"): ["someone", "--scope", "archive.read"],
    ("tokens", "list"): ["someone"],
    ("tokens", "revoke"): ["tok_x"],
    ("lexicon", "add"): ["term"],
    ("lexicon", "list"): [],
    ("lexicon", "remove"): ["1"],
    ("demo",): [],
    ("audit", "verify"): [],
    ("audit", "export"): ["--out", "trail.jsonl"],
    ("audit", "public-key"): [],
    ("outbox", "send"): [
        *("acc_x", "+4915123456789", "--sender", "someone", "--text", "hi", "--key", "k1")
    ],
    ("outbox", "list"): [],
    ("outbox", "show"): ["0" * 32],
    ("templates", "list"): [],
    ("templates", "show"): ["1"],
    ("templates", "create"): [
        *("acc_x", "order_update", "--language", "en", "--category", "utility"),
        *("--file", "template.json"),
    ],
    ("templates", "submit"): ["1"],
    ("templates", "approve"): ["1", "--as", "someone"],
    ("templates", "reject"): ["1", "--as", "someone", "--comment", "no"],
    ("consent", "record"): [
        *("acc_x", "--phone", "+4915123456789", "--category", "marketing", "--action", "opt_in"),
        *("--method", "web_form", "--evidence", "form"),
        *("--occurred-at", "2026-11-03T10:00:00+00:00"),
    ],
    ("consent", "list"): ["ct_x"],
    ("consent", "export"): ["ct_x"],
}


def _leaf_commands() -> set[tuple[str, ...]]:
    return {c for c in _commands(main) if not isinstance(_command(c), click.Group)}


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def env_url(env: dict[str, str]) -> str:
    return load_settings(env).database_url


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_every_command_is_listed_as_making_an_archive_or_needing_one() -> None:
    assert _leaf_commands() == CREATE_AN_ARCHIVE | set(NEED_AN_ARCHIVE)


@pytest.mark.parametrize("command", sorted(NEED_AN_ARCHIVE), ids=" ".join)
def test_a_command_where_there_is_no_archive_says_where_it_looked_and_makes_nothing(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    result = subprocess.run(
        [STRONGROOM, *command, *NEED_AN_ARCHIVE[command]],
        env=clean | {"CLI_PASSWORD": "correct horse battery staple"},
        cwd=here,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("strongroom: no archive here: ")
    assert f"no root key at {here}/var/master.key" in line
    assert f"no database at {here}/var/strongroom.db" in line
    assert f"STRONGROOM_DATA_DIR (now {here}/var)" in line
    assert "STRONGROOM_DATABASE_URL" in line
    assert "STRONGROOM_MASTER_KEY_FILE" in line
    assert _tree(here) == []


def test_a_root_key_without_a_database_is_no_archive_until_migrate(
    database_name: str, tmp_path: Path
) -> None:
    env = server_env(tmp_path / "data", database_name)
    assert run(env, "keys", "init").returncode == 0
    before = _tree(tmp_path)
    refused = run(env, "users", "list")
    assert refused.returncode == 1
    [line] = refused.stderr.splitlines()
    assert "no root key" not in line
    if database_name == "sqlite":
        assert f"no database at {tmp_path}/data/strongroom.db (STRONGROOM_DATABASE_URL)" in line
    else:
        assert "no Strongroom schema in the database postgresql+asyncpg://" in line
        assert f"/{database_name} (STRONGROOM_DATABASE_URL)" in line
    assert _tree(tmp_path) == before

    migrated = run(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    head = ScriptDirectory.from_config(alembic_config(env_url(env))).get_current_head()
    assert migrated.stdout == f"database schema migrated from revision none to {head}\n"
    assert run(env, "users", "list").returncode == 0
    again = run(env, "migrate")
    assert again.stdout == f"database schema is up to date (revision {head})\n"


def test_commands_print_no_alembic_lines(env: dict[str, str]) -> None:
    fresh = run(env, "migrate")
    assert fresh.returncode == 0, fresh.stderr
    for result in (fresh, run(env, "users", "list"), run(env, "keys", "status")):
        assert result.returncode == 0, result.stderr
        assert '"logger": "alembic' not in result.stdout + result.stderr
        assert "Running upgrade" not in result.stderr
    listed = run(env, "users", "list")
    assert (listed.stdout, listed.stderr) == ("", "")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fresh archive of its own (its own PostgreSQL database too)."""
    name = "sqlite"
    if request.param == "postgresql":
        require_postgresql()
        name = f"sr_cli_{uuid.uuid4().hex[:10]}"
        asyncio.run(_pg_execute(f"CREATE DATABASE {name}"))
    env = server_env(tmp_path / "data", name)
    assert run(env, "keys", "init").returncode == 0
    assert run(env, "migrate").returncode == 0
    yield env
    if name != "sqlite":
        asyncio.run(_pg_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _user(env: dict[str, str], username: str, *roles: str) -> None:
    made = run(env | {"CLI_PASSWORD": "correct horse battery staple"}, "users", "create",
               username, "--password-env", "CLI_PASSWORD")  # fmt: skip
    assert made.returncode == 0, made.stderr
    for role in roles:
        granted = run(env, "users", "grant", username, role)
        assert granted.returncode == 0, granted.stderr


def test_templates_need_a_checker_who_is_not_their_maker(
    archive: dict[str, str], tmp_path: Path
) -> None:
    env = archive
    suffix = "t1"
    account = run(
        env, "accounts", "add", "--phone-number-id", "2024000", "--display-phone-number",
        "+15550100222", "--app-secret", "s", "--verify-token", "verify-me", "--waba-id", "777",
    )  # fmt: skip
    assert account.returncode == 0, account.stderr
    maker, checker, bystander = (f"{who}-{suffix}" for who in ("maker", "checker", "bystander"))
    _user(env, maker, "compliance_officer")
    _user(env, checker, "compliance_officer")
    _user(env, bystander, "agent")
    content = tmp_path / "template.json"
    content.write_text(
        '{"components": [{"type": "BODY", "text": "Order {{1}} shipped"}],'
        ' "parameters": [{"name": "1", "type": "text"}]}'
    )
    name = f"order_{suffix}"
    made = run(env, "templates", "create", account.stdout.strip(), name, "--language", "en_us",
               "--category", "utility", "--file", str(content), "--as", maker)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.endswith(f"created: {name} (en_US), draft\n")
    template_id = made.stdout.split()[1]
    assert run(env, "templates", "submit", template_id, "--as", maker).returncode == 0

    own = run(env, "templates", "approve", template_id, "--as", maker)
    assert own.returncode == 1
    assert "another person decides" in own.stderr
    unpermitted = run(env, "templates", "approve", template_id, "--as", bystander)
    assert unpermitted.returncode == 1
    assert unpermitted.stderr == f"strongroom: {bystander} does not hold templates.approve\n"
    assert " submitted " in run(env, "templates", "show", template_id).stdout

    approved = run(env, "templates", "approve", template_id, "--as", checker, "--comment", "ok")
    assert approved.returncode == 0, approved.stderr
    shown = run(env, "templates", "show", template_id).stdout
    assert shown.startswith(f"{template_id}  approved ")
    assert "approved by usr_" in shown
    assert name in run(env, "templates", "list").stdout

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    refused = run(env, "templates", "create", account.stdout.strip(), f"x_{suffix}",
                  "--language", "en", "--category", "utility", "--file", str(broken))  # fmt: skip
    assert refused.returncode == 2
    assert "is not JSON" in refused.stderr


def test_consent_is_recorded_listed_and_exported(archive: dict[str, str], tmp_path: Path) -> None:
    env = archive
    account = run(
        env, "accounts", "add", "--phone-number-id", "2025000", "--display-phone-number",
        "+15550100333", "--app-secret", "s", "--verify-token", "verify-me",
    )  # fmt: skip
    assert account.returncode == 0, account.stderr
    account_id = account.stdout.strip()
    record = ("consent", "record", account_id, "--phone", "+447700900123")
    record += ("--category", "marketing", "--action", "opt_in", "--method", "web_form")
    recorded = run(env, *record, "--evidence", "ticked the box", "--occurred-at",
                   "2026-11-03T10:00:00+00:00")  # fmt: skip
    assert recorded.returncode == 0, recorded.stderr
    contact = recorded.stdout.split()[3]
    naive = run(env, *record, "--evidence", "again", "--occurred-at", "2026-11-03T10:00:00")
    assert naive.returncode == 1
    assert naive.stderr == "strongroom: occurred_at has no time zone\n"

    listed = run(env, "consent", "list", contact).stdout.splitlines()
    assert len(listed) == 1
    assert "marketing" in listed[0]
    assert "by web form" in listed[0]
    assert "ticked the box" not in listed[0]  # the evidence only in the export
    out = tmp_path / "consent.json"
    exported = run(env, "consent", "export", contact, "--output", str(out))
    assert exported.returncode == 0, exported.stderr
    data = json.loads(out.read_text())
    assert data["contact_id"] == contact
    assert [e["evidence"] for e in data["entries"]] == ["ticked the box"]
