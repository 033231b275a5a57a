"""A local fake of the Graph API, for tests and the embedded sandbox.

It serves the parts of the WhatsApp Cloud API that Strongroom calls:

* ``GET /{version}/{media_id}``: the media's metadata and a download URL that
  points back at this server (built from the request's base URL);
* ``GET /download/{media_id}``: the media bytes;
* ``POST /{version}/{phone_number_id}/messages``: checks the message's shape a
  little and answers as the Cloud API does, with a fresh ``wamid``.

Every call needs ``Authorization: Bearer <FakeGraph.access_token>``; errors
have Graph's shape (``{"error": {"message", "type", "code", "error_data",
"fbtrace_id"}}``). Per media id it can fail with 500 a number of times,
throttle with 429 and ``Retry-After``, pretend the id expired, or serve bytes
that do not match the SHA-256 it advertises.

For sending it keeps a request log (``FakeGraph.requests()``: every POST to
``/messages``, accepted or refused, with its times), refuses sends on demand
with any Cloud API error code (``fail_next``), and, when given a webhook URL
and an app secret, queues the ``sent``/``delivered``/``read`` (or ``failed``,
``fail_delivery``) statuses of each accepted message as real signed webhooks.
They go out when asked (``await deliver_pending()``), so tests need no
sleeps, or from a background thread (``start_delivery()``) in the sandbox.
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
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
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


MESSAGE_TYPES = frozenset(
    {"text", "template", "image", "document", "audio", "video", "interactive"}
)
HREF = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"


@dataclass(frozen=True, slots=True)
class CloudApiError:
    """How the Cloud API answers one error code: HTTP status, title, details."""

    status: int
    title: str
    details: str
    type: str = "OAuthException"


# Titles as Meta's error-code reference gives them (the ``message`` is
# "(#code) title"); the HTTP status Graph sends with each.
CLOUD_API_ERRORS: dict[int, CloudApiError] = {
    4: CloudApiError(400, "Application request limit reached", "Too many API calls."),
    80007: CloudApiError(
        400, "Rate limit issues", "The WhatsApp Business Account has reached its rate limit."
    ),
    130429: CloudApiError(400, "Rate limit hit", "Cloud API message throughput has been reached."),
    131056: CloudApiError(
        400,
        "(Business Account, Consumer Account) pair rate limit hit",
        "Message failed to send because there were too many messages sent from this phone "
        "number to the same phone number in a short period of time.",
    ),
    131047: CloudApiError(
        400,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
    ),
    131050: CloudApiError(
        400,
        "Unable to deliver the message. This recipient has chosen to stop receiving "
        "marketing messages on WhatsApp from your business.",
        "Unable to deliver the message. This recipient has chosen to stop receiving "
        "marketing messages on WhatsApp from your business.",
    ),
    131049: CloudApiError(
        400,
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
    ),
    131026: CloudApiError(
        400,
        "Message Undeliverable",
        "Message failed to send because the recipient cannot receive it (not a WhatsApp "
        "user, or on an old version, or has not accepted the latest terms).",
    ),
    130403: CloudApiError(
        400, "Recipient blocked by the business", "The business has blocked this recipient."
    ),
    132000: CloudApiError(
        400,
        "Number of parameters does not match the expected number of params",
        "The number of variable parameter values does not match the template.",
    ),
    132001: CloudApiError(
        400, "Template does not exist", "The template does not exist in this language."
    ),
    132015: CloudApiError(400, "Template is Paused", "The template is paused for its low quality."),
    132016: CloudApiError(
        400, "Template is Disabled", "The template has been disabled for its low quality."
    ),
    368: CloudApiError(
        403,
        "Temporarily blocked for policies violations",
        "The WhatsApp Business Account is restricted for violating a platform policy.",
    ),
    131031: CloudApiError(
        403, "Account has been locked", "The business account is locked for a policy violation."
    ),
    131048: CloudApiError(
        400,
        "Spam rate limit hit",
        "Message failed to send because of restrictions on how many messages can be sent "
        "from this phone number.",
    ),
    131000: CloudApiError(
        500, "Something went wrong", "Message failed to send because of an unknown error."
    ),
    131016: CloudApiError(503, "Service unavailable", "A service is temporarily unavailable."),
    100: CloudApiError(400, "Invalid parameter", "A parameter is missing or invalid."),
}


def cloud_api_error(code: int) -> CloudApiError:
    """How the fake answers ``code``: Meta's, or a generic 400 for a code it does not know."""
    return CLOUD_API_ERRORS.get(code) or CloudApiError(
        400, f"Error {code}", f"The fake Graph API was told to fail with code {code}."
    )


@dataclass(frozen=True, slots=True)
class LoggedSend:
    """One POST to ``/messages``, accepted (``wamid``) or refused (``error_code``).

    ``monotonic`` and ``wall`` are when the fake answered; ``category`` is the
    one registered for the template with ``set_template_category``.
    """

    monotonic: float
    wall: float
    phone_number_id: str
    to: str | None
    type: str | None
    template: str | None
    category: str | None
    status: int
    error_code: int | None
    wamid: str | None

    @property
    def accepted(self) -> bool:
        """True when Graph took the message (it answered a wamid)."""
        return self.error_code is None

    @property
    def recipient(self) -> str | None:
        """``to`` as a wa_id (its digits), the key of the pair rate."""
        return _digits(self.to) if self.to is not None else None


@dataclass(slots=True)
class _Failure:
    code: int
    times: int
    to: str | None
    phone_number_id: str | None

    def matches(self, phone_number_id: str, to: str | None) -> bool:
        return (self.phone_number_id in (None, phone_number_id)) and (
            self.to is None or (to is not None and _digits(self.to) == _digits(to))
        )


@dataclass(frozen=True, slots=True)
class Callback:
    """A status webhook the fake will deliver (or did): its exact body and signature."""

    wamid: str
    status: str
    body: bytes
    signature: str


@dataclass(slots=True)
class _Webhook:
    url: str
    app_secret: str
    waba_id: str
    numbers: dict[str, str] = field(default_factory=dict)


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit())


class FakeGraph:
    """An in-memory registry of media plus counters of the requests seen, the
    log of sends, and the status webhooks still to deliver.

    Safe to use from the test thread while the server runs in another.
    ``clock`` gives the wall time used in the log and in status timestamps.
    """

    def __init__(self, access_token: str, *, clock: Callable[[], float] = time.time) -> None:
        self.access_token = access_token
        self.info_requests: Counter[str] = Counter()
        self.download_requests: Counter[str] = Counter()
        self.unauthorized = 0
        self.sent: list[dict[str, Any]] = []
        self._clock = clock
        self._entries: dict[str, FakeMediaEntry] = {}
        self._log: list[LoggedSend] = []
        self._failures: list[_Failure] = []
        self._delivery_failures: list[_Failure] = []
        self._categories: dict[str, str] = {}
        self._webhook: _Webhook | None = None
        self._pending: deque[Callback] = deque()
        self._delivered: list[Callback] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._deliverer: threading.Thread | None = None
        self._stopping = False

    # -- sending: configuration ---------------------------------------------------

    def configure_webhook(
        self,
        url: str,
        app_secret: str,
        numbers: dict[str, str],
        *,
        waba_id: str = "102290129340398",
    ) -> None:
        """Queue status webhooks for ``url``, signed with ``app_secret``; ``numbers``
        maps each phone number id to its display number (the webhook's metadata)."""
        with self._lock:
            self._webhook = _Webhook(url, app_secret, waba_id, dict(numbers))

    def set_template_category(self, name: str, category: str) -> None:
        """Log sends of template ``name`` with ``category`` (and price them so)."""
        with self._lock:
            self._categories[name] = category

    def fail_next(
        self,
        code: int,
        *,
        times: int = 1,
        to: str | None = None,
        phone_number_id: str | None = None,
    ) -> None:
        """Refuse the next ``times`` sends (to ``to``, from ``phone_number_id``, if
        given) with the Cloud API's answer for ``code``; nothing is queued for them."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._failures.append(_Failure(code, times, to, phone_number_id))

    def fail_delivery(
        self,
        code: int,
        *,
        times: int = 1,
        to: str | None = None,
        phone_number_id: str | None = None,
    ) -> None:
        """Accept the next ``times`` matching sends, then report them ``failed``
        with ``code`` instead of sent, delivered and read."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._delivery_failures.append(_Failure(code, times, to, phone_number_id))

    # -- sending: what happened -------------------------------------------------

    def requests(self) -> list[LoggedSend]:
        """Every send so far, in the order the fake answered them."""
        with self._lock:
            return list(self._log)

    def pending(self) -> list[Callback]:
        """Status webhooks queued and not delivered yet."""
        with self._lock:
            return list(self._pending)

    def delivered(self) -> list[Callback]:
        """Status webhooks delivered so far, in order."""
        with self._lock:
            return list(self._delivered)

    async def deliver_pending(self, http: httpx.AsyncClient | None = None) -> list[httpx.Response]:
        """POST every queued status webhook, in order, and return the answers.

        Raises ``RuntimeError`` (and keeps the rest queued) when the receiver
        does not answer 200, as Meta would retry it.
        """
        own = http is None
        client = http or httpx.AsyncClient(timeout=10.0)
        answers: list[httpx.Response] = []
        try:
            while (callback := self._next_callback()) is not None:
                answers.append(await self._post(client, callback))
        finally:
            if own:
                await client.aclose()
        return answers

    def start_delivery(self) -> None:
        """Deliver queued status webhooks from a background thread as they come
        (for the sandbox); ``stop_delivery`` ends it."""
        with self._lock:
            if self._deliverer is not None:
                return
            self._stopping = False
            self._deliverer = threading.Thread(
                target=self._deliver_forever, name="fake-graph-statuses", daemon=True
            )
            self._deliverer.start()

    def stop_delivery(self, timeout: float = 10.0) -> None:
        """Stop the background delivery thread (what is queued stays queued)."""
        with self._wake:
            thread, self._deliverer = self._deliverer, None
            self._stopping = True
            self._wake.notify_all()
        if thread is not None:
            thread.join(timeout)

    def _deliver_forever(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while True:
                with self._wake:
                    while not self._pending and not self._stopping:
                        self._wake.wait()
                    if self._stopping:
                        return
                    callback = self._pending[0]
                webhook = self._webhook
                if webhook is None:
                    return
                try:
                    answer = client.post(
                        webhook.url, content=callback.body, headers=_headers(callback)
                    )
                except httpx.TransportError:
                    answer = None
                with self._wake:
                    if answer is not None and answer.status_code == 200:
                        if self._pending and self._pending[0] is callback:
                            self._pending.popleft()
                            self._delivered.append(callback)
                    else:
                        # Meta retries a refused delivery later; so does the fake.
                        self._wake.wait(0.5)

    def _next_callback(self) -> Callback | None:
        with self._lock:
            return self._pending[0] if self._pending else None

    async def _post(self, client: httpx.AsyncClient, callback: Callback) -> httpx.Response:
        webhook = self._webhook
        assert webhook is not None  # nothing is queued without one
        answer = await client.post(webhook.url, content=callback.body, headers=_headers(callback))
        if answer.status_code != 200:
            raise RuntimeError(
                f"the webhook receiver answered {answer.status_code} to a {callback.status} status"
            )
        with self._lock:
            if self._pending and self._pending[0] is callback:
                self._pending.popleft()
                self._delivered.append(callback)
        return answer

    # -- sending: the endpoint's logic ----------------------------------------------

    def handle_send(
        self, phone_number_id: str, body: object, *, authorized: bool
    ) -> Response[dict[str, Any]]:
        """Answer one POST to ``/{phone_number_id}/messages`` and log it."""
        payload = body if isinstance(body, dict) else {}
        to = payload.get("to") if isinstance(payload.get("to"), str) else None
        kind = payload.get("type") if isinstance(payload.get("type"), str) else None
        template = _template_name(payload) if kind == "template" else None
        with self._lock:
            category = self._categories.get(template) if template else None
            if not authorized:
                return self._refuse(phone_number_id, to, kind, template, category, 190)
            problem = _shape_problem(body)
            if problem is not None:
                return self._refuse(phone_number_id, to, kind, template, category, 100, problem)
            failure = _take(self._failures, phone_number_id, to)
            if failure is not None:
                return self._refuse(phone_number_id, to, kind, template, category, failure)
            assert to is not None  # _shape_problem checked it
            kind = kind or "text"  # as Graph, which takes a message without a type as text
            wamid = meta_wamid(_digits(to), outbound=True)
            self.sent.append({"phone_number_id": phone_number_id, **payload})
            self._append(phone_number_id, to, kind, template, category, 200, None, wamid)
            undelivered = _take(self._delivery_failures, phone_number_id, to)
            self._queue_statuses(phone_number_id, to, wamid, category, undelivered)
        return Response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": _digits(to)}],
                "messages": [{"id": wamid}],
            }
        )

    def _refuse(
        self,
        phone_number_id: str,
        to: str | None,
        kind: str | None,
        template: str | None,
        category: str | None,
        code: int,
        details: str | None = None,
    ) -> Response[dict[str, Any]]:
        if code == 190:
            self.unauthorized += 1
            self._append(phone_number_id, to, kind, template, category, 401, 190, None)
            return _unauthorized()
        error = cloud_api_error(code)
        self._append(phone_number_id, to, kind, template, category, error.status, code, None)
        return cloud_api_response(code, details=details)

    def _append(
        self,
        phone_number_id: str,
        to: str | None,
        kind: str | None,
        template: str | None,
        category: str | None,
        status: int,
        error_code: int | None,
        wamid: str | None,
    ) -> None:
        self._log.append(
            LoggedSend(
                monotonic=time.monotonic(),
                wall=self._clock(),
                phone_number_id=phone_number_id,
                to=to,
                type=kind,
                template=template,
                category=category,
                status=status,
                error_code=error_code,
                wamid=wamid,
            )
        )

    def _queue_statuses(
        self,
        phone_number_id: str,
        to: str,
        wamid: str,
        category: str | None,
        failed: int | None,
    ) -> None:
        webhook = self._webhook
        if webhook is None:
            return
        now = int(self._clock())
        recipient = _digits(to)
        items: list[dict[str, Any]]
        if failed is not None:
            error = cloud_api_error(failed)
            items = [
                {
                    "id": wamid,
                    "status": "failed",
                    "timestamp": str(now),
                    "recipient_id": recipient,
                    "errors": [
                        {
                            "code": failed,
                            "title": error.title,
                            "message": error.title,
                            "error_data": {"details": error.details},
                            "href": HREF,
                        }
                    ],
                }
            ]
        else:
            priced = category or "service"
            sent = {
                "id": wamid,
                "status": "sent",
                "timestamp": str(now),
                "recipient_id": recipient,
                "conversation": {
                    "id": secrets.token_hex(16),
                    "expiration_timestamp": str(now + 24 * 3600),
                    "origin": {"type": priced},
                },
                "pricing": {
                    "billable": priced != "service",
                    "pricing_model": "PMP",
                    "type": "regular" if priced != "service" else "free_customer_service",
                    "category": priced,
                },
            }
            items = [sent] + [
                {
                    "id": wamid,
                    "status": status,
                    "timestamp": str(now + n),
                    "recipient_id": recipient,
                }
                for n, status in enumerate(("delivered", "read"), start=1)
            ]
        display = webhook.numbers.get(phone_number_id, phone_number_id)
        for item in items:
            body = json.dumps(
                {
                    "object": "whatsapp_business_account",
                    "entry": [
                        {
                            "id": webhook.waba_id,
                            "changes": [
                                {
                                    "value": {
                                        "messaging_product": "whatsapp",
                                        "metadata": {
                                            "display_phone_number": display,
                                            "phone_number_id": phone_number_id,
                                        },
                                        "statuses": [item],
                                    },
                                    "field": "messages",
                                }
                            ],
                        }
                    ],
                },
                separators=(",", ":"),
            ).encode()
            signature = (
                "sha256=" + hmac.new(webhook.app_secret.encode(), body, hashlib.sha256).hexdigest()
            )
            self._pending.append(Callback(wamid, str(item["status"]), body, signature))
        self._wake.notify_all()

    # -- media ----------------------------------------------------------------------

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


FakeMedia = FakeGraph  # the name media fetch's tests and the demo know it by


def _headers(callback: Callback) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Hub-Signature-256": callback.signature}


def _take(failures: list[_Failure], phone_number_id: str, to: str | None) -> int | None:
    for failure in failures:
        if failure.matches(phone_number_id, to):
            failure.times -= 1
            if failure.times == 0:
                failures.remove(failure)
            return failure.code
    return None


def _template_name(payload: dict[str, Any]) -> str | None:
    template = payload.get("template")
    name = template.get("name") if isinstance(template, dict) else None
    return name if isinstance(name, str) and name else None


def _shape_problem(body: object) -> str | None:
    """What is wrong with a message's shape, as Graph's details would say; None if nothing."""
    if not isinstance(body, dict):
        return "The request body is not a JSON object."
    if body.get("messaging_product") != "whatsapp":
        return "The parameter messaging_product is required and must be whatsapp."
    to = body.get("to")
    if not isinstance(to, str) or not _digits(to):
        return "The parameter to is required."
    kind = body.get("type", "text")
    if kind not in MESSAGE_TYPES:
        return f"The parameter type must be one of {', '.join(sorted(MESSAGE_TYPES))}."
    if not isinstance(body.get(kind), dict):
        return f"The parameter {kind} is required for a {kind} message."
    if kind == "template" and _template_name(body) is None:
        return "The parameter template['name'] is required."
    if kind == "text" and not isinstance(body["text"].get("body"), str):
        return "The parameter text['body'] is required."
    return None


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


def cloud_api_response(code: int, *, details: str | None = None) -> Response[dict[str, Any]]:
    """The Cloud API's answer for error ``code``: its HTTP status, ``(#code) title``
    as the message, and ``error_data.details``."""
    error = cloud_api_error(code)
    body = {
        "error": {
            "message": f"(#{code}) {error.title}",
            "type": error.type,
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details or error.details},
            "fbtrace_id": secrets.token_urlsafe(12),
        }
    }
    return Response(body, status_code=error.status, media_type=MediaType.JSON)


def _unauthorized() -> Response[dict[str, Any]]:
    return graph_error(401, "Invalid OAuth access token - Cannot parse access token", 190)


def create_fake_graph(media: FakeGraph) -> Litestar:
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
        given = request.headers.get("authorization", "")
        authorized = hmac.compare_digest(given.encode(), f"Bearer {media.access_token}".encode())
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        return media.handle_send(phone_number_id, body, authorized=authorized)

    return Litestar(
        route_handlers=[download, media_info, send_message],
        logging_config=None,  # the embedding process owns logging
        openapi_config=None,
        debug=False,
    )


LOOPBACK = "127.0.0.1"


@contextmanager
def running_fake_graph(media: FakeGraph, *, timeout: float = 10.0, port: int = 0) -> Iterator[str]:
    """Serve the fake Graph API for ``media`` over real HTTP on a loopback port (a
    free one unless ``port`` is given; the demo serves where the server sends),
    in a thread of its own (from the main thread uvicorn would take Ctrl-C), and
    yield its base URL. The socket is bound before the server starts, so there is
    no race for the port."""
    app = create_fake_graph(media)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, port))
        port = sock.getsockname()[1]
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
