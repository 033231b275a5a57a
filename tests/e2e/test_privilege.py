"""Stepping up in privilege, over real HTTP: a sensitive grant waits for a second
person, each sign-in step issues a new session id, wrong TOTP codes lock the user
out, and a named proxy's X-Forwarded-For is the client's address.

The server here trusts loopback as its proxy (``STRONGROOM_TRUSTED_PROXIES``), so
each test's clients come "through" it from addresses of their own, each with its
own sign-in rate limit. ``test_login_limits`` shows the default, which believes no
forwarded header.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pyotp
import pytest

from api.http.auth import SESSION_COOKIE
from archiver.identity.services import MAX_FAILED_LOGINS
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


def _next_code(totp: pyotp.TOTP) -> str:
    """A code that is valid now (one step of drift is allowed) and not used yet."""
    return totp.at(time.time() + totp.interval)


def _wrong(totp: pyotp.TOTP) -> str:
    valid = {totp.at(time.time() + s) for s in (-30, 0, 30, 60)}
    return next(code for code in ("000000", "111111", "222222") if code not in valid)


def _records(server: Server) -> str:
    return f"/api/v1/accounts/{server.account_id}/records"


def _with_cookie(server: Server, cookie: str) -> dict[str, Any]:
    return {"headers": {"Cookie": f"{SESSION_COOKIE}={cookie}"}}


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


def test_each_step_up_issues_a_new_session_id(server: Server, client: Client) -> None:
    server.create_user("e2e-stepper", "supervisor")
    browser = client("198.51.100.2")
    totp = _enrol(browser, "e2e-stepper")
    before = browser.cookies[SESSION_COOKIE]
    assert browser.get(_records(server)).status_code == 200

    # The password step replaces the session it came with...
    assert _password_step(browser, "e2e-stepper").headers["location"] == "/login/mfa"
    half = browser.cookies[SESSION_COOKIE]
    assert half != before
    assert server.client.get(_records(server), **_with_cookie(server, before)).status_code == 401
    # ...and the second factor replaces the half-signed-in one.
    page = browser.get("/login/mfa")
    done = browser.post(
        "/login/mfa", data={"code": _next_code(totp), "csrf_token": _form_token(page.text)}
    )
    assert done.headers.get("location") == "/", done.text
    after = browser.cookies[SESSION_COOKIE]
    assert after not in (before, half)
    assert browser.get(_records(server)).status_code == 200
    stale = client("198.51.100.2", Cookie=f"{SESSION_COOKIE}={half}")
    assert stale.get("/login/mfa").headers["location"] == "/login"
    assert stale.get(_records(server)).status_code == 401


def test_a_sign_in_without_second_factor_also_renews_the_session(
    server: Server, client: Client
) -> None:
    server.create_user("e2e-plain", "regulator")
    browser = client("198.51.100.3")
    assert _password_step(browser, "e2e-plain").headers["location"] == "/login/mfa"
    half = browser.cookies[SESSION_COOKIE]
    assert browser.get("/login/mfa").headers["location"] == "/"
    assert browser.cookies[SESSION_COOKIE] != half
    assert browser.get("/").status_code == 200
    stale = client("198.51.100.3", Cookie=f"{SESSION_COOKIE}={half}")
    assert stale.get("/login/mfa").headers["location"] == "/login"


def test_wrong_codes_lock_the_user_out_and_end_the_half_signed_in_sessions(
    server: Server, client: Client
) -> None:
    server.create_user("e2e-guessed", "supervisor")
    enrolled = client("198.51.100.4")
    totp = _enrol(enrolled, "e2e-guessed")
    guesser, bystander = client("198.51.100.5"), client("198.51.100.6")
    forms = []
    for each in (guesser, bystander):
        assert _password_step(each, "e2e-guessed").headers["location"] == "/login/mfa"
        forms.append(_form_token(each.get("/login/mfa").text))

    wrong = _wrong(totp)
    answers = [
        guesser.post("/login/mfa", data={"code": wrong, "csrf_token": forms[0]})
        for _ in range(MAX_FAILED_LOGINS)
    ]
    assert [a.status_code for a in answers] == [401] * (MAX_FAILED_LOGINS - 1) + [429]
    assert "Too many failed attempts" in answers[-1].text
    # Every half-signed-in session has ended: the right code signs none of them in.
    assert guesser.get("/login/mfa").headers["location"] == "/login"
    right = bystander.post("/login/mfa", data={"code": _next_code(totp), "csrf_token": forms[1]})
    assert right.headers.get("location") == "/login"
    assert bystander.get(_records(server)).status_code == 401
    # Nor does the password open a new one until the lockout ends.
    locked = _password_step(client("198.51.100.7"), "e2e-guessed")
    assert locked.status_code == 429
    assert "Too many failed attempts" in locked.text
    # A session that was signed in before goes on.
    assert enrolled.get(_records(server)).status_code == 200


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
