"""Authentication, the default-deny guard and HTTP hardening.

Every route declares what it needs with ``opt={"permission": …}``: a
:class:`~archiver.identity.services.Permission`, or ``PUBLIC``. The app-wide guard
refuses a route that declares nothing, so a new route cannot be open by
accident (and the authorization-matrix test fails for it).

Requests authenticate with ``Authorization: Bearer sr_…`` (an API token) or the
console's session cookie. Cookie-authenticated requests that change state must
carry the session's CSRF token, as the ``X-CSRF-Token`` header or the
``csrf_token`` form field. (Litestar's CSRF middleware checks every unsafe
request however it authenticated, which would refuse API-token clients; a
token bound to the session is checked exactly where a cookie authenticates.)
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.bootstrap import Services
from archiver.identity.services import IdentityError, Permission, Principal

PUBLIC = "public"
# Any signed-in principal, whatever its roles (its own tokens, its own session).
AUTHENTICATED = "authenticated"
SESSION_COOKIE = "strongroom_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def permission_of(handler: BaseRouteHandler) -> str | None:
    """What a route handler declared it needs (``None``: nothing, which is refused)."""
    value = handler.opt.get("permission")
    return str(value) if value is not None else None


def needs(permission: Permission | str) -> dict[str, Any]:
    """The ``opt`` a route handler passes to declare its permission."""
    return {"permission": str(permission)}


class AuthMiddleware:
    """Resolves the request's principal into ``scope["user"]`` (``None`` when anonymous)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            services: Services = scope["litestar_app"].state.services
            scope["user"], scope["auth"] = await self._resolve(services, scope)
        await self.app(scope, receive, send)

    async def _resolve(self, services: Services, scope: Scope) -> tuple[Principal | None, Any]:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        authorization = headers.get("authorization", "")
        cookie = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
        if not authorization and cookie is None:
            return None, None  # anonymous (webhooks, health): no database round trip
        if authorization.lower().startswith("bearer "):
            try:
                return await services.identity.authenticate_token(authorization[7:]), None
            except IdentityError:
                return None, "invalid-token"
        if cookie is None:
            return None, None
        found = await services.identity.resolve_session(cookie)
        if found is None:
            return None, None
        row, principal = found
        return principal, row


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


async def authorize(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The app-wide guard: declared permission, authenticated principal, CSRF."""
    permission = permission_of(handler)
    if permission is None:
        raise PermissionDeniedException("this route declares no permission")
    if permission == PUBLIC:
        return
    principal: Principal | None = connection.scope.get("user")
    if principal is None:
        raise NotAuthorizedException("sign in or present a valid API token")
    if permission != AUTHENTICATED and not principal.allows(Permission(permission)):
        raise PermissionDeniedException(f"this needs {permission}")
    if principal.via == "session" and connection.scope.get("method") not in SAFE_METHODS:
        await check_csrf(connection)


async def check_csrf(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Refuse a state-changing cookie request without the session's CSRF token."""
    row = connection.scope.get("auth")
    expected = getattr(row, "csrf_token", None)
    given = connection.headers.get(CSRF_HEADER)
    if given is None and "form" in connection.headers.get("content-type", ""):
        form = await connection.form()  # type: ignore[attr-defined]  # requests have form()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not expected or not given or not hmac.compare_digest(given, expected):
        raise PermissionDeniedException("missing or wrong CSRF token")


# Pages and API answers are never cached, framed or sniffed; scripts and styles
# come only from this origin (the console vendors htmx, so no CDN is needed).
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; "
        b"media-src 'self' blob:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
        b"form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    (b"cache-control", b"no-store"),
]
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class SecurityHeadersMiddleware:
    """Adds the hardening headers to every response (HSTS when served over https)."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers = _SECURITY_HEADERS + ([_HSTS] if hsts else [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)
