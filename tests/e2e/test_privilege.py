"""Stepping up in privilege, over real HTTP: a sensitive grant waits for a second
person, and a named proxy's X-Forwarded-For is the client's address.

The server here trusts loopback as its proxy (``STRONGROOM_TRUSTED_PROXIES``), so
each test's clients come "through" it from addresses of their own, each with its
own sign-in rate limit. ``test_login_limits`` shows the default, which believes no
forwarded header.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import pyotp
import pytest

from tests.e2e.conftest import running_server
from tests.e2e.server import Server
from tests.e2e.test_auth import _form_token, _password_step

Client = Callable[..., httpx.Client]


@pytest.fixture(scope="module")
def server(database_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {"STRONGROOM_TRUSTED_PROXIES": "127.0.0.1"}
    with running_server(tmp_path_factory.mktemp("privilege"), database_name, settings) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    """``client(address, **headers)``: a cookie-keeping client forwarded from ``address``."""
    made: list[httpx.Client] = []

    def new(address: str, **headers: str) -> httpx.Client:
        made.append(
            httpx.Client(
                base_url=server.url,
                timeout=10,
                headers={"X-Forwarded-For": address, **headers},
            )
        )
        return made[-1]

    yield new
    for each in made:
        each.close()


def _enrol(browser: httpx.Client, username: str) -> pyotp.TOTP:
    """Sign in for the first time: password, then TOTP enrolment with the current code."""
    assert _password_step(browser, username).headers["location"] == "/login/mfa"
    page = browser.get("/login/mfa")
    found = re.search(r'id="totp-secret" class="secret">([A-Z2-7]+)<', page.text)
    assert found, page.text
    totp = pyotp.TOTP(found.group(1))
    done = browser.post(
        "/login/mfa", data={"code": totp.now(), "csrf_token": _form_token(page.text)}
    )
    assert done.headers.get("location") == "/", done.text
    return totp


def _records(server: Server) -> str:
    return f"/api/v1/accounts/{server.account_id}/records"


def test_an_admin_cannot_give_themselves_archive_reading(server: Server, client: Client) -> None:
    admin = client("198.51.100.1")
    _enrol(admin, "e2e-admin")
    csrf = {"X-CSRF-Token": _form_token(admin.get("/").text)}
    me = next(u["id"] for u in admin.get("/api/v1/users").json() if u["username"] == "e2e-admin")

    asked = admin.post(f"/api/v1/users/{me}/grants", json={"role": "supervisor"}, headers=csrf)
    assert asked.status_code == 202, asked.text
    approval = asked.json()
    assert (approval["status"], approval["request"]["role"]) == ("pending", "supervisor")
    decision = f"/api/v1/approvals/{approval['id']}/decision"
    mine = admin.post(decision, json={"approve": True}, headers=csrf)
    assert mine.status_code == 403
    assert mine.json()["error"] == "a grant must be decided by someone other than its grantee"
    assert admin.get(_records(server)).status_code == 403

    # A second admin approves; only then does the first one read.
    server.create_user("e2e-admin-two", "admin")
    second = server.token("e2e-admin-two", "grants.approve")
    assert server.client.post(decision, json={"approve": True}, headers=second).status_code == 200
    assert admin.get(_records(server)).status_code == 200


def test_a_named_proxy_forwards_the_client_address(server: Server, client: Client) -> None:
    server.create_user("e2e-trail", "auditor")
    auditor = server.token("e2e-trail", "audit.read")
    # Each forwarded address has its own sign-in rate limit...
    spread = [
        client(f"203.0.113.{n}").post("/login", data={"username": "x", "password": "y"})
        for n in range(12)
    ]
    assert 429 not in [r.status_code for r in spread]
    one = client("203.0.113.200")
    same = [one.post("/login", data={"username": "x", "password": "y"}) for _ in range(12)]
    assert 429 in [r.status_code for r in same]
    # ...and the audit trail records it.
    events = server.client.get(
        "/api/v1/audit", params={"action": "http.POST /login", "limit": 1000}, headers=auditor
    ).json()["events"]
    addresses = {e["client_ip"] for e in events}
    assert {f"203.0.113.{n}" for n in range(12)} | {"203.0.113.200"} <= addresses
    assert "127.0.0.1" not in addresses
