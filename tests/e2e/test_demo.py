"""``strongroom demo`` as a newcomer runs it: the real CLI beside a real server on the
embedded defaults. The archive it leaves is read back over HTTP as the demo's own
compliance officer; the shapes it sends and its one-line failures are checked too."""

from __future__ import annotations

import json
import re
import shlex
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from api.bootstrap import open_services
from api.sandbox.demo import (
    OLIVER,
    PEOPLE,
    PRIYA,
    YAMADA,
    DemoAccount,
    DemoData,
    build_demo,
    pdf,
    strongroom_command,
    voice_note,
)
from api.settings import load_settings
from archiver.records.models import MediaItem, Record
from archiver.vault.models import SealedObject
from tests.e2e.server import FIXTURES, SEED, Server, clean_env, fixture, fixture_bytes, free_port

JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
ENGLISH = re.compile(r"\b(the|you|your|my|we|is)\b", re.IGNORECASE)


def _expected() -> DemoData:
    """What any run sends: the script is fixed, only ids and secrets are fresh."""
    return build_demo(DemoAccount.generate(), datetime.now(UTC), "http://127.0.0.1:1")


@dataclass
class Run:
    """One ``strongroom demo`` run and what it printed."""

    stdout: str
    account_id: str
    phone_number_id: str
    display_phone_number: str
    username: str
    password: str
    headers: dict[str, str]  # a token of the demo's officer, made by the printed command

    def line(self, pattern: str) -> re.Match[str]:
        return _line(self.stdout, pattern)


def _line(text: str, pattern: str) -> re.Match[str]:
    """The line of ``text`` that matches ``pattern`` (anchored with ``^``/``$``)."""
    found = re.search(pattern, text, re.MULTILINE)
    assert found, (pattern, text)
    return found


def _run_demo(server: Server, *, approve: Callable[[str], None] | None = None) -> Run:
    """Run the CLI as a newcomer would, then create a token with the printed command
    (with ``approve``, after it has been given the run's output)."""
    result = server.cli("demo", "--url", server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    out = result.stdout
    registered = _line(
        out, r"^registered demo account (acc_\w+) \((.+), phone_number_id (\d+)\) with fresh"
    )
    username = _line(out, r"^  username  (demo-officer-[0-9a-f]{4})$")
    password = _line(out, r"^  password  (\S{12,})  \(shown only this once\)$")
    command = _line(out, r"^  (TOKEN=\$\((\S+ tokens create [^)]+)\))$")
    args = shlex.split(command[2])
    assert Path(args[0]).name == "strongroom"
    assert args[1:] == ["tokens", "create", username[1], "--scope", "archive.read"]
    if approve is not None:
        approve(out)
    # As printed, in a shell of the demo's directory with no virtual environment on PATH.
    token = subprocess.run(
        ["/bin/sh", "-c", f'{command[1]} && printf "%s" "$TOKEN"'],
        env=server.env | {"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert token.returncode == 0, token.stderr
    return Run(
        out,
        registered[1],
        registered[3],
        registered[2],
        username[1],
        password[1],
        {"Authorization": f"Bearer {token.stdout.strip()}"},
    )


def _records(server: Server, headers: dict[str, str], account_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 500} | ({"cursor": cursor} if cursor else {})
        response = server.client.get(
            f"/api/v1/accounts/{account_id}/records", params=params, headers=headers
        )
        assert response.status_code == 200, response.text
        out += response.json()["records"]
        cursor = response.json()["next_cursor"]
        if not cursor:
            return out


def _contacts(server: Server, headers: dict[str, str]) -> dict[str, str]:
    found = {}
    for person in PEOPLE:
        response = server.client.get(
            "/api/v1/contacts", params={"phone": person.e164}, headers=headers
        )
        assert response.status_code == 200, response.text
        found[person.e164] = response.json()["contact_id"]
    return found


def _fails(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed run printed (stdout stays empty)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    message: str = lines[0]
    assert message.startswith("strongroom: ")
    return message.removeprefix("strongroom: ")


async def _account_ids(server: Server) -> set[str]:
    services = await open_services(load_settings(server.env))
    try:
        async with services.sessions() as session:
            return {a.id for a in await services.accounts.all(session)}
    finally:
        await services.close()


@dataclass
class Approved:
    """A run once an admin exists, beside an account the demo has no part in."""

    server: Server
    run: Run
    refused_before: str  # the printed token command, run before the approval
    other_account: str
    other_wamid: str


def _run_with_an_admin(server: Server) -> Approved:
    """The demo after ``bootstrap_users``; the admin approves its officer over HTTP."""
    server.bootstrap_users()
    other = server.add_account()
    assert server.post_webhook(fixture_bytes("message_text")).status_code == 200
    wamid = fixture("message_text")["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    server.records_of(wamid)
    refusals = []

    def approve(out: str) -> None:
        username = _line(out, r"^  username  (demo-officer-[0-9a-f]{4})$")[1]
        refused = server.cli("tokens", "create", username, "--scope", "archive.read")
        assert refused.returncode == 1, refused.stdout
        refusals.append(refused.stderr.splitlines()[-1].removeprefix("strongroom: "))
        requested = _line(
            out,
            rf"^approval (\d+) requested: an admin must approve compliance_officer for {username}$",
        )
        decided = server.client.post(
            f"/api/v1/approvals/{requested[1]}/decision",
            json={"approve": True},
            headers=server.admin,
        )
        assert decided.status_code == 200, decided.text

    run = _run_demo(server, approve=approve)
    return Approved(server, run, refusals[0], other, wamid)


@contextmanager
def _server(root: Path, **settings: str) -> Iterator[Server]:
    """A fresh server on the embedded defaults (as ``make serve``, plus ``settings``),
    no user yet."""
    root.mkdir()
    env = clean_env(STRONGROOM_DATA_DIR=str(root / "data"), **settings)
    server = Server(env, root / "data", root / "log")
    try:
        server.start()
        yield server
    finally:
        server.close()


@dataclass
class Scene:
    """Every CLI run this module looks at, started side by side: a run mostly waits
    for the server's media job, so together they take about as long as the slowest."""

    root: Path
    server: Server
    first: Future[Run]
    second: Future[Run]
    approved: Future[Approved]
    sandbox: Server  # sends to the demo's fake Graph API
    outbound: Future[Run]
    unreachable_url: str
    failures: dict[str, Future[subprocess.CompletedProcess[str]]]

    def failure(self, case: str) -> str:
        return _fails(self.failures[case].result())


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("demo")
    unreachable = f"http://127.0.0.1:{free_port()}"
    production = {
        "STRONGROOM_MODE": "production",
        "STRONGROOM_DATABASE_URL": f"sqlite:///{root}/production/strongroom.db",
        "STRONGROOM_VAULT_URL": f"file://{root}/production/vault",
        "STRONGROOM_MASTER_KEY": "ab" * 32,
        "STRONGROOM_PUBLIC_URL": "https://archive.example.com",
    }
    with ExitStack() as stack:
        server = stack.enter_context(_server(root / "main"))
        with_admin = stack.enter_context(_server(root / "admin"))
        graph = f"http://127.0.0.1:{free_port()}"
        sandbox = stack.enter_context(_server(root / "sandbox", STRONGROOM_GRAPH_BASE_URL=graph))
        pool = stack.enter_context(ThreadPoolExecutor(8))  # shut down before the servers

        def fail(url: str, **env: str) -> Future[subprocess.CompletedProcess[str]]:
            return pool.submit(server.cli, "demo", "--url", url, **env)

        yield Scene(
            root=root,
            server=server,
            first=pool.submit(_run_demo, server),
            second=pool.submit(_run_demo, server),
            approved=pool.submit(_run_with_an_admin, with_admin),
            sandbox=sandbox,
            outbound=pool.submit(_run_demo, sandbox),
            unreachable_url=unreachable,
            failures={
                "unreachable": fail(unreachable),
                "elsewhere": fail(server.url, STRONGROOM_DATA_DIR=f"{root}/elsewhere"),
                "production": fail(server.url, **production),
                "no scheme": fail("127.0.0.1:8000"),
                "not strongroom": fail(server.url + "/api/v1"),
            },
        )


@dataclass
class Demo:
    server: Server
    run: Run
    records: list[dict[str, Any]]
    contacts: dict[str, str]


@pytest.fixture(scope="module")
def demo(scene: Scene) -> Demo:
    """The first run on a fresh server, read back by its officer over HTTP."""
    run = scene.first.result()
    records = _records(scene.server, run.headers, run.account_id)
    return Demo(scene.server, run, records, _contacts(scene.server, run.headers))


def _body(record: dict[str, Any]) -> str:
    """The text a record's item carries (text, caption or edited text)."""
    item = (record["content"] or {}).get("item") or {}
    kind = item.get("type")
    body = item.get(kind) if isinstance(kind, str) else None
    if not isinstance(body, dict):
        return ""
    if kind == "edit":
        body = body["message"]["text"]
    return str(body.get("body") or body.get("caption") or "")


def _by_wamid(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["wamid"]: r for r in records if r["wamid"] and r["kind"] != "status"}


# -- the populated archive, as the demo's officer sees it ---------------------------


def test_everything_arrives(demo: Demo) -> None:
    expected = _expected()
    kinds = Counter(r["kind"] for r in demo.records)
    assert len(expected.payloads) > 50
    assert 60 <= expected.expected_records <= 120
    assert len(demo.records) == expected.expected_records
    assert set(kinds) == {"message", "echo", "history", "status", "event"}
    assert {r["account_id"] for r in demo.records} == {demo.run.account_id}
    by_kind = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    demo.run.line(rf"^records   {len(demo.records)} of {len(demo.records)}: {by_kind}$")
    demo.run.line(r"^media     7 fetched \(of 7\)$")
    assert float(demo.run.line(r"^done in ([\d.]+) s$")[1]) < 45
    assert re.fullmatch(r"\d{15}", demo.run.phone_number_id)
    assert re.fullmatch(r"\+1 415 555 01\d\d", demo.run.display_phone_number)


def test_english_and_japanese_conversations(demo: Demo) -> None:
    bodies = [_body(r) for r in demo.records if r["kind"] in ("message", "echo", "history")]
    assert sum(bool(JAPANESE.search(b)) for b in bodies) >= 10
    assert sum(bool(ENGLISH.search(b)) for b in bodies) >= 10
    assert {r["contact_id"] for r in demo.records if r["contact_id"]} == set(demo.contacts.values())
    yamada = demo.contacts[YAMADA.e164]
    mine = [r for r in demo.records if r["contact_id"] == yamada and r["kind"] == "message"]
    assert {r["type"] for r in mine} >= {"text", "location", "image", "reaction"}
    assert all(JAPANESE.search(_body(r)) for r in mine if r["type"] == "text")


def test_every_media_item_is_fetched_with_its_size(demo: Demo) -> None:
    files = _expected().files
    media_records = [r for r in demo.records if r["media"]]
    assert len(media_records) == len(files) == 7
    kinds = set()
    sizes = []
    for record in media_records:
        item = record["content"]["item"]
        kinds.add((record["kind"], item["type"]))
        (media,) = record["media"]
        assert media["state"] == "fetched", media
        assert media["mime_type"] == item[item["type"]]["mime_type"]
        sizes.append((media["mime_type"], media["size"]))
    assert sorted(sizes) == sorted((f.mime_type, len(f.data)) for f in files)
    assert kinds >= {("message", "image"), ("message", "audio"), ("echo", "document")}


async def test_the_vault_holds_the_demo_bytes_and_secrets_stay_secret(demo: Demo) -> None:
    """The fetched bytes are the generated files, each matching the SHA-256 its webhook
    advertised; the account's secrets and the officer's password are as printed."""
    services = await open_services(load_settings(demo.server.env))
    try:
        async with services.sessions() as session, session.begin():
            rows = await session.execute(
                select(MediaItem.expected_sha256, SealedObject)
                .join(SealedObject, SealedObject.id == MediaItem.object_id)
                .join(Record, Record.id == MediaItem.record_id)
                .where(Record.account_id == demo.run.account_id)
            )
            stored = [(sha, await services.vault.open(session, obj)) for sha, obj in rows]
            account = await services.accounts.get(session, demo.run.account_id)
            number = await services.accounts.display_phone_number(session, account)
            (secrets,) = [
                s for s in await services.accounts.secrets(session) if s.account_id == account.id
            ]
        # The password printed signs the officer in (half-way: a code would follow).
        signed_in = await services.identity.resolve_session(
            await services.identity.sign_in(SEED, demo.run.username, demo.run.password)
        )
        assert signed_in is not None
        (officer,) = [
            u for u in await services.identity.user_list() if u.user.id == signed_in[0].user_id
        ]
        grants = officer.grants
    finally:
        await services.close()
    files = _expected().files
    assert sorted(data for _, data in stored) == sorted(f.data for f in files)
    by_bytes = {f.data: f.sha256 for f in files}
    assert all(sha == by_bytes[data] for sha, data in stored)
    assert account.phone_number_id == demo.run.phone_number_id
    assert number == demo.run.display_phone_number.replace(" ", "")
    assert [(g.role, g.account_id) for g in grants] == [("compliance_officer", account.id)]
    log = demo.server.log_path.read_text("utf-8")
    assert secrets.access_token
    for secret in (secrets.app_secret.decode(), secrets.access_token, demo.run.password):
        assert secret not in log
    assert secrets.app_secret.decode() not in demo.run.stdout
    assert secrets.access_token not in demo.run.stdout
    assert demo.run.stdout.count(demo.run.password) == 1


def test_echoes_with_an_edit_and_a_revoke(demo: Demo) -> None:
    echoes = [r for r in demo.records if r["kind"] == "echo"]
    assert all(r["source"] == "business_app" and r["direction"] == "outbound" for r in echoes)
    by_wamid = _by_wamid(demo.records)
    (edit,) = [r for r in echoes if r["type"] == "edit"]
    original = by_wamid[edit["related_wamid"]]
    assert "£25,000" in _body(original)
    assert "£250,000" in _body(edit)
    (revoke,) = [r for r in echoes if r["type"] == "revoke"]
    revoked = by_wamid[revoke["related_wamid"]]
    assert revoked["revoked"]
    assert JAPANESE.search(_body(revoked))
    assert [r["wamid"] for r in demo.records if r["revoked"]] == [revoked["wamid"]]
    (customer_edit,) = [r for r in demo.records if r["kind"] == "message" and r["type"] == "edit"]
    assert by_wamid[customer_edit["related_wamid"]]["type"] == "text"


def test_replies_and_reactions_point_at_earlier_messages(demo: Demo) -> None:
    by_wamid = _by_wamid(demo.records)
    reactions = [r for r in demo.records if r["type"] == "reaction"]
    assert len(reactions) >= 5
    assert all(by_wamid[r["related_wamid"]]["kind"] == "echo" for r in reactions)
    quoted = [r for r in demo.records if r["type"] == "text" and r["related_wamid"]]
    assert quoted
    assert all(r["related_wamid"] in by_wamid for r in quoted)
    (button,) = [r for r in demo.records if r["type"] == "interactive"]
    assert button["content"]["item"]["interactive"]["button_reply"]["title"] == "Reschedule"


def test_statuses_move_forward_and_one_fails(demo: Demo) -> None:
    statuses = [r for r in demo.records if r["kind"] == "status"]
    by_message: dict[str, list[str]] = {}
    for record in statuses:
        by_message.setdefault(record["wamid"], []).append(record["status"])
    assert ["sent", "delivered", "read"] in by_message.values()
    (failed,) = [r for r in statuses if r["status"] == "failed"]
    assert failed["content"]["item"]["errors"][0]["code"] == 131050
    assert failed["contact_id"] == demo.contacts[PRIYA.e164]


def test_history_sync_and_events(demo: Demo) -> None:
    history = [r for r in demo.records if r["kind"] == "history"]
    assert len(history) >= 10
    assert {r["source"] for r in history} == {"history_sync"}
    assert {r["direction"] for r in history} == {"inbound", "outbound"}
    assert any(JAPANESE.search(_body(r)) for r in history)
    assert any(_body(r).isascii() for r in history)
    oldest = min(datetime.fromisoformat(r["occurred_at"]) for r in demo.records)
    days = (datetime.now(UTC) - oldest).days
    assert 9 <= days <= 11
    events = {r["type"] for r in demo.records if r["kind"] == "event"}
    assert events == {"history_chunk", "preference_stop", "message_template_status_update"}


# -- the officer and what the demo prints -------------------------------------------


def test_without_an_admin_the_officer_is_granted_at_once(demo: Demo) -> None:
    run = demo.run
    run.line(rf"^granted compliance_officer on {run.account_id} to {run.username}$")
    run.line(rf"^sign in to the console at {re.escape(demo.server.url)}/login$")
    run.line(r"^  the first sign-in enrols an authenticator app \(TOTP\): have one at hand$")
    assert "approval" not in run.stdout


def test_printed_curl_commands_work(demo: Demo) -> None:
    commands = [line.strip() for line in demo.run.stdout.splitlines() if "curl " in line]
    assert len(commands) == 2
    pages = []
    for command in commands:
        args = shlex.split(command, comments=True)
        assert args[:4] == ["curl", "-s", "-H", "Authorization: Bearer $TOKEN"]
        response = httpx.get(args[-1], headers=demo.run.headers, timeout=10)
        assert response.status_code == 200, (command, response.text)
        pages.append(response.json()["records"])
    everything, conversation = pages
    assert [r["id"] for r in everything] == [r["id"] for r in demo.records]
    assert {r["contact_id"] for r in conversation} == {demo.contacts[YAMADA.e164]}
    assert {r["account_id"] for r in conversation} == {demo.run.account_id}
    assert "山田さん" in commands[1]


# -- once an admin exists -------------------------------------------------------------


def test_with_an_admin_the_grant_waits_for_approval(scene: Scene) -> None:
    approved = scene.approved.result()
    run = approved.run
    run.line(rf"^  until an admin approves it, {run.username} can sign in but reads nothing$")
    run.line(r"^  the first sign-in after the approval enrols an authenticator app \(TOTP\)")
    run.line(r"^or, once the grant is approved, read the archive over HTTP with an API token")
    run.line(rf"^  TOKEN=\$\(\S+ tokens create {run.username} --scope archive.read\)$")
    assert "granted" not in run.stdout
    assert approved.refused_before == (
        f"{run.username} lacks archive.read: a token cannot hold a permission its user lacks"
    )
    records = _records(approved.server, run.headers, run.account_id)
    assert len(records) == _expected().expected_records
    assert {r["account_id"] for r in records} == {run.account_id}


def test_the_approved_officer_reads_only_the_demo_account(scene: Scene) -> None:
    approved = scene.approved.result()
    server, headers = approved.server, approved.run.headers
    assert _records(server, headers, approved.other_account) == []
    found = server.client.get(
        "/api/v1/messages", params={"wamid": approved.other_wamid}, headers=headers
    )
    assert found.status_code == 404
    (other,) = server.records_of(approved.other_wamid)
    assert other["account_id"] == approved.other_account
    assert server.client.get(f"/api/v1/messages/{other['id']}", headers=headers).status_code == 404


def test_a_second_run_makes_a_second_account(scene: Scene, demo: Demo) -> None:
    """Fresh ids, secrets and officer each time; the contacts are the same people."""
    second = scene.second.result()
    assert second.account_id != demo.run.account_id
    assert second.phone_number_id != demo.run.phone_number_id
    assert second.username != demo.run.username
    assert second.password != demo.run.password
    assert len(_records(scene.server, second.headers, second.account_id)) == len(demo.records)
    assert _records(scene.server, second.headers, demo.run.account_id) == []
    assert _contacts(scene.server, second.headers) == demo.contacts


def test_the_printed_command_runs_this_installation_from_where_the_demo_runs(
    tmp_path: Path,
) -> None:
    script = tmp_path / "repo" / ".venv" / "bin" / "strongroom"
    script.parent.mkdir(parents=True)
    script.touch()
    python = str(script.with_name("python"))
    assert strongroom_command(python, str(tmp_path / "repo")) == ".venv/bin/strongroom"
    assert strongroom_command(python, str(script.parent)) == "./strongroom"
    assert strongroom_command(python, str(tmp_path / "elsewhere")) == str(script)
    missing = str(tmp_path / "no venv" / "python")
    assert strongroom_command(missing, str(tmp_path)) == f"'{missing}' -m api.cli.main"


# -- failures are one clear line --------------------------------------------------------


async def test_unreachable_server_registers_nothing(scene: Scene) -> None:
    message = scene.failure("unreachable")
    assert message.startswith(f"cannot reach Strongroom at {scene.unreachable_url}")
    runs = {scene.first.result().account_id, scene.second.result().account_id}
    for failure in scene.failures.values():
        failure.result()
    assert await _account_ids(scene.server) == runs


def test_another_directory_is_refused_before_anything_is_made(scene: Scene) -> None:
    elsewhere = scene.root / "elsewhere"
    message = scene.failure("elsewhere")
    assert message.startswith(f"no archive here: no root key at {elsewhere}/master.key")
    assert f"no database at {elsewhere}/strongroom.db" in message
    assert "directory where the server runs" in message
    assert f"STRONGROOM_DATA_DIR (now {elsewhere})" in message
    assert not elsewhere.exists()


def test_production_mode_is_refused(scene: Scene) -> None:
    assert "only in embedded mode" in scene.failure("production")
    assert not (scene.root / "production").exists()


def test_not_an_http_url(scene: Scene) -> None:
    assert "expected an http(s) URL" in scene.failure("no scheme")


def test_not_strongroom(scene: Scene) -> None:
    assert "does not look like Strongroom" in scene.failure("not strongroom")


# -- what the demo sends, without a server ----------------------------------------


def _paths(value: Any, path: str = "") -> Iterator[str]:
    """Every leaf of a JSON value as ``path:type``, message containers folded into MSG."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, f"{path}.{key}")
    elif isinstance(value, list):
        for child in value:
            yield from _paths(child, path + "[]")
    else:
        for container in (".history[].threads[].messages[]", ".message_echoes[]", ".messages[]"):
            path = path.replace(container, ".MSG")
        yield f"{path}:{type(value).__name__}"


def test_payloads_have_the_fixtures_shapes() -> None:
    documented = {p for f in FIXTURES.glob("*.json") for p in _paths(json.loads(f.read_bytes()))}
    data = build_demo(DemoAccount.generate(), datetime.now(UTC), "http://127.0.0.1:1")
    for body in data.payloads:
        payload = json.loads(body)
        undocumented = set(_paths(payload)) - documented
        assert not undocumented, (undocumented, payload)


def test_payloads_use_fresh_secrets_and_fictional_numbers() -> None:
    now = datetime.now(UTC)
    one, two = DemoAccount.generate(), DemoAccount.generate()
    assert one.app_secret != two.app_secret
    assert one.verify_token != two.verify_token
    assert one.access_token != two.access_token
    assert re.fullmatch(r"\+1 415 555 01\d\d", one.display_phone_number)
    data = build_demo(one, now, "http://127.0.0.1:1")
    text = b"\n".join(data.payloads).decode("utf-8")
    assert one.app_secret not in text
    assert one.access_token not in text
    numbers = set(re.findall(r'"(?:from|to|wa_id|recipient_id)":"(\d+)"', text))
    fictional = re.compile(r"447700900\d{3}|1\d{3}55501\d\d|8190\d{8}")
    assert numbers - {one.business_number} == {p.wa_id for p in PEOPLE}
    assert all(fictional.fullmatch(n) for n in numbers)
    stamps = [int(s) for s in re.findall(r'"timestamp":"?(\d+)', text)]
    assert all(now.timestamp() - 11 * 86400 < s <= now.timestamp() for s in stamps)
    assert OLIVER.wa_id in text
    assert len(set(re.findall(r'"id":"(wamid\.[^"]+)"', text))) > 50


def _png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    tags, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        tag, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(tag + body)
        if tag == b"IDAT":
            width, height = struct.unpack(">II", data[16:24])
            assert len(zlib.decompress(body)) == height * (1 + 3 * width)
        tags.append(tag)
        at += 12 + length
    return tags


def _ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, no reflection), bit by bit."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def _ogg_pages(data: bytes) -> list[bytes]:
    pages, at = [], 0
    while at < len(data):
        assert data[at : at + 4] == b"OggS"
        segments = data[at + 26]
        size = 27 + segments + sum(data[at + 27 : at + 27 + segments])
        page = bytearray(data[at : at + size])
        (crc,) = struct.unpack("<I", page[22:26])
        page[22:26] = b"\x00" * 4
        assert _ogg_crc(bytes(page)) == crc
        pages.append(bytes(page))
        at += size
    return pages


def test_generated_media_are_valid_files() -> None:
    data = build_demo(DemoAccount.generate(), datetime.now(UTC), "http://127.0.0.1:1")
    by_type = Counter(f.mime_type for f in data.files)
    assert by_type == {"image/png": 3, "application/pdf": 3, "audio/ogg; codecs=opus": 1}
    for file in data.files:
        if file.mime_type == "image/png":
            assert _png_chunks(file.data) == [b"IHDR", b"IDAT", b"IEND"]
    assert _ogg_crc(b"123456789") == 0x89A1897F
    pages = _ogg_pages(voice_note())
    assert pages[0][28:36] == b"OpusHead"
    assert len(pages) == 3
    document = pdf(["Hello (world)"])
    assert document.startswith(b"%PDF-1.4")
    assert document.endswith(b"%%EOF\n")
    start = int(re.findall(rb"startxref\n(\d+)", document)[0])
    assert document[start:].startswith(b"xref")
    offsets = [int(o) for o in re.findall(rb"(\d{10}) 00000 n ", document)]
    for number, offset in enumerate(offsets, start=1):
        assert document[offset:].startswith(b"%d 0 obj" % number)


# -- the outbox, sent through the sandbox's fake Graph API -----------------------------

OUTBOX_LINE = r"^outbox    ([0-9a-f]{32})  %s +to %s: %s$"


def _show(server: Server, item_id: str) -> str:
    shown = server.cli("outbox", "show", item_id)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_without_the_sandbox_the_outbox_is_skipped(demo: Demo) -> None:
    demo.run.line(r"^outbox    skipped: the server sends to https://graph\.facebook\.com; ")
    assert "outbox    " not in demo.run.stdout.replace("outbox    skipped", "")


def test_an_answer_is_sent_delivered_and_read_through_signed_webhooks(scene: Scene) -> None:
    run = scene.outbound.result()
    item = run.line(OUTBOX_LINE % ("answer", "Oliver Hughes", "read"))[1]
    shown = _show(scene.sandbox, item)
    for move in ("queued -> decided", "decided -> dispatching", "dispatching -> sent"):
        assert move in shown, shown
    # The fake's status webhooks, signed with the account's app secret, moved it on.
    assert "sent -> delivered" in shown, shown
    assert "delivered -> read" in shown, shown


def test_a_block_term_blocks_and_nothing_is_sent(scene: Scene) -> None:
    run = scene.outbound.result()
    item = run.line(OUTBOX_LINE % ("blocked", "Oliver Hughes", r"blocked \(lexicon\.block\)"))[1]
    shown = _show(scene.sandbox, item)
    assert "queued -> blocked" in shown, shown
    assert "dispatching" not in shown, shown


def test_a_held_reply_goes_out_once_a_supervisor_approves(scene: Scene) -> None:
    run = scene.outbound.result()
    supervisor = run.line(r"^  outbox held: approved by (demo-supervisor-[0-9a-f]{4})$")[1]
    run.line(r"^  outbox held: held$")
    item = run.line(OUTBOX_LINE % ("held", "Priya Shah", "read after approval"))[1]
    shown = _show(scene.sandbox, item)
    assert "queued -> held" in shown, shown
    assert "held -> approved" in shown, shown
    assert "approved -> dispatching" in shown, shown
    assert "delivered -> read" in shown, shown
    assert supervisor not in shown  # the audit names users by id, not by name


def test_a_failed_delivery_comes_back_as_failed(scene: Scene) -> None:
    run = scene.outbound.result()
    item = run.line(OUTBOX_LINE % ("failing", "山田 太郎", r"failed \(Graph error 131026\)"))[1]
    shown = _show(scene.sandbox, item)
    assert "dispatching -> sent" in shown, shown
    assert "sent -> failed" in shown, shown
    assert "error 131026" in shown, shown


def test_sent_items_are_archived_with_their_statuses(scene: Scene) -> None:
    run = scene.outbound.result()
    records = _records(scene.sandbox, run.headers, run.account_id)
    extra = len(records) - _expected().expected_records
    # Three replies left (one failed on delivery), each archived, with its statuses:
    # sent, delivered and read twice, failed once.
    assert extra == 3 + 3 + 3 + 1, Counter(r["kind"] for r in records)
    newest = sorted(records, key=lambda r: r["occurred_at"])[-extra:]  # after all the script
    statuses = Counter(r["type"] for r in newest if r["kind"] == "status")
    assert statuses == {"sent": 2, "delivered": 2, "read": 2, "failed": 1}, statuses
