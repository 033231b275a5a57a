"""Bounds on how long a client may take to send a request.

uvicorn bounds only the idle time between requests (keep-alive). A client that
opens a connection and sends its headers or its body a byte at a time holds a
connection, and the body read so far, for as long as it likes: five hundred
such connections stayed open for 75 s, and sixty unfinished 3 MB bodies doubled
the server's memory. Neither uvicorn nor Litestar has a read timeout to set, so
the guard is written here, in uvicorn's HTTP protocol (``GuardedHttpToolsProtocol``):

- a request's headers must be complete within the header timeout (counted from
  the connection's start for its first request, else from the request's first
  byte), or the client gets 408 and the connection is closed;
- its body must be complete within the body timeout of the headers, or the
  application's next read of it raises ``RequestTimeout`` (``BodyDeadlineMiddleware``
  turns the protocol's signal into that), so that the application answers 408,
  and audits it, like any refusal; the connection is then closed;
- a connection whose response went out before its request body arrived (such
  as one refused with 413 on its declared length) takes no further request:
  the answer says ``Connection: close`` and ends with the connection's end,
  and the body is dropped as it comes, within its deadline.

A deadline is armed only when a read leaves a request unfinished: a request
that arrives whole in one read, as almost every one does, costs no timer (an
``asyncio.timeout`` around every read of every body cost about 20 us a request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import structlog
from litestar.enums import ScopeType
from litestar.exceptions import ClientException
from litestar.status_codes import HTTP_408_REQUEST_TIMEOUT
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger("strongroom.transport")

# Set in a request's scope by the protocol when its body is late.
BODY_LATE = "strongroom.body_late"

_HEADERS_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 15\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Request Timeout"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines on each request's headers and body."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0

    _deadline: asyncio.TimerHandle | None = None
    _headers_pending = False
    _body_pending = False
    _answered_early = False  # answered before the request's body had arrived
    _finishing = False  # answered, and reading only what is left of the body

    # uvicorn narrows the BaseTransport of asyncio.Protocol the same way.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is cut off too.
        self._arm(self.header_timeout, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is None and not self.transport.is_closing():
            if self._headers_pending:
                self._arm(self.header_timeout, self._headers_late)
            elif self._body_pending:
                self._arm(self.body_timeout, self._body_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_pending = True

    def on_headers_complete(self) -> None:
        self._disarm()
        self._headers_pending = False
        self._body_pending = True
        super().on_headers_complete()
        cycle = self.cycle
        send = cycle.send

        async def send_announcing_the_end(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start" and cycle.more_body:
                # Answered before its body arrived: this connection takes no
                # further request (see on_response_complete), and says so, or
                # a keep-alive client sends its next request into the close.
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    headers.append((b"connection", b"close"))
                await send({**message, "headers": headers})
                # uvicorn would now close the moment the answer is out, with
                # the body unread, which resets the connection.
                cycle.keep_alive = True
                self._answered_early = True
                return
            await send(message)

        cycle.send = send_announcing_the_end  # type: ignore[method-assign]

    def on_message_complete(self) -> None:
        self._disarm()
        self._body_pending = False
        super().on_message_complete()
        if self._finishing:
            self.transport.close()

    def on_response_complete(self) -> None:
        if self._answered_early and not self.transport.is_closing():
            if self.cycle.more_body:
                # The rest of the body is read and dropped, until it ends or its
                # deadline passes: closing with it unread would reset the
                # connection, and the client could lose the answer.
                self.transport.write_eof()
                self._finishing = True
            else:
                self.transport.close()
        super().on_response_complete()

    def _arm(self, timeout: float, late: Callable[[], None]) -> None:
        self._deadline = self.loop.call_later(timeout, late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request behind one still being answered (uvicorn
            # reads no further meanwhile): its clock starts again.
            self._arm(self.header_timeout, self._headers_late)
            return
        log.info("request headers timed out", timeout=self.header_timeout)
        self.transport.write(_HEADERS_TIMED_OUT)
        self.transport.close()

    def _body_late(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self.transport.is_closing():
            return
        if self.pipeline:
            # Queued behind another answer, and not read meanwhile.
            self._arm(self.body_timeout, self._body_late)
            return
        if cycle.response_started:
            self.transport.close()
            return
        log.info("request body timed out", timeout=self.body_timeout)
        cast("dict[str, Any]", cycle.scope)[BODY_LATE] = True
        cycle.message_event.set()  # wakes a read in progress


def guarded_protocol(header_timeout: float, body_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``, with these timeouts."""
    attributes = {"header_timeout": header_timeout, "body_timeout": body_timeout}
    return cast(
        "type[HttpToolsProtocol]",
        type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attributes),
    )


class RequestTimeout(ClientException):
    """The request body did not arrive in time."""

    status_code = HTTP_408_REQUEST_TIMEOUT
    detail = "the request body did not arrive in time"


class BodyDeadlineMiddleware:
    """Raises ``RequestTimeout`` from a read of a body that the protocol found late,
    in the handler that reads, so that the application answers it (and closes)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return

        async def bounded() -> ReceiveMessage:
            message = await receive()
            if BODY_LATE in scope:
                raise RequestTimeout(headers={"connection": "close"})
            return message

        await self.app(scope, bounded, send)
