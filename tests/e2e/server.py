"""A real ``strongroom serve`` process on loopback, for end-to-end tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pyotp

from api.bootstrap import Services, open_services
from api.sandbox.fake_graph import meta_wamid
from api.settings import load_settings
from archiver.audit.services import Actor
from archiver.identity.models import Approval
from archiver.identity.services import GLOBAL_PERMISSIONS, ROLE_PERMISSIONS, Permission, Role
from tests.conftest import PG_ADMIN_DSN

STRONGROOM = str(Path(sys.executable).with_name("strongroom"))
PASSWORD = "e2e-password-long-enough"
APP_SECRET = "e2e-app-secret-3f9a"
VERIFY_TOKEN = "e2e-verify-token"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"
_URLSAFE = str.maketrans("-_", "+/")
# Who seeds the tests' users, as the audit trail names them: the CLI's operator.
SEED = Actor(id="cli", name="test-seed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any STRONGROOM_ setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    return env | settings


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def fixture(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(fixture_bytes(name))
    return value


def fixed_wamid(customer: str, serial: int, *, outbound: bool = False) -> str:
    """A fixed wamid in Meta's layout, carrying ``customer``'s number as real ones do."""
    tail = hashlib.sha256(f"{customer}:{serial}:{outbound}".encode()).hexdigest()[:20]
    return meta_wamid(customer, outbound=outbound, tail=tail)


def wamid_number(wamid: str) -> str | None:
    """The customer number a wamid carries: the first run of digits in its decoded
    bytes (``None`` if it decodes to none)."""
    text = wamid.removeprefix("wamid.").rstrip("=").translate(_URLSAFE)
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    digits = re.search(rb"[0-9]{6,}", raw)
    return digits.group().decode("ascii") if digits else None


def on_account(payload: dict[str, Any], phone_number_id: str, display: str) -> dict[str, Any]:
    """``payload`` as another business number sends it: every change's metadata names it."""
    for entry in payload["entry"]:
        for change in entry["changes"]:
            change["value"]["metadata"] = {
                "display_phone_number": display,
                "phone_number_id": phone_number_id,
            }
    return payload


def customer_message(
    customer: str, wamid: str, timestamp: int, *, template: str = "message_text", **fields: Any
) -> dict[str, Any]:
    """A signed-webhook body with one message from ``customer``, built on a fixture;
    ``fields`` replace the message's own (a non-text ``type`` drops ``text``)."""
    payload = fixture(template)
    value = payload["entry"][0]["changes"][0]["value"]
    value["contacts"][0]["wa_id"] = customer
    message = value["messages"][0]
    message.update({"id": wamid, "from": customer, "timestamp": str(timestamp)})
    if fields.get("type", "text") != "text":
        del message["text"]
    message.update(fields)
    return payload


def business_echo(customer: str, wamid: str, timestamp: int, body: str) -> dict[str, Any]:
    """A coexistence echo: the business wrote ``body`` to ``customer`` from the app."""
    payload = fixture("smb_message_echo_text")
    echo = payload["entry"][0]["changes"][0]["value"]["message_echoes"][0]
    echo.update({"id": wamid, "to": customer, "timestamp": str(timestamp), "text": {"body": body}})
    return payload


def status_update(customer: str, wamid: str, timestamp: int, status: str) -> dict[str, Any]:
    """A delivery status of the business's message ``wamid`` to ``customer``."""
    payload = fixture("status_delivered")
    item = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
    item.update(
        {"id": wamid, "status": status, "timestamp": str(timestamp), "recipient_id": customer}
    )
    return payload


class Authenticator:
    """A user's authenticator app that never offers a time step twice.

    The server takes a code of the current step or of either neighbour, and never
    one of a step at or before the last one it took. Each code here is for the
    step after the last one used (the current step at first), so a test signs in
    again at once instead of waiting for the clock: twice in one 30-second step.
    """

    def __init__(self, secret: str) -> None:
        self.totp = pyotp.TOTP(secret)
        self.last_step: int | None = None

    def code(self) -> str:
        """A code the server accepts now: for a step it has not taken yet."""
        now = int(time.time()) // self.totp.interval
        step = now if self.last_step is None else max(self.last_step + 1, now)
        if step > now + 1:
            raise AssertionError(
                "a third sign-in of one user within 30 s: the server allows one step of "
                "drift and never a step twice; sign in as another user"
            )
        self.last_step = step
        return self.totp.at(step * self.totp.interval)

    def used(self) -> str:
        """The last code given, which the server must now refuse."""
        assert self.last_step is not None
        return self.totp.at(self.last_step * self.totp.interval)


class Server:
    """One server process; ``client`` talks to it over real HTTP."""

    def __init__(self, env: dict[str, str], data_dir: Path, log_path: Path) -> None:
        self.env = env
        self.data_dir = data_dir
        self.account_id = ""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=10)
        # Set by bootstrap_users(): an admin's and a compliance officer's tokens.
        self.admin: dict[str, str] = {}
        self.officer: dict[str, str] = {}

    def start(self, timeout: float = 20) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [STRONGROOM, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.stop()
        self.client.close()

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the CLI against this server's data."""
        return subprocess.run(
            [STRONGROOM, *args],
            env=self.env | env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    @property
    def on_sqlite(self) -> bool:
        return "STRONGROOM_DATABASE_URL" not in self.env

    def sql(self, *statements: str) -> list[tuple[object, ...]]:
        """Run ``statements`` as a database administrator; the last one's rows."""
        if self.on_sqlite:
            with sqlite3.connect(self.data_dir / "strongroom.db") as db:
                rows: list[tuple[object, ...]] = []
                for statement in statements:
                    rows = db.execute(statement).fetchall()
                return rows
        database = self.env["STRONGROOM_DATABASE_URL"].rsplit("/", 1)[1]

        async def run() -> list[tuple[object, ...]]:
            conn = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + database)
            try:
                result: list[tuple[object, ...]] = []
                for statement in statements:
                    result = [tuple(r) for r in await conn.fetch(statement)]
                return result
            finally:
                await conn.close()

        return asyncio.run(run())

    def token(self, username: str, *scopes: str) -> dict[str, str]:
        args = [arg for scope in scopes for arg in ("--scope", scope)]
        result = self.cli("tokens", "create", username, *args, "--days", "1")
        assert result.returncode == 0, result.stderr
        return {"Authorization": f"Bearer {result.stdout.strip()}"}

    def create_user(self, username: str, *roles: str, account: str | None = None) -> None:
        """A user with ``roles``; privileged grants are approved by the admin over HTTP."""
        made = self.cli(
            "users", "create", username, "--password-env", "E2E_PASSWORD", E2E_PASSWORD=PASSWORD
        )
        assert made.returncode == 0, made.stderr
        for role in roles:
            extra = ("--account", account) if account else ()
            granted = self.cli("users", "grant", username, role, *extra)
            assert granted.returncode == 0, granted.stderr
            if granted.stdout.startswith("approval "):
                approval = int(granted.stdout.split()[1])
                decided = self.client.post(
                    f"/api/v1/approvals/{approval}/decision",
                    json={"approve": True},
                    headers=self.admin,
                )
                assert decided.status_code == 200, decided.text

    def bootstrap_users(self) -> None:
        """An admin and a compliance officer (who can also import), with API tokens.

        Set up in-process through the services for speed; the CLI and approval
        path is what ``create_user`` exercises.
        """
        admin, officer = asyncio.run(self._bootstrap())
        self.admin = {"Authorization": f"Bearer {admin}"}
        self.officer = {"Authorization": f"Bearer {officer}"}

    async def _bootstrap(self) -> tuple[str, str]:
        services = await open_services(load_settings(self.env))
        try:
            # The admin's role comes last: until an admin exists the operator's
            # grants apply at once, the officer's sensitive ones included.
            await services.identity.add_user(SEED, "e2e-admin", PASSWORD)
            officer = await self.seed(
                services,
                "e2e-officer",
                [(Role.COMPLIANCE_OFFICER, None), (Role.RECORDS_MANAGER, None)],
                lifetime=timedelta(days=1),
            )
            admin = await self.seed(
                services, "e2e-admin", [(Role.ADMIN, None)], lifetime=timedelta(days=1), add=False
            )
            return admin, officer
        finally:
            await services.close()

    async def seed(
        self,
        services: Services,
        username: str,
        roles: list[tuple[Role, str | None]],
        *,
        scopes: frozenset[Permission] | None = None,
        lifetime: timedelta = timedelta(hours=1),
        add: bool = True,
    ) -> str:
        """Add ``username`` with ``roles`` as the operator would, through the audited use
        cases, and return an API token's secret (by default with all the roles'
        permissions). A grant that waits for approval is approved by the admin of
        ``bootstrap_users``."""
        if add:
            await services.identity.add_user(SEED, username, PASSWORD)
        for role, account in roles:
            result = await services.grants.grant_as_operator(SEED, username, role, account)
            if isinstance(result, Approval):
                admin = await services.identity.authenticate_token(
                    self.admin["Authorization"].removeprefix("Bearer ")
                )
                await services.grants.decide(
                    Actor(id=admin.user_id, name=admin.username), admin, result.id, approve=True
                )
        if scopes is None:
            scopes = frozenset(p for role, _ in roles for p in ROLE_PERMISSIONS[role])
        token = await services.identity.issue_token(
            SEED, username, name="e2e", scopes=scopes, lifetime=lifetime
        )
        return token.secret

    def officer_of(self, username: str, account_id: str) -> dict[str, str]:
        """A compliance officer of ``account_id`` alone, with an API token."""

        async def make() -> str:
            services = await open_services(load_settings(self.env))
            try:
                return await self.seed(
                    services,
                    username,
                    [(Role.COMPLIANCE_OFFICER, account_id)],
                    # What an officer of one account holds: not the permissions
                    # that count only on all accounts.
                    scopes=ROLE_PERMISSIONS[Role.COMPLIANCE_OFFICER] - GLOBAL_PERMISSIONS,
                )
            finally:
                await services.close()

        return {"Authorization": f"Bearer {asyncio.run(make())}"}

    def add_account(self, **extra: str) -> str:
        body = {
            "phone_number_id": PHONE_NUMBER_ID,
            "display_phone_number": DISPLAY_NUMBER,
            "app_secret": APP_SECRET,
            "verify_token": VERIFY_TOKEN,
        } | extra
        response = self.client.post("/api/v1/accounts", json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        account_id: str = response.json()["id"]
        return account_id

    def post_webhook(self, body: bytes, signature: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        headers["X-Hub-Signature-256"] = signature if signature is not None else sign(body)
        return self.client.post("/webhooks/whatsapp", content=body, headers=headers)

    def get(self, path: str, **params: Any) -> httpx.Response:
        """GET as the compliance officer."""
        return self.client.get(path, params=params, headers=self.officer)

    def wait_for(self, probe: Callable[[], Any], timeout: float = 15) -> Any:
        """Poll ``probe`` until it returns something truthy (projection is asynchronous)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = probe()
            if result:
                return result
            time.sleep(0.05)
        raise AssertionError("timed out waiting for projection")

    def records_of(self, wamid: str) -> list[dict[str, Any]]:
        """Records carrying ``wamid``, waiting until there is at least one."""

        def probe() -> list[dict[str, Any]] | None:
            response = self.get("/api/v1/messages", wamid=wamid)
            return response.json() if response.status_code == 200 else None

        records: list[dict[str, Any]] = self.wait_for(probe)
        return records

    def all_records(self, account_id: str, **filters: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = filters | ({"cursor": cursor} if cursor else {})
            page = self.get(f"/api/v1/accounts/{account_id}/records", **params).json()
            out += page["records"]
            cursor = page["next_cursor"]
            if not cursor:
                return out
