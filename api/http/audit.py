"""The audit trail over HTTP: every request recorded, and the auditor's API."""

from __future__ import annotations

import base64
import time
from datetime import datetime
from typing import Annotated, Any, cast

import msgspec
import structlog
from litestar import Controller, Request, Response, get
from litestar.datastructures import ResponseHeader
from litestar.enums import ScopeType
from litestar.params import FromQuery, QueryParameter
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from api.bootstrap import Services
from api.http.auth import needs
from api.http.deps import AuditDep
from archiver.audit.services import Actor, AuditEntry
from archiver.identity.services import Permission, Principal

log = structlog.get_logger("strongroom.audit")
SIGNATURE_HEADER = "x-strongroom-signature"


def _outcome(status: int) -> str:
    if status in (401, 403, 429):
        return "denied"
    return "allowed" if status < 400 else "failed"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class AuditTrailMiddleware:
    """Records one audit event for every HTTP request, refused and failed ones too.

    It wraps the whole application, so requests that match no route are
    recorded as well; their path is not (it is whatever the client sent).
    """

    def __init__(self, app: ASGIApp, services: Any) -> None:
        self.app = app
        self._services = services  # a callable returning the live Services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            await self._record(scope, status, time.perf_counter() - started)

    async def _record(self, scope: Scope, status: int, seconds: float) -> None:
        services: Services | None = self._services()
        if services is None:
            return  # not started yet (or already stopped): nothing to record into
        principal: Principal | None = scope.get("user")
        template = scope.get("path_template")
        route = template if isinstance(template, str) and template else "(no route)"
        params = scope.get("path_params") or {}
        handler = scope.get("route_handler")
        permission = handler.opt.get("permission") if handler is not None else None
        role = None
        if principal is not None and permission not in (None, "public", "authenticated"):
            role = principal.role_for(Permission(permission))
        client = scope.get("client")
        entry = AuditEntry(
            actor=principal.actor if principal is not None else "anonymous",
            actor_name=principal.username if principal is not None else None,
            role=role,
            action=f"http.{cast('HTTPScope', scope)['method']} {route}",
            target=",".join(f"{k}={v}" for k, v in sorted(params.items())) or None,
            outcome=_outcome(status),  # type: ignore[arg-type]  # one of the four literals
            reason=f"HTTP {status} in {seconds * 1000:.0f} ms",
            request_id=_request_id(scope),
            client_ip=client[0] if client else None,
            user_agent=_header(scope, b"user-agent"),
        )
        try:
            await services.audit.record(entry)
        except Exception as exc:  # the response is already sent; never fail it now
            log.error("audit record failed", error=type(exc).__name__)


def _request_id(scope: Scope) -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value else _header(scope, b"x-request-id")


def actor_of(request: Request[Any, Any, Any], permission: Permission | None = None) -> Actor:
    """Who makes a request's change, as the audit trail names them: the signed-in
    principal (under a role that grants ``permission``) or ``anonymous``."""
    principal: Principal | None = request.scope.get("user")
    role = None
    if principal is not None and permission is not None:
        role = principal.role_for(permission)
    return Actor(
        id=principal.actor if principal is not None else "anonymous",
        name=principal.username if principal is not None else None,
        role=role,
        request_id=_request_id(request.scope),
        client_ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


class AuditEventOut(msgspec.Struct):
    seq: int
    occurred_at: datetime
    actor: str
    actor_name: str | None
    role: str | None
    action: str
    target: str | None
    scope: str | None
    outcome: str
    reason: str | None
    request_id: str | None
    client_ip: str | None
    user_agent: str | None
    has_details: bool
    hash: str


class AuditPage(msgspec.Struct):
    events: list[AuditEventOut]
    next_after: int | None


class AuditController(Controller):
    """What auditors read: the trail, its export and the key that signs them."""

    path = "/api/v1/audit"
    tags = ["audit"]  # noqa: RUF012  (Litestar reads this class attribute)

    @get("/", opt=needs(Permission.AUDIT_READ))
    async def events(
        self,
        audit: AuditDep,
        actor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        outcome: FromQuery[str | None] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
        after: Annotated[int | None, QueryParameter(ge=0)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> AuditPage:
        """Audit events in order, filtered, with keyset pagination (``after`` = last seq)."""
        rows = await audit.query(
            actor=actor,
            action=action,
            outcome=outcome,
            since=since,
            until=until,
            after_seq=after,
            limit=limit,
        )
        events = [
            AuditEventOut(
                e.seq,
                e.occurred_at,
                e.actor,
                e.actor_name,
                e.role,
                e.action,
                e.target,
                e.scope,
                e.outcome,
                e.reason,
                e.request_id,
                e.client_ip,
                e.user_agent,
                e.details_sealed is not None,
                e.hash,
            )
            for e in rows
        ]
        return AuditPage(events, events[-1].seq if len(events) == limit else None)

    @get(
        "/export",
        opt=needs(Permission.AUDIT_EXPORT),
        media_type="application/x-ndjson",
        response_headers=[
            ResponseHeader(
                name=SIGNATURE_HEADER,
                description="The Ed25519 signature of the body, base64.",
                required=True,
                documentation_only=True,
            )
        ],
    )
    async def export(
        self,
        audit: AuditDep,
        actor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
    ) -> Response[bytes]:
        """JSONL of the trail; the Ed25519 signature of the exact bytes is in a header."""
        jsonl, signature = await audit.export(actor=actor, action=action, since=since, until=until)
        return Response(
            jsonl,
            media_type="application/x-ndjson",
            headers={
                SIGNATURE_HEADER: base64.b64encode(signature).decode(),
                "content-disposition": 'attachment; filename="strongroom-audit.jsonl"',
            },
        )

    @get("/public-key", opt=needs(Permission.AUDIT_READ), media_type="application/x-pem-file")
    async def public_key(self, audit: AuditDep) -> str:
        """The Ed25519 public key that signs checkpoints and exports."""
        return await audit.public_key_pem()
