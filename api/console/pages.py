"""The web console's sign-in: password, then TOTP (mandatory for sensitive roles).

Server-rendered with Jinja2. The session cookie is HttpOnly, SameSite=Strict and
Secure when the public URL is https://; only its SHA-256 is stored, and each step of the
sign-in (password, then second factor) replaces it with a new one. Every form carries a
CSRF token: the sign-in form a double-submit cookie (there is no session yet),
every later form the session's own token.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie, UploadFile
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.params import FromPath
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_303_SEE_OTHER
from litestar.types import ExceptionHandlersMap

from api.http.archive import MAX_IMPORT_BYTES
from api.http.audit import actor_of
from api.http.auth import PUBLIC, SESSION_COOKIE, check_csrf, needs
from api.http.deps import (
    AccountsDep,
    ApprovalsDep,
    ArchiveSearchDep,
    AuditDep,
    GrantsDep,
    IdentityDep,
    ImporterDep,
    RecordsDep,
    SettingsDep,
)
from api.settings import Settings
from archiver.core.errors import (
    AccountNotFound,
    InvalidInput,
    RecordNotFound,
)
from archiver.identity.models import Grant, WebSession
from archiver.identity.services import (
    AccountLocked,
    IdentityConflict,
    IdentityError,
    NotPermitted,
    Permission,
    Principal,
    Role,
    UnknownUser,
)
from archiver.imports.chat_export import DATE_ORDERS, ChatExportError, DateOrder, ParseProblem
from archiver.imports.services import ImportResult
from archiver.media.safety import claimed_kind, delivery
from archiver.records.conversations import Message, Status, sender
from archiver.search.services import Filters, SearchError

LOGIN_CSRF_COOKIE = "strongroom_login_csrf"
Caller = Request[Principal | None, Any, Any]
Page = Request[Principal, Any, Any]
SEARCH_PAGE = 25
AUDIT_PAGE = 50
SOURCES = {
    "cloud_api": "Cloud API",
    "business_app": "Business App",
    "history_sync": "History",
    "chat_import": "Import",
    "outbox": "Outbox",
}
DIRECTIONS = ("inbound", "outbound", "none", "unknown")
DELIVERIES = ("sent", "delivered", "read", "failed")
OUTCOMES = ("ok", "allowed", "denied", "failed")


def _cookie(settings: Settings, name: str, value: str, *, max_age: int | None) -> Cookie:
    return Cookie(
        key=name,
        value=value,
        max_age=max_age,
        path="/",
        httponly=True,
        secure=settings.https,
        samesite="strict",
    )


def _see(path: str) -> Redirect:
    return Redirect(path, status_code=HTTP_303_SEE_OTHER)


# The main navigation: a link shows only to those who hold its permission.
NAV = [
    ("/search", "Search", Permission.ARCHIVE_READ),
    ("/import", "Import", Permission.ARCHIVE_IMPORT),
    ("/audit", "Audit log", Permission.AUDIT_READ),
    ("/admin/users", "Users", Permission.USERS_MANAGE),
    ("/compose", "Compose", Permission.OUTBOX_SEND),
    ("/outbox", "Sent", Permission.OUTBOX_SEND),
    ("/review", "Hold queue", Permission.OUTBOX_APPROVE),
    ("/consent", "Consent", Permission.CONSENT_READ),
    ("/templates", "Templates", Permission.TEMPLATES_READ),
]


def context(request: Request[Any, Any, Any], **extra: Any) -> dict[str, Any]:
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


def _login_form(settings: Settings, error: str | None = None, status: int = 200) -> Template:
    token = secrets.token_urlsafe(24)
    return Template(
        "login.html",
        context={"login_csrf": token, "error": error, "principal": None},
        cookies=[_cookie(settings, LOGIN_CSRF_COOKIE, token, max_age=3600)],
        status_code=status,
    )


@get("/login", opt={"permission": PUBLIC}, include_in_schema=False)
async def login_page(settings: SettingsDep) -> Template:
    """The sign-in form."""
    return _login_form(settings)


@post("/login", opt={"permission": PUBLIC}, include_in_schema=False)
async def login(request: Caller, identity: IdentityDep, settings: SettingsDep) -> Response[Any]:
    """Check the password (with back-off and lockout), then ask for the second factor."""
    form = await request.form()
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    given = form.get("csrf_token")
    if not expected or not isinstance(given, str) or not hmac.compare_digest(given, expected):
        return _login_form(settings, "Your sign-in form expired. Please try again.", 403)
    username, password = form.get("username"), form.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return _login_form(settings, "Enter your username and password.", 400)
    try:
        cookie = await identity.sign_in(
            actor_of(request), username, password, previous=request.cookies.get(SESSION_COOKIE)
        )
    except AccountLocked as exc:
        return _locked(settings, exc)
    except IdentityError:
        return _login_form(settings, "Invalid username or password.", 401)
    return _signed_in(settings, "/login/mfa", cookie)


def _signed_in(settings: Settings, path: str, cookie: str) -> Response[Any]:
    response = _see(path)
    response.cookies.append(_cookie(settings, SESSION_COOKIE, cookie, max_age=8 * 3600))
    return response


def _locked(settings: Settings, locked: AccountLocked) -> Template:
    message = f"Too many failed attempts. Try again after {locked.until:%H:%M} UTC."
    return _login_form(settings, message, 429)


@get("/login/mfa", opt={"permission": PUBLIC}, include_in_schema=False)
async def mfa_page(request: Caller, identity: IdentityDep, settings: SettingsDep) -> Response[Any]:
    """The second factor: enrolment on first use, then a code."""
    row = request.scope.get("auth")
    if not isinstance(row, WebSession):
        return _see("/login")
    if row.mfa_verified:
        return _see("/")
    try:
        step = await identity.second_factor(actor_of(request), row)
    except IdentityError:
        return _see("/login")  # ended meanwhile, or a role that needs TOTP arrived
    if isinstance(step, str):
        return _signed_in(settings, "/", step)
    return Template("mfa.html", context=context(request, enrolment=step, principal=None))


@post("/login/mfa", opt={"permission": PUBLIC}, include_in_schema=False)
async def mfa(request: Caller, identity: IdentityDep, settings: SettingsDep) -> Response[Any]:
    """Check the TOTP code and complete the sign-in."""
    row = request.scope.get("auth")
    if not isinstance(row, WebSession):
        return _see("/login")
    await check_csrf(request)
    code = (await request.form()).get("code")
    try:
        cookie = await identity.finish_sign_in(
            actor_of(request), row, code if isinstance(code, str) else ""
        )
    except AccountLocked as exc:
        page = _locked(settings, exc)
        # The half-signed-in session has ended; the browser forgets its cookie too.
        page.cookies.append(_cookie(settings, SESSION_COOKIE, "", max_age=0))
        return page
    except IdentityError:
        return Template(
            "mfa.html",
            context=context(
                request,
                enrolment=await identity.enrolment_of(row),
                principal=None,
                error="That code did not match.",
            ),
            status_code=401,
        )
    return _signed_in(settings, "/", cookie)


@post("/logout", opt={"permission": PUBLIC}, include_in_schema=False)
async def logout(request: Caller, identity: IdentityDep, settings: SettingsDep) -> Response[Any]:
    """End the session; its cookie stops working at once."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and isinstance(request.scope.get("auth"), WebSession):
        await check_csrf(request)
        await identity.sign_out(actor_of(request), cookie)
    response = _see("/login")
    response.cookies.append(_cookie(settings, SESSION_COOKIE, "", max_age=0))
    return response


@get("/", opt={"permission": PUBLIC}, include_in_schema=False)
async def home(request: Caller) -> Response[Any]:
    """The signed-in home page; anonymous visitors go to sign in."""
    principal = request.scope.get("user")
    if principal is None or principal.via != "session":
        return _see("/login")
    grants = sorted((role.value, account) for role, account in principal.grants)
    return Template("home.html", context=context(request, grants=grants))


# --- Console pages ---------------------------------------------------------------------


def _wants_html(request: Request[Any, Any, Any]) -> bool:
    return "text/html" in request.headers.get("accept", "")


_ERROR_TITLES = {
    400: "Please check your request",
    403: "You do not have access to this page",
    404: "Not found",
    409: "That could not be done",
}


def _page_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Browsers get an HTML page (anonymous ones: the sign-in form); API clients and
    scripts keep the API's JSON error, so the authorization matrix reads both alike."""
    if not _wants_html(request):
        body: dict[str, Any] = {"error": exc.detail}
        if isinstance(exc.extra, dict):
            body.update(exc.extra)
        return Response(body, status_code=exc.status_code, headers=exc.headers)
    if exc.status_code == 401:
        return _see("/login")
    title = _ERROR_TITLES.get(exc.status_code, "Something went wrong")
    return Template(
        "error.html",
        context=context(request, status=exc.status_code, title=title, detail=exc.detail),
        status_code=exc.status_code,
    )


def _not_found(request: Request[Any, Any, Any], exc: RecordNotFound) -> Response[Any]:
    """What a reading service could not find (or the caller may not see), as a page."""
    return _page_error(request, NotFoundException(str(exc)))


PAGE_ERRORS: ExceptionHandlersMap = {HTTPException: _page_error, RecordNotFound: _not_found}


def _page(permission: Permission) -> dict[str, Any]:
    return {
        "opt": needs(permission),
        "exception_handlers": PAGE_ERRORS,
        "include_in_schema": False,
    }


def _params(request: Request[Any, Any, Any], *names: str) -> dict[str, str]:
    return {name: request.query_params.get(name, "").strip() for name in names}


def _day(value: str, *, end: bool = False) -> datetime | None:
    """A form's YYYY-MM-DD as UTC midnight; ``end`` makes the day inclusive."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValidationException(f"{value!r} is not a date (YYYY-MM-DD)") from None
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start + timedelta(days=1) if end else start


def _choice(value: str, allowed: Any, name: str) -> str | None:
    if value and value not in allowed:
        raise ValidationException(f"unknown {name} {value!r}")
    return value or None


SEARCH_FILTERS = (
    *("contact", "direction", "source", "type"),
    *("since", "until", "has_media", "on_hold", "flagged", "delivery", "error_code"),
)


def _error_code(value: str) -> int | None:
    if not value:
        return None
    if not value.isdigit() or int(value) >= 2**31:
        raise ValidationException(f"{value!r} is not an error code (a number such as 131050)")
    return int(value)


# The same filters as POST /api/v1/search; its scope, contact and lexicon are the service's.
def _search_filters(form: dict[str, str]) -> Filters:
    media = _choice(form["has_media"], ("yes", "no"), "media filter")
    hold = _choice(form["on_hold"], ("yes", "no"), "hold filter")
    lexicon = _choice(form["flagged"], ("yes", "no"), "lexicon filter")
    flagged = None if lexicon is None else lexicon == "yes"
    return Filters(
        direction=_choice(form["direction"], DIRECTIONS, "direction"),
        source=_choice(form["source"], SOURCES, "source"),
        item_type=form["type"] or None,
        since=_day(form["since"]),
        until=_day(form["until"], end=True),
        has_media=None if media is None else media == "yes",
        on_hold=None if hold is None else hold == "yes",
        flagged=flagged,
        delivery=_choice(form["delivery"], DELIVERIES, "delivery state"),
        error_code=_error_code(form["error_code"]),
    )


@get("/search", **_page(Permission.ARCHIVE_READ))
async def search_page(request: Page, archive_search: ArchiveSearchDep) -> Template:
    """Search the archive: words, "phrases", OR, and filters; results in time order."""
    form = _params(request, "q", *SEARCH_FILTERS, "cursor")
    page = context(
        request,
        form=form,
        sources=SOURCES,
        directions=DIRECTIONS,
        deliveries=DELIVERIES,
        sender=sender,
        hits=None,
        more=None,
    )
    if not any(form[name] for name in ("q", *SEARCH_FILTERS)):
        return Template("search.html", context=page)
    try:
        found = await archive_search.search(
            actor_of(request, Permission.ARCHIVE_READ),
            request.user.accounts_for(Permission.ARCHIVE_READ),
            form["q"],
            _search_filters(form),
            contact=form["contact"] or None,
            cursor=form["cursor"] or None,
            limit=SEARCH_PAGE,
            asked={k: v for k, v in form.items() if v},
        )
    except ValidationException as exc:
        return Template("search.html", context=page | {"error": exc.detail}, status_code=400)
    except (SearchError, InvalidInput) as exc:
        return Template("search.html", context=page | {"error": str(exc)}, status_code=400)
    more = None
    if found.next_cursor is not None:
        more = "/search?" + urlencode(
            {k: v for k, v in form.items() if v} | {"cursor": found.next_cursor}
        )
    return Template("search.html", context=page | {"hits": found.hits, "more": more})


@get("/conversations/{contact_id:str}", **_page(Permission.ARCHIVE_READ))
async def conversation_page(
    request: Page, contact_id: FromPath[str], records: RecordsDep
) -> Template:
    """A contact's conversation, read like the chat it was; every version kept."""
    chat = await records.conversation(
        actor_of(request, Permission.ARCHIVE_READ),
        request.user.accounts_for(Permission.ARCHIVE_READ),
        contact_id,
    )
    reactions = {m.record.id: _current_reactions(m) for m in chat.messages}
    # Statuses for messages not in the archive are shown among the messages, at their time.
    timeline: list[Message | Status] = sorted(
        [*chat.messages, *chat.statuses], key=lambda e: (e.record.occurred_at, e.record.id)
    )
    return Template(
        "conversation.html",
        context=context(
            request,
            chat=chat,
            timeline=timeline,
            reactions=reactions,
            sources=SOURCES,
            claimed_kind=claimed_kind,
            can_compose=request.user.allows(Permission.OUTBOX_SEND),
            can_consent=request.user.allows(Permission.CONSENT_READ),
        ),
    )


def _current_reactions(message: Message) -> list[str]:
    """Each side's latest reaction; an empty emoji removed an earlier one."""
    latest = {r.direction: r.emoji for r in message.reactions}
    return [emoji for emoji in latest.values() if emoji]


@get("/media/{media_id:int}/view", **_page(Permission.ARCHIVE_READ))
async def media_page(request: Page, media_id: FromPath[int], records: RecordsDep) -> Template:
    """One media file: shown only when GET /api/v1/media/{id} would serve it inline,
    else a download link. Its bytes are opened here only to decide that; they are
    served, and audited, by that route."""
    found = await records.media_preview(
        request.user.accounts_for(Permission.ARCHIVE_READ), media_id
    )
    kind = delivery(found.data, found.item.mime_type).kind
    return Template(
        "media.html",
        context=context(
            request,
            item=found.item,
            record=found.record,
            kind=kind,
            failure=found.failure,
            sources=SOURCES,
        ),
    )


@get("/audit", **_page(Permission.AUDIT_READ))
async def audit_page(request: Page, audit: AuditDep) -> Template:
    """The audit trail, filtered, oldest first, paged by sequence number."""
    form = _params(request, "actor", "action", "outcome", "since", "until", "after")
    page = context(request, form=form, outcomes=OUTCOMES, events=[], more=None)
    try:
        since, until = _day(form["since"]), _day(form["until"], end=True)
        outcome = _choice(form["outcome"], OUTCOMES, "outcome")
        after = int(form["after"]) if form["after"] else None
    except ValidationException as exc:
        return Template("audit.html", context=page | {"error": exc.detail}, status_code=400)
    except ValueError:
        return Template("audit.html", context=page | {"error": "bad page"}, status_code=400)
    events = await audit.query(
        actor=form["actor"] or None,
        action=form["action"] or None,
        outcome=outcome,
        since=since,
        until=until,
        after_seq=after,
        limit=AUDIT_PAGE,
    )
    more = None
    if len(events) == AUDIT_PAGE:
        kept = {k: v for k, v in form.items() if v and k != "after"}
        more = "/audit?" + urlencode(kept | {"after": str(events[-1].seq)})
    return Template("audit.html", context=page | {"events": events, "more": more})


_NOTICES = {
    "created": "User created. Grant them a role next.",
    "granted": "Role granted.",
    "requested": "This role carries a sensitive permission: an approval was opened for a "
    "second administrator.",
    "approved": "Request approved and applied.",
    "rejected": "Request rejected.",
}


async def _users_page(
    request: Page,
    identity: IdentityDep,
    grants: GrantsDep,
    approvals: ApprovalsDep,
    *,
    error: str | None = None,
    status: int = 200,
) -> Template:
    listed = await identity.user_list()
    names = {one.user.id: one.user.username for one in listed}
    pending = [
        {
            "approval": a,
            "request": approvals.payload(a),
            "maker": names.get(a.requested_by, a.requested_by),
            "mine": a.requested_by == request.user.user_id,
        }
        for a in await approvals.pending_list()
    ]
    return Template(
        "users.html",
        context=context(
            request,
            users=[one.user for one in listed],
            grants={one.user.id: one.grants for one in listed},
            locked={one.user.id for one in listed if one.locked},
            names=names,
            accounts=await grants.account_scopes(),
            roles=[r.value for r in Role],
            approvals=pending,
            can_decide=request.user.allows(Permission.GRANTS_APPROVE),
            notice=_NOTICES.get(request.query_params.get("done", "")),
            error=error,
        ),
        status_code=status,
    )


async def _form(request: Page, *names: str) -> dict[str, str]:
    form = await request.form()
    values = {name: form.get(name) for name in names}
    return {k: v.strip() if isinstance(v, str) else "" for k, v in values.items()}


@get("/admin/users", **_page(Permission.USERS_MANAGE))
async def users_page(
    request: Page, identity: IdentityDep, grants: GrantsDep, approvals: ApprovalsDep
) -> Template:
    """Users, their roles, MFA and lock state; create, grant, and decide approvals."""
    return await _users_page(request, identity, grants, approvals)


@post("/admin/users", **_page(Permission.USERS_MANAGE))
async def create_user(
    request: Page, identity: IdentityDep, grants: GrantsDep, approvals: ApprovalsDep
) -> Response[Any]:
    """Create a user with no roles."""
    form = await _form(request, "username", "password")
    actor = actor_of(request, Permission.USERS_MANAGE)
    try:
        await identity.add_user(actor, form["username"], form["password"])
    except ValueError as exc:
        return await _users_page(request, identity, grants, approvals, error=str(exc), status=400)
    except IdentityConflict as exc:
        return await _users_page(request, identity, grants, approvals, error=str(exc), status=409)
    return _see("/admin/users?done=created")


@post("/admin/users/{user_id:str}/grants", **_page(Permission.USERS_MANAGE))
async def grant_role(
    request: Page,
    user_id: FromPath[str],
    identity: IdentityDep,
    grants: GrantsDep,
    approvals: ApprovalsDep,
) -> Response[Any]:
    """Grant a role at once, or open an approval when it carries a sensitive permission."""
    form = await _form(request, "role", "account_id")
    try:
        role = Role(form["role"])
    except ValueError:
        return await _users_page(
            request, identity, grants, approvals, error="Choose a role.", status=400
        )
    account_id = form["account_id"] or None
    actor = actor_of(request, Permission.USERS_MANAGE)
    try:
        result = await grants.request(actor, request.user, user_id, role, account_id)
    except UnknownUser:
        raise NotFoundException("no such user") from None
    except AccountNotFound:
        return await _users_page(
            request, identity, grants, approvals, error="No such account.", status=400
        )
    except (IdentityConflict, NotPermitted) as exc:
        return await _users_page(request, identity, grants, approvals, error=str(exc), status=409)
    applied = isinstance(result, Grant)
    return _see("/admin/users?done=" + ("granted" if applied else "requested"))


@post("/admin/approvals/{approval_id:int}/decision", **_page(Permission.GRANTS_APPROVE))
async def decide_approval(
    request: Page,
    approval_id: FromPath[int],
    identity: IdentityDep,
    grants: GrantsDep,
    approvals: ApprovalsDep,
) -> Response[Any]:
    """Approve or reject a request; its maker cannot decide it."""
    form = await _form(request, "decision")
    if form["decision"] not in ("approve", "reject"):
        return await _users_page(
            request, identity, grants, approvals, error="Choose approve or reject.", status=400
        )
    approve = form["decision"] == "approve"
    actor = actor_of(request, Permission.GRANTS_APPROVE)
    try:
        await grants.decide(actor, request.user, approval_id, approve=approve)
    except NotPermitted as exc:
        return await _users_page(request, identity, grants, approvals, error=str(exc), status=403)
    except IdentityConflict as exc:
        return await _users_page(request, identity, grants, approvals, error=str(exc), status=409)
    return _see("/admin/users?done=" + ("approved" if approve else "rejected"))


async def _import_page(
    request: Page,
    accounts: AccountsDep,
    *,
    values: dict[str, str] | None = None,
    result: ImportResult | None = None,
    error: str | None = None,
    problems: Sequence[ParseProblem] = (),
    status: int = 200,
) -> Template:
    listed = await accounts.listed(request.user.accounts_for(Permission.ARCHIVE_IMPORT))
    return Template(
        "import.html",
        context=context(
            request,
            accounts=listed,
            date_orders=DATE_ORDERS,
            values=values or {"timezone": "UTC"},
            result=result,
            error=error,
            problems=problems,
        ),
        status_code=status,
    )


@get("/import", **_page(Permission.ARCHIVE_IMPORT))
async def import_page(request: Page, accounts: AccountsDep) -> Template:
    """The form to import a WhatsApp "Export chat" file into a customer's conversation."""
    return await _import_page(request, accounts)


@post("/import", request_max_body_size=MAX_IMPORT_BYTES, **_page(Permission.ARCHIVE_IMPORT))
async def import_upload(request: Page, accounts: AccountsDep, importer: ImporterDep) -> Template:
    """Import the uploaded export; a refusal lists every problem and imports nothing."""
    form = await request.form()
    names = ("account_id", "contact", "timezone", "business_sender", "date_order", "partial")
    values = {n: v.strip() if isinstance(v := form.get(n), str) else "" for n in names}
    upload = form.get("file")

    async def refuse(
        error: str, status: int = 400, problems: Sequence[ParseProblem] = ()
    ) -> Template:
        return await _import_page(
            request, accounts, values=values, error=error, problems=problems, status=status
        )

    if not isinstance(upload, UploadFile) or not upload.filename:
        return await refuse("Choose the exported .txt or .zip file.")
    if values["date_order"] not in ("", *DATE_ORDERS):
        return await refuse("Choose how dates are read.")
    if not request.user.allows(Permission.ARCHIVE_IMPORT, values["account_id"]):
        return await refuse("Choose an account.")
    try:
        result = await importer.import_export(
            actor_of(request, Permission.ARCHIVE_IMPORT),
            account_id=values["account_id"],
            contact_phone=values["contact"],
            file=upload.file,
            filename=upload.filename,
            timezone=values["timezone"] or "UTC",
            business_sender=values["business_sender"] or None,
            partial=bool(values["partial"]),
            date_order=cast("DateOrder", values["date_order"]) if values["date_order"] else None,
        )
    except AccountNotFound:
        return await refuse("Choose an account.")
    except ChatExportError as exc:
        return await refuse(
            "Nothing was imported: the file cannot be read as it is.", 422, exc.problems
        )
    except ValueError as exc:
        return await refuse(str(exc))
    return await _import_page(request, accounts, values=values, result=result)


CONSOLE_ROUTES = [
    login_page,
    login,
    mfa_page,
    mfa,
    logout,
    home,
    search_page,
    conversation_page,
    media_page,
    audit_page,
    users_page,
    create_user,
    import_page,
    import_upload,
    grant_role,
    decide_approval,
]
