"""The web console's sign-in: password, then TOTP (mandatory for privileged roles).

Server-rendered with Jinja2. The session cookie is HttpOnly, SameSite=Strict and
Secure outside embedded mode; only its SHA-256 is stored. Every form carries a
CSRF token: the sign-in form a double-submit cookie (there is no session yet),
every later form the session's own token.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_303_SEE_OTHER

from api.auth import PUBLIC, SESSION_COOKIE, check_csrf
from api.deps import ServicesDep
from archiver.identity import AccountLocked, IdentityError, Principal
from archiver.models import User, WebSession

LOGIN_CSRF_COOKIE = "strongroom_login_csrf"
Caller = Request[Principal | None, Any, Any]


def _cookie(services: ServicesDep, name: str, value: str, *, max_age: int | None) -> Cookie:
    return Cookie(
        key=name,
        value=value,
        max_age=max_age,
        path="/",
        httponly=True,
        secure=not services.settings.embedded,
        samesite="strict",
    )


def _see(path: str) -> Redirect:
    return Redirect(path, status_code=HTTP_303_SEE_OTHER)


# The main navigation: a link shows only to those who hold its permission.
NAV = [
    ("/search", "Search", Permission.ARCHIVE_READ),
    ("/audit", "Audit log", Permission.AUDIT_READ),
    ("/admin/users", "Users", Permission.USERS_MANAGE),
]


def context(request: Caller, **extra: Any) -> dict[str, Any]:
    """What every console page needs: the principal, the session's CSRF token, the nav."""
    row = request.scope.get("auth")
    csrf = row.csrf_token if isinstance(row, WebSession) else ""
    principal = request.scope.get("user")
    nav = [
        (href, label, request.url.path.startswith(href))
        for href, label, permission in NAV
        if principal is not None and principal.allows(permission)
    ]
    return {"principal": principal, "csrf_token": csrf, "nav": nav} | extra


def _login_form(services: ServicesDep, error: str | None = None, status: int = 200) -> Template:
    token = secrets.token_urlsafe(24)
    return Template(
        "login.html",
        context={"login_csrf": token, "error": error, "principal": None},
        cookies=[_cookie(services, LOGIN_CSRF_COOKIE, token, max_age=3600)],
        status_code=status,
    )


@get("/login", opt={"permission": PUBLIC}, include_in_schema=False)
async def login_page(services: ServicesDep) -> Template:
    """The sign-in form."""
    return _login_form(services)


@post("/login", opt={"permission": PUBLIC}, include_in_schema=False)
async def login(request: Caller, services: ServicesDep) -> Response[Any]:
    """Check the password (with back-off and lockout), then ask for the second factor."""
    form = await request.form()
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    given = form.get("csrf_token")
    if not expected or not isinstance(given, str) or not hmac.compare_digest(given, expected):
        return _login_form(services, "Your sign-in form expired. Please try again.", 403)
    username, password = form.get("username"), form.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return _login_form(services, "Enter your username and password.", 400)
    refusal: IdentityError | None = None
    async with services.sessions() as session, session.begin():
        try:
            user = await services.identity.check_password(session, username, password)
        except IdentityError as exc:
            refusal = exc  # caught inside the transaction, so the failure count commits
    if isinstance(refusal, AccountLocked):
        message = f"Too many failed attempts. Try again after {refusal.until:%H:%M} UTC."
        return _login_form(services, message, 429)
    if refusal is not None:
        return _login_form(services, "Invalid username or password.", 401)
    async with services.sessions() as session, session.begin():
        cookie, _ = await services.identity.start_session(session, user, mfa_verified=False)
    response = _see("/login/mfa")
    response.cookies.append(_cookie(services, SESSION_COOKIE, cookie, max_age=8 * 3600))
    return response


async def _pending(request: Caller, services: ServicesDep) -> tuple[WebSession, User] | None:
    row = request.scope.get("auth")
    if not isinstance(row, WebSession):
        return None
    async with services.sessions() as session:
        user = await session.get(User, row.user_id)
    return (row, user) if user is not None else None


@get("/login/mfa", opt={"permission": PUBLIC}, include_in_schema=False)
async def mfa_page(request: Caller, services: ServicesDep) -> Response[Any]:
    """The second factor: enrolment on first use, then a code."""
    pending = await _pending(request, services)
    if pending is None:
        return _see("/login")
    row, user = pending
    if row.mfa_verified:
        return _see("/")
    async with services.sessions() as session, session.begin():
        user = await session.merge(user)
        if not await services.identity.needs_mfa(session, user):
            await _verified(services, row)
            return _see("/")
        enrolment = None
        if user.mfa_enrolled_at is None:
            enrolment = await services.identity.totp_enrolment(session, user)
    return Template("mfa.html", context=context(request, enrolment=enrolment, principal=None))


@post("/login/mfa", opt={"permission": PUBLIC}, include_in_schema=False)
async def mfa(request: Caller, services: ServicesDep) -> Response[Any]:
    """Check the TOTP code and complete the sign-in."""
    pending = await _pending(request, services)
    if pending is None:
        return _see("/login")
    row, user = pending
    await check_csrf(request)
    code = (await request.form()).get("code")
    try:
        async with services.sessions() as session, session.begin():
            user = await session.merge(user)
            await services.identity.verify_totp(
                session, user, code if isinstance(code, str) else ""
            )
    except IdentityError:
        async with services.sessions() as session, session.begin():
            user = await session.merge(user)
            enrolment = None
            if user.mfa_enrolled_at is None:
                enrolment = await services.identity.totp_enrolment(session, user)
        page = Template(
            "mfa.html",
            context=context(
                request, enrolment=enrolment, principal=None, error="That code did not match."
            ),
            status_code=401,
        )
        return page
    await _verified(services, row)
    return _see("/")


async def _verified(services: ServicesDep, row: WebSession) -> None:
    async with services.sessions() as session, session.begin():
        live = await session.get(WebSession, row.id_sha256)
        if live is not None:
            live.mfa_verified = True


@post("/logout", opt={"permission": PUBLIC}, include_in_schema=False)
async def logout(request: Caller, services: ServicesDep) -> Response[Any]:
    """End the session; its cookie stops working at once."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and isinstance(request.scope.get("auth"), WebSession):
        await check_csrf(request)
        async with services.sessions() as session, session.begin():
            await services.identity.end_session(session, cookie)
    response = _see("/login")
    response.cookies.append(_cookie(services, SESSION_COOKIE, "", max_age=0))
    return response


@get("/", opt={"permission": PUBLIC}, include_in_schema=False)
async def home(request: Caller) -> Response[Any]:
    """The signed-in home page; anonymous visitors go to sign in."""
    principal = request.scope.get("user")
    if principal is None or principal.via != "session":
        return _see("/login")
    grants = sorted((role.value, account) for role, account in principal.grants)
    return Template("home.html", context=context(request, grants=grants))


CONSOLE_ROUTES = [login_page, login, mfa_page, mfa, logout, home]
