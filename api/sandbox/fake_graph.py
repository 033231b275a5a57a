"""A local fake of the Graph API, for tests and the embedded sandbox.

It serves the parts of the WhatsApp Cloud API that Strongroom calls:

* ``GET /{version}/{media_id}``: the media's metadata and a download URL that
  points back at this server (built from the request's base URL);
* ``GET /download/{media_id}``: the media bytes;
* ``POST /{version}/{phone_number_id}/messages``: accepts a message and
  answers with a fresh ``wamid``.

Every call needs ``Authorization: Bearer <FakeMedia.access_token>``; errors
have Graph's shape (``{"error": {"message", "type", "code", "fbtrace_id"}}``).
Per media id it can fail with 500 a number of times, throttle with 429 and
``Retry-After``, pretend the id expired, or serve bytes that do not match the
SHA-256 it advertises.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.enums import MediaType
from litestar.params import FromPath

_EXPIRED_MESSAGE = (
    "Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due "
    "to missing permissions, or does not support this operation."
)


@dataclass(slots=True)
class FakeMediaEntry:
    """One media item the fake knows, and how it misbehaves; tests may change it."""

    data: bytes
    mime_type: str
    fail_times: int = 0
    throttle_times: int = 0
    retry_after: int = 1
    expired: bool = False
    wrong_hash: bool = False

    @property
    def sha256(self) -> str:
        """The SHA-256 the fake advertises, base64 as Meta sends it in webhooks."""
        return base64.b64encode(hashlib.sha256(self.data).digest()).decode("ascii")

    def served_bytes(self) -> bytes:
        """The bytes a download returns: with ``wrong_hash``, one byte is flipped."""
        if not self.wrong_hash:
            return self.data
        body = bytearray(self.data or b"\x00")
        body[-1] ^= 0xFF
        return bytes(body)


class FakeMedia:
    """An in-memory registry of media plus counters of the requests seen.

    Safe to use from the test thread while the server runs in another.
    """

    def __init__(self, access_token: str) -> None:
        self.access_token = access_token
        self.info_requests: Counter[str] = Counter()
        self.download_requests: Counter[str] = Counter()
        self.unauthorized = 0
        self.sent: list[dict[str, Any]] = []
        self._entries: dict[str, FakeMediaEntry] = {}
        self._lock = threading.Lock()

    def add(
        self,
        media_id: str,
        data: bytes,
        mime_type: str,
        *,
        fail_times: int = 0,
        throttle_times: int = 0,
        retry_after: int = 1,
        expired: bool = False,
        wrong_hash: bool = False,
    ) -> FakeMediaEntry:
        """Register media: the next ``fail_times`` requests for it answer 500, the
        next ``throttle_times`` answer 429 with ``Retry-After: retry_after``."""
        entry = FakeMediaEntry(
            data=data,
            mime_type=mime_type,
            fail_times=fail_times,
            throttle_times=throttle_times,
            retry_after=retry_after,
            expired=expired,
            wrong_hash=wrong_hash,
        )
        with self._lock:
            self._entries[media_id] = entry
        return entry

    def __getitem__(self, media_id: str) -> FakeMediaEntry:
        with self._lock:
            return self._entries[media_id]

    def authorized(self, request: Request[Any, Any, State]) -> bool:
        """True when ``request`` carries the configured bearer token; counts refusals."""
        given = request.headers.get("authorization", "")
        ok = hmac.compare_digest(given.encode(), f"Bearer {self.access_token}".encode())
        if not ok:
            with self._lock:
                self.unauthorized += 1
        return ok

    def take_failure(self, media_id: str) -> Response[dict[str, Any]] | None:
        """The scripted failure the next request for ``media_id`` gets, if any."""
        with self._lock:
            entry = self._entries.get(media_id)
            if entry is None:
                return None
            if entry.throttle_times > 0:
                entry.throttle_times -= 1
                return graph_error(
                    429,
                    "(#130429) Rate limit hit",
                    130429,
                    headers={"Retry-After": str(entry.retry_after)},
                )
            if entry.fail_times > 0:
                entry.fail_times -= 1
                return graph_error(
                    500,
                    "An unexpected error has occurred. Please retry your request later.",
                    2,
                )
            return None

    def entry(self, media_id: str) -> FakeMediaEntry | None:
        """The media registered under ``media_id``, if any."""
        with self._lock:
            return self._entries.get(media_id)

    def count(self, counter: Counter[str], media_id: str) -> None:
        """Count one request in ``counter`` (one of this object's counters)."""
        with self._lock:
            counter[media_id] += 1

    def record_sent(self, message: dict[str, Any]) -> None:
        """Keep a message the fake accepted."""
        with self._lock:
            self.sent.append(message)


def meta_wamid(wa_id: str, *, outbound: bool, tail: str | None = None) -> str:
    """A wamid in the binary layout of Meta's (0x11 out, 0x12 in), which carries the
    customer's number as real ones do; ``tail`` (hex) is random unless given."""
    number = wa_id.encode("ascii")
    end = (tail or secrets.token_hex(9 if outbound else 10)).upper().encode("ascii")
    raw = (
        b"\x1c\x18"
        + bytes([len(number)])
        + number
        + b"\x15\x02\x00"
        + (b"\x11" if outbound else b"\x12")
        + b"\x18"
        + bytes([len(end)])
        + end
        + b"\x00"
    )
    return "wamid." + base64.b64encode(raw).decode("ascii")


def graph_error(
    status: int,
    message: str,
    code: int,
    *,
    type_: str = "OAuthException",
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    """A response shaped like a Graph API error."""
    body = {
        "error": {
            "message": message,
            "type": type_,
            "code": code,
            "fbtrace_id": secrets.token_urlsafe(12),
        }
    }
    return Response(body, status_code=status, headers=headers, media_type=MediaType.JSON)


def _unauthorized() -> Response[dict[str, Any]]:
    return graph_error(401, "Invalid OAuth access token - Cannot parse access token", 190)


def create_fake_graph(media: FakeMedia) -> Litestar:
    """A Litestar app that answers like the Graph API for ``media``."""

    @get("/download/{media_id:str}", media_type="application/octet-stream")
    async def download(request: Request[Any, Any, State], media_id: FromPath[str]) -> Response[Any]:
        if not media.authorized(request):
            return _unauthorized()
        media.count(media.download_requests, media_id)
        failure = media.take_failure(media_id)
        if failure is not None:
            return failure
        entry = media.entry(media_id)
        if entry is None or entry.expired:
            return graph_error(404, "Media not found", 100)
        return Response(entry.served_bytes(), media_type=entry.mime_type)

    @get("/{version:str}/{media_id:str}")
    async def media_info(
        request: Request[Any, Any, State], media_id: FromPath[str]
    ) -> Response[dict[str, Any]]:
        if not media.authorized(request):
            return _unauthorized()
        media.count(media.info_requests, media_id)
        failure = media.take_failure(media_id)
        if failure is not None:
            return failure
        entry = media.entry(media_id)
        if entry is None or entry.expired:
            return graph_error(400, _EXPIRED_MESSAGE.format(id=media_id), 100)
        base = str(request.base_url).rstrip("/")
        # Like Meta's lookaside URLs, the query carries a short-lived secret.
        url = f"{base}/download/{media_id}?mid={media_id}&hash={secrets.token_urlsafe(16)}"
        return Response(
            {
                "messaging_product": "whatsapp",
                "url": url,
                "mime_type": entry.mime_type,
                "sha256": hashlib.sha256(entry.data).hexdigest(),
                "file_size": len(entry.data),
                "id": media_id,
            }
        )

    @post("/{version:str}/{phone_number_id:str}/messages", status_code=200)
    async def send_message(
        request: Request[Any, Any, State], phone_number_id: FromPath[str]
    ) -> Response[dict[str, Any]]:
        if not media.authorized(request):
            return _unauthorized()
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if (
            not isinstance(body, dict)
            or body.get("messaging_product") != "whatsapp"
            or not isinstance(body.get("to"), str)
        ):
            return graph_error(
                400, "(#100) The parameter messaging_product and to are required", 100
            )
        media.record_sent({"phone_number_id": phone_number_id, **body})
        to: str = body["to"]
        return Response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": "".join(c for c in to if c.isdigit())}],
                "messages": [{"id": meta_wamid(to.lstrip("+"), outbound=True)}],
            }
        )

    return Litestar(
        route_handlers=[download, media_info, send_message],
        logging_config=None,  # the embedding process owns logging
        openapi_config=None,
        debug=False,
    )


LOOPBACK = "127.0.0.1"


@contextmanager
def running_fake_graph(media: FakeMedia, *, timeout: float = 10.0) -> Iterator[str]:
    """Serve the fake Graph API for ``media`` over real HTTP on a free loopback port,
    in a thread of its own (from the main thread uvicorn would take Ctrl-C), and
    yield its base URL. The socket is bound before the server starts, so there is
    no race for the port."""
    app = create_fake_graph(media)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        # No log settings: uvicorn would apply them to the process-wide "uvicorn.*" loggers.
        config = uvicorn.Config(app, log_config=None, log_level=None, lifespan="off", ws="none")
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-graph", daemon=True
        )
        thread.start()
        try:
            deadline = time.monotonic() + timeout
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the fake Graph API did not start on {LOOPBACK}:{port}")
                time.sleep(0.01)
            yield f"http://{LOOPBACK}:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("the fake Graph API did not stop")
