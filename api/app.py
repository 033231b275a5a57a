"""The Litestar application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR, HTTP_503_SERVICE_UNAVAILABLE
from litestar.types import ASGIApp
from sqlalchemy import text

from api.archive import ArchiveController
from api.bootstrap import Services, open_services
from api.logging import RequestIdMiddleware
from api.settings import Settings
from api.webhooks import receive_webhook, verify_webhook
from api.worker import background_jobs
from archiver.clock import Clock
from archiver.errors import VaultError

log = structlog.get_logger("strongroom.api")


@get("/healthz", sync_to_thread=False, tags=["health"])
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@get("/readyz", tags=["health"])
async def readyz(services: Services) -> Response[dict[str, str]]:
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


def _http_error(_: Request[Any, Any, State], exc: HTTPException) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"error": exc.detail}
    if isinstance(exc.extra, dict):
        body.update(exc.extra)
    return Response(body, status_code=exc.status_code, headers=exc.headers)


def _internal_error(_: Request[Any, Any, State], exc: Exception) -> Response[dict[str, str]]:
    # Clients never see internals; the log carries the exception type and request id.
    log.error("unhandled error", error=type(exc).__name__, exc_info=exc)
    return Response({"error": "internal error"}, status_code=HTTP_500_INTERNAL_SERVER_ERROR)


def _services(state: State) -> Services:
    services: Services = state.services
    return services


def create_app(settings: Settings, clock: Clock | None = None) -> Litestar:
    """Build the HTTP application; services open on start-up in the serving loop."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = await open_services(settings, clock)
        app.state.services = services
        try:
            if settings.embedded:
                # Embedded mode runs the worker's jobs inside the server process.
                async with background_jobs(services):
                    yield
            else:
                yield
        finally:
            await services.close()

    return Litestar(
        route_handlers=[healthz, readyz, verify_webhook, receive_webhook, ArchiveController],
        dependencies={"services": Provide(_services, sync_to_thread=False)},
        lifespan=[lifespan],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        openapi_config=OpenAPIConfig(title="Strongroom", version="0.1.0", path="/schema"),
        logging_config=None,  # api.logging owns the root logger (JSON, redacted)
        debug=False,
    )


def create_asgi_app(settings: Settings, clock: Clock | None = None) -> ASGIApp:
    """The application as served: request ids and access logs wrap every response,
    including the router's own 404 and 405 answers."""
    return RequestIdMiddleware(create_app(settings, clock))
