"""The authorization matrix, generated from the application's own route table:
every route by every role (and anonymous) against the permission matrix.

A route added without a declared permission fails ``test_every_route_declares_
a_permission``; one whose guard disagrees with ``ROLE_PERMISSIONS`` fails the matrix.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar.routes import ASGIRoute, HTTPRoute

from api.app import create_app
from api.bootstrap import open_services
from api.http.auth import AUTHENTICATED, PUBLIC, SESSION_COOKIE, permission_of
from api.settings import load_settings
from archiver.identity.services import ROLE_PERMISSIONS, Permission, Role
from tests.e2e.server import PASSWORD, SEED, Server
from tests.e2e.test_auth import _password_step

ANONYMOUS = "anonymous"
PRINCIPALS = [ANONYMOUS, *(role.value for role in Role)]


def _routes() -> list[tuple[str, str, str | None]]:
    """(method, path template, declared permission) for every route handler."""
    app = create_app(load_settings({"STRONGROOM_DATA_DIR": "/nonexistent"}))
    found = []
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                for method in sorted(handler.http_methods - {"HEAD", "OPTIONS"}):
                    found.append((method, route.path, permission_of(handler)))
        elif isinstance(route, ASGIRoute):  # raw ASGI: its methods are declared in opt
            handler = route.route_handler
            assert "methods" in handler.opt, f"{route.path} declares no methods"
            for method in handler.opt["methods"]:
                found.append((method, route.path, permission_of(handler)))
    return sorted(set(found))


ROUTES = _routes()


def _concrete(template: str) -> str:
    path = re.sub(r"\{[^}:]+:int\}", "1", template)
    path = re.sub(r"\{[^}:]+:path\}", "console.css", path)
    return re.sub(r"\{[^}:]+(:[a-z]+)?\}", "x", path)


def test_every_route_declares_a_permission() -> None:
    assert len(ROUTES) > 20  # the table really was read
    undeclared = [(method, path) for method, path, permission in ROUTES if permission is None]
    assert undeclared == []
    known = {PUBLIC, AUTHENTICATED, *(p.value for p in Permission)}
    assert {permission for _, _, permission in ROUTES} <= known


def test_permissions_that_guard_changes_are_sensitive() -> None:
    """A route that changes state needs a sensitive permission (TOTP and a second
    person's approval for whoever is granted it): a permission added later for a
    new such route must be declared sensitive, or this fails."""
    changing = {
        Permission(permission)
        for method, _, permission in ROUTES
        if method not in ("GET", "HEAD") and permission not in (PUBLIC, AUTHENTICATED, None)
    }
    assert changing
    assert [p.value for p in changing if not p.sensitive] == []


@pytest.fixture(scope="module")
def tokens(server: Server) -> dict[str, dict[str, str]]:
    """Credentials of a user holding each role on all accounts: an API token scoped to
    all of the role's permissions, so that only the role limits it; for a role with
    no permission (a token needs one), a console session."""

    async def make() -> dict[str, dict[str, str]]:
        services = await open_services(load_settings(server.env))
        made = {ANONYMOUS: {}}
        try:
            for role in Role:
                name = f"matrix-{role.value}"
                if ROLE_PERMISSIONS[role]:
                    secret = await server.seed(services, name, [(role, None)])
                    made[role.value] = {"Authorization": f"Bearer {secret}"}
                else:
                    await services.identity.add_user(SEED, name, PASSWORD)
                    await services.grants.grant_as_operator(SEED, name, role, None)
        finally:
            await services.close()
        return made

    made = asyncio.run(make())
    for role in Role:
        if role.value not in made:  # needs no second factor: the password signs it in
            with httpx.Client(base_url=server.url, timeout=10) as client:
                assert _password_step(client, f"matrix-{role.value}").status_code == 303
                assert client.get("/login/mfa").headers["location"] == "/"
                cookie = client.cookies[SESSION_COOKIE]
            made[role.value] = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    return made


def _guard_refused(response: httpx.Response) -> bool:
    """True when the app-wide guard (not the handler) refused the request."""
    if response.status_code not in (401, 403):
        return False
    try:
        error = response.json().get("error", "")
    except ValueError:
        return False
    return error == "sign in or present a valid API token" or error.startswith(
        ("this needs ", "this route declares no permission")
    )


def _expected_allowed(principal: str, permission: str | None) -> bool:
    if permission == PUBLIC:
        return True
    if principal == ANONYMOUS or permission is None:
        return False
    return (
        permission == AUTHENTICATED or Permission(permission) in ROLE_PERMISSIONS[Role(principal)]
    )


def _cases() -> Iterator[Any]:
    for method, path, permission in ROUTES:
        for principal in PRINCIPALS:
            yield pytest.param(
                method, path, permission, principal, id=f"{method} {path} as {principal}"
            )


@pytest.mark.parametrize(("method", "path", "permission", "principal"), list(_cases()))
def test_matrix(
    server: Server,
    tokens: dict[str, dict[str, str]],
    method: str,
    path: str,
    permission: str | None,
    principal: str,
) -> None:
    kwargs: dict[str, Any] = {"headers": tokens[principal]}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    response = server.client.request(method, _concrete(path), **kwargs)
    assert response.status_code < 500, response.text
    allowed = not _guard_refused(response)
    assert allowed == _expected_allowed(principal, permission), (
        response.status_code,
        response.text,
    )
    if not allowed:
        assert response.status_code == (401 if principal == ANONYMOUS else 403)
