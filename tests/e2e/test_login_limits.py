"""Sign-in limits, each module with its own server: per-user lockout, per-address rate
(by the connection's address: the server here names no trusted proxy)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.e2e.server import Server
from tests.e2e.test_auth import _password_step


def test_failed_passwords_lock_the_account(
    server: Server, clients: Callable[..., httpx.Client]
) -> None:
    server.create_user("e2e-locked")
    client = clients()
    statuses = [
        _password_step(client, "e2e-locked", "not the password").status_code for _ in range(5)
    ]
    assert statuses == [401] * 5
    locked = _password_step(client, "e2e-locked")  # the right password, too late
    assert locked.status_code == 429
    assert "Too many failed attempts" in locked.text


def test_sign_in_is_rate_limited_per_address(
    server: Server, clients: Callable[..., httpx.Client]
) -> None:
    server.create_user("e2e-limits-auditor", "auditor")
    auditor = server.token("e2e-limits-auditor", "audit.read")
    client = clients()
    # With no proxy named in the settings, a forged address neither gives a fresh
    # allowance nor goes into the audit trail.
    statuses = [
        client.post(
            "/login",
            data={"username": "x", "password": "y"},
            headers={
                "X-Forwarded-For": f"203.0.113.{n}",
                "Forwarded": f"for=203.0.113.{n};proto=https",
                "X-Forwarded-Proto": "https",
            },
        ).status_code
        for n in range(12)
    ]
    assert 429 in statuses
    events = server.client.get(
        "/api/v1/audit", params={"action": "http.POST /login", "limit": 1000}, headers=auditor
    ).json()["events"]
    assert len(events) >= 12
    assert {e["client_ip"] for e in events} == {"127.0.0.1"}
