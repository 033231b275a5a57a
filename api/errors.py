"""Errors to HTTP: one table from domain error to status, and the handlers the
application registers from it.

Every error answer is an :class:`api.http.openapi.Error`, ``{"error": "…"}`` with
``problems`` when there are several. A domain error answers its status from
:data:`STATUS` with its own message (the services word them for the caller and
never put personal data in them); Litestar's own exceptions keep their status;
anything else, a bare ``ValueError`` included, is a bug: a logged 500.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_500_INTERNAL_SERVER_ERROR,
)
from litestar.types import ExceptionHandlersMap

from api.http.openapi import Error, Problem
from archiver.core.errors import (
    AccountExists,
    AccountNotFound,
    IntegrityFailed,
    InvalidInput,
    RecordNotFound,
)
from archiver.identity.services import IdentityConflict, NotPermitted, UnknownUser
from archiver.search.services import SearchError
from policy.errors import (
    ConsentAlreadyRecorded,
    ContactNotFound,
    DuplicateTemplate,
    DuplicateTerm,
    IdempotencyConflict,
    InvalidConsent,
    InvalidMessage,
    InvalidPolicy,
    InvalidTemplate,
    InvalidTerm,
    ItemNotFound,
    SelfApproval,
    StateConflict,
    TemplateNotFound,
    TemplateStateError,
    TermAlreadyRemoved,
    TermNotFound,
    UnknownTemplate,
)

log = structlog.get_logger("strongroom.api")

# Each domain error a handler lets through, and the status it answers. A subclass
# answers its nearest listed ancestor's status.
STATUS: dict[type[Exception], int] = {
    InvalidInput: HTTP_400_BAD_REQUEST,
    InvalidTerm: HTTP_400_BAD_REQUEST,
    SearchError: HTTP_400_BAD_REQUEST,
    InvalidMessage: HTTP_400_BAD_REQUEST,
    InvalidPolicy: HTTP_400_BAD_REQUEST,
    InvalidConsent: HTTP_400_BAD_REQUEST,
    InvalidTemplate: HTTP_400_BAD_REQUEST,
    SelfApproval: HTTP_403_FORBIDDEN,
    UnknownTemplate: HTTP_400_BAD_REQUEST,
    NotPermitted: HTTP_403_FORBIDDEN,
    TermNotFound: HTTP_404_NOT_FOUND,
    ItemNotFound: HTTP_404_NOT_FOUND,
    ContactNotFound: HTTP_404_NOT_FOUND,
    TemplateNotFound: HTTP_404_NOT_FOUND,
    UnknownUser: HTTP_404_NOT_FOUND,
    AccountNotFound: HTTP_404_NOT_FOUND,
    RecordNotFound: HTTP_404_NOT_FOUND,
    AccountExists: HTTP_409_CONFLICT,
    IdentityConflict: HTTP_409_CONFLICT,
    DuplicateTerm: HTTP_409_CONFLICT,
    TermAlreadyRemoved: HTTP_409_CONFLICT,
    IntegrityFailed: HTTP_409_CONFLICT,
    IdempotencyConflict: HTTP_409_CONFLICT,
    StateConflict: HTTP_409_CONFLICT,
    DuplicateTemplate: HTTP_409_CONFLICT,
    ConsentAlreadyRecorded: HTTP_409_CONFLICT,
    TemplateStateError: HTTP_409_CONFLICT,
}


def status_of(exc: Exception) -> int:
    """The status ``exc`` answers: its nearest class in :data:`STATUS`, else 500."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return HTTP_500_INTERNAL_SERVER_ERROR


def _domain_error(_: Request[Any, Any, State], exc: Exception) -> Response[Error]:
    return Response(Error(str(exc)), status_code=status_of(exc))


def _http_error(_: Request[Any, Any, State], exc: HTTPException) -> Response[Error]:
    detail, problems = exc.detail, None
    if isinstance(exc.extra, list):  # Litestar's validation errors: field, source, message
        problems = [
            Problem(reason=e.get("message", ""), field=_field(e.get("key")), source=e.get("source"))
            for e in exc.extra
        ]
        named = (f"{p.field}: {p.reason}" if p.field else p.reason for p in problems)
        detail = f"{detail}: {'; '.join(named)}"
    elif isinstance(exc.extra, dict) and "problems" in exc.extra:
        problems = msgspec.convert(exc.extra["problems"], list[Problem])
    return Response(Error(detail, problems), status_code=exc.status_code, headers=exc.headers)


def _field(key: str | None) -> str | None:
    # Litestar names the body as a whole after the handler's parameter, "data".
    return None if key == "data" else key


def _internal_error(_: Request[Any, Any, State], exc: Exception) -> Response[Error]:
    # Clients never see internals; the log carries the exception's type, the request
    # id and the traceback, which api.observability.logging scrubs of personal data like any field.
    log.error("unhandled error", error=type(exc).__name__, exc_info=exc)
    return Response(Error("internal error"), status_code=HTTP_500_INTERNAL_SERVER_ERROR)


def exception_handlers() -> ExceptionHandlersMap:
    """The application's exception handlers, from :data:`STATUS`."""
    handlers: ExceptionHandlersMap = dict.fromkeys(STATUS, _domain_error)
    handlers[HTTPException] = _http_error
    handlers[Exception] = _internal_error
    return handlers
