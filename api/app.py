"""The Litestar application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import structlog
from litestar import Litestar, Request, Response, Router, get
from litestar.datastructures import State
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.openapi import ResponseSpec
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp
from sqlalchemy import text
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api.bootstrap import freeze_startup_heap, open_services
from api.console.outbox import OUTBOX_PAGES
from api.console.pages import CONSOLE_ROUTES
from api.errors import exception_handlers
from api.http.archive import ArchiveController
from api.http.audit import AuditController, AuditTrailMiddleware
from api.http.auth import PUBLIC, AuthMiddleware, SecurityHeadersMiddleware, authorize
from api.http.consent import ConsentController
from api.http.conversations import ConversationController
from api.http.deps import ServicesDep, providers
from api.http.lexicon import LexiconController
from api.http.openapi import TimeOfDaySchema, document_errors, openapi_config
from api.http.outbox import OutboxController
from api.http.policy import PolicyController
from api.http.search import search
from api.http.templates import TemplatesController
from api.http.transport import BodyDeadlineMiddleware
from api.http.users import TokensController, UsersController
from api.http.webhooks import whatsapp_webhook
from api.observability.logging import RequestIdMiddleware
from api.observability.metrics import metrics
from api.settings import Settings
from api.worker import worker_process
from archiver.core.clock import Clock
from archiver.core.errors import VaultError

log = structlog.get_logger("strongroom.api")
TEMPLATES = Path(__file__).with_name("console") / "templates"
STATIC = Path(__file__).with_name("console") / "static"


async def _is_sign_in(request: Request[Any, Any, State]) -> bool:
    # A coroutine: Litestar runs a plain function here in a worker thread, for
    # every request the middleware sees.
    return request.method == "POST" and request.scope["path"].startswith("/login")


# Sign-in attempts per client address; lockout per user is in IdentityService.
LOGIN_RATE_LIMIT = RateLimitConfig(
    rate_limit=("minute", 10),
    check_throttle_handler=_is_sign_in,
    # Every path but /login… bypasses the middleware, which otherwise builds a
    # Request for each request it sees: 5% of the server's CPU under webhook load.
    exclude=r"^/(?!login).",
)


@get("/healthz", sync_to_thread=False, tags=["health"], opt={"permission": PUBLIC})
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@get(
    "/readyz",
    tags=["health"],
    opt={"permission": PUBLIC},
    responses={
        HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(
            # No generated examples: they are random, and differ from app to app.
            dict[str, str],
            description="The database or the vault is unreachable.",
            generate_examples=False,
        )
    },
)
async def readyz(services: ServicesDep) -> Response[dict[str, str]]:
    """The database and the vault are reachable."""
    checks: dict[str, str] = {}
    try:
        async with services.sessions() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "not ready"; the detail is logged only
        log.warning("readiness: database unreachable", error=type(exc).__name__)
        checks["database"] = "unavailable"
    try:
        await asyncio.to_thread(services.vault.store.ping)
        checks["vault"] = "ok"
    except VaultError as exc:
        log.warning("readiness: vault unreachable", error=type(exc).__name__)
        checks["vault"] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    checks["status"] = "ok" if ready else "unavailable"
    return Response(checks, status_code=200 if ready else HTTP_503_SERVICE_UNAVAILABLE)


def create_app(settings: Settings, clock: Clock | None = None) -> Litestar:
    """Build the HTTP application; services open on start-up in the serving loop."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = await open_services(settings, clock)
        freeze_startup_heap()
        app.state.services = services
        try:
            if settings.embedded:
                # Embedded mode runs the worker beside the server, as a child process.
                async with worker_process():
                    yield
            else:
                yield
        finally:
            await services.close()

    static = create_static_files_router(
        path="/static", directories=[STATIC], opt={"permission": PUBLIC}, include_in_schema=False
    )
    app = Litestar(
        route_handlers=[
            healthz,
            readyz,
            whatsapp_webhook,
            ArchiveController,
            UsersController,
            TokensController,
            AuditController,
            ConversationController,
            LexiconController,
            OutboxController,
            PolicyController,
            TemplatesController,
            ConsentController,
            search,
            metrics,
            *CONSOLE_ROUTES,
            *OUTBOX_PAGES,
            static,
        ],
        dependencies=providers(),
        middleware=[AuthMiddleware, LOGIN_RATE_LIMIT.middleware],
        guards=[authorize],
        plugins=[TimeOfDaySchema()],
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
        lifespan=[lifespan],
        exception_handlers=exception_handlers(),
        openapi_config=openapi_config(
            path="/schema",
            # The API description is public; what it describes is not.
            openapi_router=Router(
                "/schema", route_handlers=[], opt={"permission": PUBLIC}, include_in_schema=False
            ),
        ),
        logging_config=None,  # api.observability.logging owns the root logger (JSON, redacted)
        debug=False,
    )
    document_errors(app)
    return app


def create_asgi_app(settings: Settings, clock: Clock | None = None) -> ASGIApp:
    """The application as served: request ids, access logs, security headers and the
    audit trail wrap every response, including the router's own 404 and 405 answers;
    a body the server found late is answered 408.

    The client's address (which the sign-in rate limit, the audit trail and the logs
    use) and scheme come from X-Forwarded-For and X-Forwarded-Proto only when the
    connection comes from one of ``STRONGROOM_TRUSTED_PROXIES``; by default from
    the connection itself, whatever the request claims."""
    litestar = create_app(settings, clock)
    audited = AuditTrailMiddleware(litestar, lambda: getattr(litestar.state, "services", None))
    secured = RequestIdMiddleware(SecurityHeadersMiddleware(audited, hsts=settings.https))
    served: ASGIApp = BodyDeadlineMiddleware(secured)
    if settings.trusted_proxies:
        proxied = ProxyHeadersMiddleware(cast("Any", served), list(settings.trusted_proxies))
        served = cast("ASGIApp", proxied)
    return served
