"""Bounds on how long a client may take to send a request.

uvicorn bounds only the idle time between requests (keep-alive). A client that
opens a connection and sends its headers or its body a byte at a time holds a
connection, and the body read so far, for as long as it likes: five hundred
such connections stayed open for 75 s, and sixty unfinished 3 MB bodies doubled
the server's memory. Neither uvicorn nor Litestar has a read timeout to set, so
the two guards are written here, one at each layer:

- ``GuardedHttpToolsProtocol`` (the HTTP protocol): a request's headers must be
  complete within the header timeout of its first byte (of the connection, for
  the first request), or the client gets 408 and the connection is closed; and a
  connection whose response went out before its request body arrived is closed
  rather than kept reading a body nobody will use (such as one refused with 413
  on its declared length).
- ``BodyDeadlineMiddleware`` (ASGI): the application's reads of a body must end
  within the body timeout of the request's start, or the request is answered
  408, through the application and its audit trail, and the connection closed.
"""

from __future__ import annotations

import asyncio
from typing import cast

import structlog
from litestar.enums import ScopeType
from litestar.exceptions import ClientException
from litestar.status_codes import HTTP_408_REQUEST_TIMEOUT
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger("strongroom.transport")

_HEADERS_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 15\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Request Timeout"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers."""

    header_timeout: float = 10.0

    _header_deadline: asyncio.TimerHandle | None = None

    # uvicorn narrows the BaseTransport of asyncio.Protocol the same way.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and cycle.more_body:
            # Answered before its body arrived: reading the rest would only
            # let the client hold the connection.
            self.transport.close()
        super().on_response_complete()

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request behind one still being answered: its clock
            # starts again rather than cut the answer in flight.
            self._arm_header_deadline()
            return
        log.info("request headers timed out", timeout=self.header_timeout)
        self.transport.write(_HEADERS_TIMED_OUT)
        self.transport.close()


def guarded_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``, with this header timeout."""
    attributes = {"header_timeout": header_timeout}
    return cast(
        "type[HttpToolsProtocol]",
        type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attributes),
    )


class RequestTimeout(ClientException):
    """The request body did not arrive in time."""

    status_code = HTTP_408_REQUEST_TIMEOUT
    detail = "the request body did not arrive in time"


class BodyDeadlineMiddleware:
    """Answers 408 and closes the connection when a body takes longer than
    ``timeout`` seconds from the request's start to arrive."""

    def __init__(self, app: ASGIApp, *, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout
        complete = False

        async def bounded() -> ReceiveMessage:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # Raised in the handler that reads, so the application answers
                # (and audits) it like any refusal.
                raise RequestTimeout(headers={"connection": "close"}) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, bounded, send)
