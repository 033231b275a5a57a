"""Sign-in limits, each module with its own server: per-user lockout, per-address rate."""

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
    client = clients()
    statuses = [
        client.post("/login", data={"username": "x", "password": "y"}).status_code
        for _ in range(12)
    ]
    assert 429 in statuses
