"""Stepping up in privilege, over real HTTP: a sensitive grant waits for a second
person, who is neither its requester nor its grantee."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pyotp

from tests.e2e.server import Server
from tests.e2e.test_auth import _form_token, _password_step

Clients = Callable[..., httpx.Client]


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


def test_an_admin_cannot_give_themselves_archive_reading(server: Server, clients: Clients) -> None:
    admin = clients()
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
