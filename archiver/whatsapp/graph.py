"""The one client of Meta's Graph API (WhatsApp Cloud API).

Media fetch and message sending (``send_message``) share one ``request``
core. A call is retried on network errors, 429 and 5xx (and Graph's throttling
and "temporary" error codes) with exponential backoff and jitter, honouring
``Retry-After``; a POST only when Graph certainly did not act on it, so that a
retry never sends a message twice. The pair rate (131056) and the per-user
marketing limit (131049) are never retried here: their pause (seconds to a
day, per recipient) is the caller's to schedule. Anything else is mapped to
an error at once.

Errors::

    ArchiverError
    └── GraphError            status, code (Graph ``error.code``), title, retry_after
        ├── GraphTransient    worth retrying later: network, 429, 5xx, throttling,
        │                     131049 (retry_after: a day);
        │                     maybe_processed: Graph may have acted on it, so a
        │                     send that raised it must never be sent again
        └── GraphPermanent    will never work as asked: bad token, unknown or
            │                 expired id, other 4xx
            └── MediaTooLarge the body is larger than the caller accepts

Error messages never hold the access token or a URL (media URLs are bearer
capabilities for five minutes); Graph's own message is scrubbed of both.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from archiver.core.errors import ArchiverError

T = TypeVar("T")

# Graph error codes that are worth retrying, whatever the HTTP status. Throttling
# (the request was refused): 4/17/32/613 call rate, 80007 WABA rate, 130429
# throughput, 131056 pair rate. Server trouble (it may have been processed):
# 1 unknown, 2 service, 131000 something went wrong, 131016 service unavailable.
THROTTLING_CODES = frozenset({4, 17, 32, 613, 80007, 130429, 131056})
SERVER_TROUBLE_CODES = frozenset({1, 2, 131000, 131016})
# 0 AuthException, 10 permission denied, 190 token expired/invalid, 200-299 permissions.
AUTH_CODES = frozenset({0, 10, 190, *range(200, 300)})
# Paced per recipient by the caller, never retried inside one call: 131056 pair
# rate (Meta suggests 4**n seconds), 131049 per-user marketing limit (a day).
CALLER_PACED_CODES = frozenset({131056, 131049})
MARKETING_LIMIT_DEFER = 24 * 3600.0
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
_MESSAGE_LIMIT = 200
_ERROR_BODY_LIMIT = 64 * 1024
_MEDIA_ID = re.compile(r"[0-9A-Za-z_.-]+")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_CODE_PREFIX = re.compile(r"^\s*\(#\d+\)\s*")
_jitter = random.SystemRandom()


# Hosts Meta serves media from; a leading dot admits subdomains. The Graph
# base URL's own host is always admitted.
META_MEDIA_HOSTS: tuple[str, ...] = (".fbsbx.com", ".facebook.com", ".fbcdn.net", ".whatsapp.net")
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")


class GraphError(ArchiverError):
    """A Graph API call failed.

    ``status`` is the HTTP status (``None`` for a network error), ``code`` the
    Graph ``error.code`` when the body had one, ``title`` Graph's ``error.message``
    without its ``(#code)`` prefix (scrubbed, bounded), ``retry_after`` the
    seconds the server asked us (or Meta's documentation asks us) to wait.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        retry_after: float | None = None,
        title: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.title = title

    @property
    def auth_failed(self) -> bool:
        """True when Meta rejected the access token or its permissions.

        A Graph code decides when there is one: a 403 carrying 368 (policy
        block) is a restriction of the number, not a bad token.
        """
        if self.code is not None:
            return self.code in AUTH_CODES
        return self.status in (401, 403)


class GraphTransient(GraphError):
    """Worth retrying later: network trouble, throttling, server errors.

    ``maybe_processed`` is False only when Graph certainly did not act on the
    request (no connection, or throttled); a POST is retried only then, so a
    message is never sent twice by a retry.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        retry_after: float | None = None,
        title: str | None = None,
        maybe_processed: bool = True,
    ) -> None:
        super().__init__(message, status=status, code=code, retry_after=retry_after, title=title)
        self.maybe_processed = maybe_processed


class GraphPermanent(GraphError):
    """Will not work however often it is retried."""


class MediaTooLarge(GraphPermanent):
    """The response body is larger than the caller accepts."""


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """Where and what a media id is; ``url`` is valid for about five minutes."""

    url: str
    mime_type: str | None
    sha256: str | None
    file_size: int | None

    def __repr__(self) -> str:
        # The URL grants access to the media for a few minutes: keep it out of logs.
        return (
            f"MediaInfo(url=<hidden>, mime_type={self.mime_type!r}, "
            f"sha256={self.sha256!r}, file_size={self.file_size!r})"
        )


@dataclass(frozen=True, slots=True)
class SentMessage:
    """Graph accepted a message: its ``wamid``, and the ``wa_id`` Graph resolved
    the recipient to (when it said)."""

    wamid: str
    wa_id: str | None

    def __repr__(self) -> str:
        # A wa_id is a phone number: keep it out of logs.
        return f"SentMessage(wamid={self.wamid!r}, wa_id=<hidden>)"


class GraphClient:
    """Calls the Graph API at ``base_url`` (``https://graph.facebook.com`` in
    production, the fake in tests and the sandbox).

    ``max_attempts`` bounds the tries of one call; between tries it waits
    ``backoff_seconds * 2**n`` with jitter, or ``Retry-After`` when the server
    sends one no longer than ``max_retry_after`` (a longer wait is left to the
    caller through ``GraphError.retry_after``). ``sleep`` is injectable for tests.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_version: str = "v21.0",
        http: httpx.AsyncClient | None = None,
        max_attempts: int = 3,
        backoff_seconds: float = 0.2,
        max_retry_after: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        download_hosts: Sequence[str] = META_MEDIA_HOSTS,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        if self._base.scheme not in ("http", "https"):
            raise ValueError("the Graph base URL must be http or https")
        self._version = api_version.strip("/")
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=60.0))
        self._max_attempts = max_attempts
        self._backoff = backoff_seconds
        self._max_retry_after = max_retry_after
        self._sleep = sleep
        self._download_hosts = tuple(h.lower() for h in download_hosts)

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            await self._http.aclose()

    async def request(
        self, method: str, path: str, token: str, *, json: Any | None = None
    ) -> dict[str, Any]:
        """Call ``{base}/{version}/{path}`` and return its JSON object body.

        GET, HEAD, PUT and DELETE are retried on any transient error; other
        methods only when Graph certainly did not act (``maybe_processed``).
        """
        url = self._base.join(f"{self._version}/{path.lstrip('/')}")

        async def once() -> dict[str, Any]:
            try:
                response = await self._http.request(method, url, headers=_auth(token), json=json)
            except httpx.TransportError as exc:
                raise _network_error(exc) from None
            if response.status_code >= 400:
                raise _error(response, response.content, token)
            try:
                body = response.json()
            except ValueError:
                raise GraphTransient(
                    "Graph answered with a body that is not JSON", status=response.status_code
                ) from None
            if not isinstance(body, dict):
                raise GraphTransient(
                    "Graph answered with JSON that is not an object", status=response.status_code
                )
            return body

        return await self._retrying(once, idempotent=method.upper() in _IDEMPOTENT)

    async def media_info(self, media_id: str, access_token: str) -> MediaInfo:
        """Resolve a media id to a short-lived download URL and its metadata."""
        if not _MEDIA_ID.fullmatch(media_id) or media_id.strip(".") == "":
            raise GraphPermanent("malformed media id")
        body = await self.request("GET", media_id, access_token)
        url = body.get("url")
        if not isinstance(url, str) or not url:
            raise GraphPermanent("Graph returned no URL for the media id")
        return MediaInfo(
            url=url,
            mime_type=_text(body.get("mime_type")),
            sha256=_text(body.get("sha256")),
            file_size=_size(body.get("file_size")),
        )

    async def send_message(
        self, phone_number_id: str, access_token: str, payload: dict[str, Any]
    ) -> SentMessage:
        """Send ``payload`` (a Cloud API message object) from ``phone_number_id``.

        Raises ``GraphPermanent`` for a refusal that will not change, and
        ``GraphTransient`` otherwise. A ``GraphTransient`` with
        ``maybe_processed`` (a 5xx such as 131000 or 131016, a timeout after the
        request went out, or a success reply without a wamid) means Graph may
        have sent the message: the caller must never send it again, and learns
        the outcome from the statuses webhook. Without ``maybe_processed`` the
        request was refused untouched and may be sent again after
        ``retry_after`` or the caller's own backoff. Throughput and call-rate
        throttling (130429, 4, 80007) is retried here up to ``max_attempts``;
        the pair rate (131056) and 131049 are left to the caller at once.
        """
        if not (phone_number_id.isascii() and phone_number_id.isdigit()):
            raise GraphPermanent("malformed phone number id")
        body = await self.request("POST", f"{phone_number_id}/messages", access_token, json=payload)
        messages = body.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        wamid = first.get("id") if isinstance(first, dict) else None
        if not isinstance(wamid, str) or not wamid:
            # It answered 2xx: the message may well be on its way. Never resend.
            raise GraphTransient(
                "Graph accepted the message but returned no wamid",
                status=200,
                maybe_processed=True,
            )
        contacts = body.get("contacts")
        contact = contacts[0] if isinstance(contacts, list) and contacts else None
        wa_id = _text(contact.get("wa_id")) if isinstance(contact, dict) else None
        return SentMessage(wamid=wamid, wa_id=wa_id)

    async def download(self, url: str, access_token: str, max_bytes: int) -> bytes:
        """Download ``url`` with the bearer token; refuse bodies over ``max_bytes``."""
        target = self._download_url(url)

        async def once() -> bytes:
            try:
                async with self._http.stream(
                    "GET", target, headers=_auth(access_token), follow_redirects=True
                ) as response:
                    if response.status_code >= 400:
                        raise _error(response, await _head(response), access_token)
                    declared = _size(response.headers.get("content-length"))
                    if declared is not None and declared > max_bytes:
                        raise _too_large(max_bytes, response.status_code)
                    chunks = bytearray()
                    async for chunk in response.aiter_bytes():
                        chunks += chunk
                        if len(chunks) > max_bytes:
                            raise _too_large(max_bytes, response.status_code)
                    return bytes(chunks)
            except httpx.TransportError as exc:
                raise _network_error(exc) from None

        return await self._retrying(once, idempotent=True)

    def _download_url(self, url: str) -> httpx.URL:
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            raise GraphPermanent("malformed media URL") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise GraphPermanent("media URL is not an absolute http(s) URL")
        if not self._download_host_allowed(target.host):
            # The bearer token goes only to Meta's media hosts, never to a URL's whim.
            raise GraphPermanent("media URL host is not one of Meta's media hosts")
        loopback = target.host in LOOPBACK_HOSTS  # plain http here never leaves the machine
        if self._base.scheme == "https" and target.scheme != "https" and not loopback:
            # The bearer token must never travel in clear text when Graph itself is TLS.
            raise GraphPermanent("media URL is not https")
        return target

    def _download_host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if host == self._base.host:
            return True
        return any(
            host == allowed or (allowed.startswith(".") and host.endswith(allowed))
            for allowed in self._download_hosts
        )

    async def _retrying(self, call: Callable[[], Awaitable[T]], *, idempotent: bool) -> T:
        attempt = 1
        while True:
            try:
                return await call()
            except GraphTransient as exc:
                if attempt >= self._max_attempts or (exc.maybe_processed and not idempotent):
                    raise
                if exc.code in CALLER_PACED_CODES:
                    raise
                if exc.retry_after is not None and exc.retry_after > self._max_retry_after:
                    raise
                await self._sleep(self._delay(attempt, exc.retry_after))
                attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        base: float = self._backoff * 2.0 ** (attempt - 1)
        delay = base / 2 + _jitter.uniform(0, base / 2)
        return max(delay, retry_after) if retry_after is not None else delay


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _size(value: object) -> int | None:
    # Graph sends file_size as a number or as a string of digits.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _network_error(exc: httpx.TransportError) -> GraphTransient:
    # The class name says enough; httpx's text can hold the URL.
    unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return GraphTransient(
        f"network error talking to Graph ({type(exc).__name__})", maybe_processed=not unsent
    )


def _too_large(max_bytes: int, status: int) -> MediaTooLarge:
    return MediaTooLarge(f"media is larger than the {max_bytes} byte limit", status=status)


def _scrub(message: str, token: str) -> str:
    if token:
        message = message.replace(token, "[token]")
    message = _URL.sub("[url]", message)
    message = " ".join(message.split())
    if len(message) > _MESSAGE_LIMIT:
        message = message[: _MESSAGE_LIMIT - 1] + "…"
    return message


async def _head(response: httpx.Response) -> bytes:
    """The start of an error body: enough for Graph's JSON, never a huge download."""
    head = bytearray()
    async for chunk in response.aiter_bytes():
        head += chunk
        if len(head) >= _ERROR_BODY_LIMIT:
            break
    return bytes(head[:_ERROR_BODY_LIMIT])


def _error(response: httpx.Response, content: bytes, token: str) -> GraphError:
    status = response.status_code
    code: int | None = None
    detail = ""
    title: str | None = None
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        raw_code = error.get("code")
        if isinstance(raw_code, int) and not isinstance(raw_code, bool):
            code = raw_code
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        message = error.get("message")
        detail = details if isinstance(details, str) and details else ""
        if isinstance(message, str) and message:
            title = _scrub(_CODE_PREFIX.sub("", message), token) or None
            if not detail:
                detail = message
    text = f"Graph API {status}" + (f" (code {code})" if code is not None else "")
    if detail:
        text += ": " + _scrub(detail, token)
    retry_after = _retry_after(response)
    if code == 131049:
        # Meta: wait at least a day before trying this recipient again.
        return GraphTransient(
            text,
            status=status,
            code=code,
            title=title,
            retry_after=max(retry_after or 0.0, MARKETING_LIMIT_DEFER),
            maybe_processed=False,
        )
    throttled = status == 429 or code in THROTTLING_CODES
    if throttled or status >= 500 or status == 408 or code in SERVER_TROUBLE_CODES:
        return GraphTransient(
            text,
            status=status,
            code=code,
            retry_after=retry_after,
            title=title,
            maybe_processed=not throttled,
        )
    return GraphPermanent(text, status=status, code=code, retry_after=retry_after, title=title)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    # An HTTP date is relative to the server's clock; use its Date header when it sent one.
    reference = datetime.now(UTC)
    date_header = response.headers.get("date")
    if date_header:
        try:
            sent = parsedate_to_datetime(date_header)
        except (TypeError, ValueError):
            sent = None
        if sent is not None and sent.tzinfo is not None:
            reference = sent
    return max(0.0, (when - reference).total_seconds())
