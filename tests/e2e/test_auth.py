"""Console sign-in with TOTP, CSRF, lockout, tokens and hardening, over real HTTP."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from tests.e2e.server import PASSWORD, Authenticator, Server


def _form_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def _password_step(client: httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    page = client.get("/login")
    assert page.status_code == 200
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": _form_token(page.text)},
    )


# The authenticators of users enrolled by earlier tests, by (server url, username).
ENROLLED: dict[tuple[str, str], Authenticator] = {}


def _sign_in(client: httpx.Client, username: str) -> Authenticator:
    """Sign ``client`` in through the console, enrolling TOTP on first use."""
    authenticator = ENROLLED.get((str(client.base_url), username))
    response = _password_step(client, username)
    assert (response.status_code, response.headers["location"]) == (303, "/login/mfa")
    mfa = client.get("/login/mfa")
    if authenticator is None:
        found = re.search(r'id="totp-secret" class="secret">([A-Z2-7]+)<', mfa.text)
        assert found, mfa.text
        authenticator = Authenticator(found.group(1))
    code = authenticator.code()
    verified = client.post("/login/mfa", data={"code": code, "csrf_token": _form_token(mfa.text)})
    assert (verified.status_code, verified.headers.get("location")) == (303, "/"), verified.text
    ENROLLED[(str(client.base_url), username)] = authenticator
    return authenticator


def test_console_sign_in_enrols_totp_then_requires_it(
    server: Server, clients: Callable[..., httpx.Client]
) -> None:
    client = clients()
    authenticator = _sign_in(client, "e2e-officer")
    home = client.get("/")
    assert home.status_code == 200
    assert "e2e-officer" in home.text
    assert "compliance_officer" in home.text
    cookie = client.cookies.get("strongroom_session")
    assert cookie
    header = _password_step(clients(), "e2e-officer").headers.get_list("set-cookie")[0]
    assert "HttpOnly" in header
    assert "SameSite=Strict" in header.replace("samesite", "SameSite").replace("strict", "Strict")

    # The session reads the archive like a token would.
    records = client.get(f"/api/v1/accounts/{server.account_id}/records")
    assert records.status_code == 200

    # A second sign-in asks for a code, no longer for enrolment.
    second = clients()
    _password_step(second, "e2e-officer")
    page = second.get("/login/mfa")
    assert "totp-secret" not in page.text
    wrong = second.post("/login/mfa", data={"code": "000000", "csrf_token": _form_token(page.text)})
    assert wrong.status_code == 401
    # A code already used is refused, though it is still within its time step.
    replayed = second.post(
        "/login/mfa", data={"code": authenticator.used(), "csrf_token": _form_token(page.text)}
    )
    assert replayed.status_code == 401
    # Without the second factor the half-signed-in session may read nothing.
    assert second.get(f"/api/v1/accounts/{server.account_id}/records").status_code == 401

    # Signing out needs the CSRF token, and ends the session at once.
    assert client.post("/logout").status_code == 403
    out = client.post("/logout", data={"csrf_token": _form_token(client.get("/").text)})
    assert out.status_code == 303
    stale = clients(strongroom_session=cookie)
    assert stale.get(f"/api/v1/accounts/{server.account_id}/records").status_code == 401


def test_session_mints_tokens_and_revocation_is_immediate(
    server: Server, clients: Callable[..., httpx.Client]
) -> None:
    client = clients()
    _sign_in(client, "e2e-officer")
    csrf = _form_token(client.get("/").text)
    refused = client.post("/api/v1/tokens", json={"name": "ci", "scopes": ["archive.read"]})
    assert refused.status_code == 403  # no CSRF header
    headers = {"X-CSRF-Token": csrf}
    beyond = client.post(
        "/api/v1/tokens", json={"name": "x", "scopes": ["users.manage"]}, headers=headers
    )
    assert beyond.status_code == 403
    made = client.post(
        "/api/v1/tokens",
        json={"name": "ci", "scopes": ["archive.read"], "days": 1},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    secret = made.json()["token"]
    assert secret.startswith("sr_")
    bearer = {"Authorization": f"Bearer {secret}"}
    path = f"/api/v1/accounts/{server.account_id}/records"
    assert server.client.get(path, headers=bearer).status_code == 200
    # A token cannot mint another token.
    assert (
        server.client.post(
            "/api/v1/tokens", json={"name": "y", "scopes": ["archive.read"]}, headers=bearer
        ).status_code
        == 403
    )
    listed = client.get("/api/v1/tokens").json()
    assert all("token" not in t or t["token"] is None for t in listed)
    revoked = client.post(f"/api/v1/tokens/{made.json()['id']}/revoke", headers=headers)
    assert revoked.status_code == 200
    assert server.client.get(path, headers=bearer).status_code == 401


def test_security_headers_and_no_internals(server: Server) -> None:
    for path in ("/healthz", "/login", "/no/such/route", "/api/v1/accounts"):
        response = server.client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], path
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert "Traceback" not in response.text
    assert server.client.get("/no/such/route").status_code == 404
    for path in ("/debug", "/heapdump", "/actuator/heapdump", "/metrics", "/admin"):
        assert server.client.get(path).status_code == 404, path


def test_weak_passwords_are_refused_with_the_reason(server: Server) -> None:
    for username, password, reason in (
        (
            "weak-common",
            "password1234",
            "this password is too easy to guess: this is a very common",
        ),
        ("weak-spaces", " " * 16, "a password cannot be only whitespace"),
        ("weak-name", "i am weak-name, hello", "a password cannot contain the username"),
    ):
        response = server.client.post(
            "/api/v1/users", json={"username": username, "password": password}, headers=server.admin
        )
        assert response.status_code == 400, response.text
        assert reason in response.json()["error"]
    users = server.client.get("/api/v1/users", headers=server.admin).json()
    assert not [u for u in users if u["username"].startswith("weak-")]
