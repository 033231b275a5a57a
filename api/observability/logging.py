"""Structured JSON logging with secrets and personal data redacted.

``configure_logging`` sends structlog events and every stdlib ``logging`` record
(uvicorn, SQLAlchemy, APScheduler, ...) through one chain that ends in
``redact`` and a JSON renderer, one object per line. ``RequestIdMiddleware``
gives every HTTP request an id, binds it to the log context and writes one
access-log event.

Redaction rule
--------------
1. *By name.* A value is replaced by ``[redacted]``, whatever its type, when its
   key (case-insensitive; ``-`` read as ``_``; only the part after the last
   ``.``) is in ``SENSITIVE_KEYS`` or ends in ``_`` + one of
   ``SENSITIVE_SUFFIXES`` (``*_key``, ``*_token``, ``*_secret``, ``*_phone``,
   ``*_body`` ...), unless it is in ``NON_SECRET_KEYS`` (identifiers that
   merely end in ``_key``, such as ``object_key``). ``key_id`` and friends do
   not end in a sensitive word and are kept. This applies in nested dicts,
   lists, ``(name, value)`` header pairs, and to ``name=value`` and
   ``"name": value`` pairs inside strings.
2. *By shape.* Every string (the event text, exception text, dict keys and
   values) is scrubbed of: phone numbers (8-15 digits, optional leading ``+``,
   single spaces, dashes or parentheses between digits, not glued to an ASCII
   letter, digit or ``.``); ``Bearer``/``Basic`` credentials; credentials in
   URLs (``scheme://user:pass@``); ``Authorization:``/``Cookie:`` header lines;
   ``sha256=<hex>`` signatures; and long tokens: a run of 32+ base64/base64url
   characters that is all hex, or mixes letters and digits, or mixes case, or
   contains ``+`` -- except lowercase ``/`` paths such as object keys.
3. *Kept on purpose.* Canonical UUIDs and ISO-8601 dates and date-times are
   never touched. Numbers (int, float) are kept as numbers: sizes and epoch
   times matter and a phone number is caught by its key. Values under
   ``request_id``, ``object_key``, ``key_id``, ``version_id`` and ``sha256``
   skip the long-token rule (we generate them; they are ids, not secrets) but
   not the phone rule. Free text that has no secret shape and no sensitive key
   (a message body logged as the event text) cannot be recognised: log
   content under a named key.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from datetime import time as dt_time
from typing import Any, Final, TextIO

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "NON_SECRET_KEYS",
    "REDACTED",
    "SENSITIVE_KEYS",
    "SENSITIVE_SUFFIXES",
    "RequestIdMiddleware",
    "configure_logging",
    "is_sensitive_key",
    "redact",
    "scrub_text",
]

REDACTED: Final = "[redacted]"

SENSITIVE_KEYS: Final = frozenset(
    {
        # credentials
        "authorization",
        "proxy_authorization",
        "cookie",
        "cookies",
        "set_cookie",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "verify_token",
        "secret",
        "app_secret",
        "client_secret",
        "password",
        "passwd",
        "passphrase",
        "master_key",
        "key",
        "signature",
        "x_hub_signature",
        "x_hub_signature_256",
        "otp",
        "totp",
        # message content
        "body",
        "text",
        "caption",
        "message",
        "content",
        "filename",
        "file_name",
        "location",
        "latitude",
        "longitude",
        "address",
        # people
        "phone",
        "phone_number",
        "display_phone_number",
        "wa_id",
        "from",
        "from_",
        "to",
        "recipient",
        "sender",
        "name",
        "display_name",
        "profile_name",
        "contact_name",
        "first_name",
        "last_name",
        "full_name",
        "profile",
        "contact",
        "contacts",
        "email",
    }
)

SENSITIVE_SUFFIXES: Final = (
    "key",
    "secret",
    "token",
    "password",
    "passwd",
    "passphrase",
    "cookie",
    "signature",
    "phone",
    "phone_number",
    "wa_id",
    "body",
    "caption",
    "filename",
    "email",
)

NON_SECRET_KEYS: Final = frozenset(
    {"object_key", "idempotency_key", "cache_key", "partition_key", "sort_key", "primary_key"}
)

# Values we generate ourselves and that look like long hex; the phone rule still applies.
_LONG_TOKEN_EXEMPT_KEYS: Final = frozenset(
    {"request_id", "object_key", "key_id", "root_key_id", "version_id", "sha256"}
)

# ProcessorFormatter's bookkeeping; must reach its own processors untouched.
_INTERNAL_KEYS: Final = frozenset({"_record", "_from_structlog"})

_MAX_DEPTH: Final = 12

# -- shapes that are always kept -------------------------------------------------

_UUID = r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}(?![0-9A-Fa-f])"
_DATE = r"(?:19|20)\d{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:[.,]\d{1,9})?)?"
_TZ = r"(?:Z|[+-](?:[01]\d|2[0-3]):?[0-5]\d)?"
# A date followed by a time, or a date standing alone (not continuing as a digit run).
_DATETIME = rf"(?<!\d){_DATE}(?:[T ]{_TIME}{_TZ}|(?![ \-]?\d))"
_KEEP = rf"(?P<keep>{_UUID}|{_DATETIME})"

# -- shapes that are scrubbed ----------------------------------------------------

_SEP = r"(?:[ \u00a0\-\u2010-\u2013]|\)[ \u00a0\-]?|[ \u00a0\-]?\()"
_PHONE = rf"(?<![A-Za-z0-9.])\+?\(?\d(?:{_SEP}?\d){{7,14}}(?![A-Za-z0-9]|\.\d)"
_PHONE_RE = re.compile(rf"{_KEEP}|{_PHONE}")

_URL_CREDENTIALS_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/@]*:[^\s/@]*@")
_HEADER_LINE_RE = re.compile(
    r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-hub-signature(?:-256)?)"
    r"([ \t]*:[ \t]*)[^\r\n]+"
)
_AUTH_SCHEME_RE = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9\-._~+/]+=*")
_SIGNATURE_RE = re.compile(r"(?i)\b(sha1|sha256|sha512)=[0-9a-f]+")
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
_JSON_PAIR_RE = re.compile(
    rf"(?P<q>\\?[\"'])(?P<name>[^\"'\s\\]{{1,64}})(?P=q)(?P<sep>\s*:\s*)"
    rf"(?P<value>{_QUOTED}|\\\"(?:[^\"\\]|\\.)*?\\\"|[^\s,{{}}\[\]\"']+)"
)
_KV_PAIR_RE = re.compile(
    rf"(?<![\w.\-])(?P<name>[A-Za-z_][\w.\-]{{0,63}})=(?P<value>{_QUOTED}|[^&\s#;,\"'()]*)"
)
_B64_CHARS = r"A-Za-z0-9+/_\-"
_LONG_TOKEN_RE = re.compile(
    rf"{_KEEP}|(?P<token>(?<![{_B64_CHARS}])[{_B64_CHARS}]{{32,}}=*(?![{_B64_CHARS}=]))"
)
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")


def _normalise_key(key: str) -> str:
    return key.strip().lower().replace("-", "_").rsplit(".", 1)[-1]


def is_sensitive_key(key: str) -> bool:
    """True when a value stored under ``key`` must never be logged."""
    name = _normalise_key(key)
    if name in NON_SECRET_KEYS:
        return False
    if name in SENSITIVE_KEYS:
        return True
    return any(name.endswith("_" + suffix) for suffix in SENSITIVE_SUFFIXES)


def _phone_sub(match: re.Match[str]) -> str:
    return match.group() if match.group("keep") else REDACTED


def _is_secret_token(token: str) -> bool:
    core = token.rstrip("=")
    has_upper = any(c.isupper() for c in core)
    if "/" in core and not has_upper and "+" not in core:
        return False  # a lowercase path such as an object key
    if _HEX_RE.fullmatch(core):
        return True
    has_lower = any(c.islower() for c in core)
    has_digit = any(c.isdigit() for c in core)
    return "+" in core or (has_upper and has_lower) or (has_digit and (has_upper or has_lower))


def _long_token_sub(match: re.Match[str]) -> str:
    token = match.group("token")
    if token is None or not _is_secret_token(token):
        return match.group()
    return REDACTED


def _json_pair_sub(match: re.Match[str]) -> str:
    if not is_sensitive_key(match.group("name")):
        return match.group()
    q = match.group("q")
    return f"{q}{match.group('name')}{q}{match.group('sep')}{q}{REDACTED}{q}"


def _kv_pair_sub(match: re.Match[str]) -> str:
    if not is_sensitive_key(match.group("name")):
        return match.group()
    return f"{match.group('name')}={REDACTED}"


def scrub_text(text: str, *, long_tokens: bool = True) -> str:
    """Remove secret- and personal-looking substrings from ``text``.

    ``long_tokens=False`` keeps long hex/base64 runs (for ids we generate).
    """
    text = _PHONE_RE.sub(_phone_sub, text)
    text = _URL_CREDENTIALS_RE.sub(rf"\1{REDACTED}@", text)
    text = _HEADER_LINE_RE.sub(rf"\1\2{REDACTED}", text)
    text = _AUTH_SCHEME_RE.sub(rf"\1\2{REDACTED}", text)
    text = _SIGNATURE_RE.sub(rf"\1={REDACTED}", text)
    text = _JSON_PAIR_RE.sub(_json_pair_sub, text)
    text = _KV_PAIR_RE.sub(_kv_pair_sub, text)
    if long_tokens:
        text = _LONG_TOKEN_RE.sub(_long_token_sub, text)
    return text


def _scrub_bytes(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"[{len(data)} bytes]"
    if not all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"[{len(data)} bytes]"
    return scrub_text(text)


def _clean(value: Any, key: str | None, depth: int) -> Any:
    if key is not None and is_sensitive_key(key):
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub_text(value, long_tokens=key not in _LONG_TOKEN_EXEMPT_KEYS)
    if depth >= _MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, bytes | bytearray | memoryview):
        return _scrub_bytes(bytes(value))
    if isinstance(value, Mapping):
        return {
            _clean_key(k): _clean(v, k if isinstance(k, str) else None, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str | bytes):
        # A (name, value) pair, as in ASGI or httpx header lists.
        name = value[0].decode("latin-1") if isinstance(value[0], bytes) else value[0]
        return (scrub_text(name), _clean(value[1], name, depth + 1))
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(item, None, depth + 1) for item in value]
    if isinstance(value, datetime | date | dt_time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        text = str(value)
    except Exception:  # a broken __str__ must not break logging
        return "[unprintable]"
    return scrub_text(text)


def _clean_key(key: object) -> str:
    return scrub_text(key if isinstance(key, str) else str(key))


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact secrets and personal data (see module docstring)."""
    cleaned: EventDict = {}
    for key, value in event_dict.items():
        if key in _INTERNAL_KEYS:
            cleaned[key] = value
        elif key == "event":
            cleaned[key] = scrub_text(value) if isinstance(value, str) else _clean(value, None, 0)
        else:
            cleaned[_clean_key(key)] = _clean(value, key, 0)
    return cleaned


def _drop_record_leftovers(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    # ExtraAdder copies every non-standard LogRecord attribute: uvicorn's
    # ANSI-coloured copy of the message, and the ``message``/``asctime`` that an
    # earlier formatter (another handler) may have set on the record.
    for name in ("color_message", "message", "asctime"):
        event_dict.pop(name, None)
    return event_dict


class _JsonHandler(logging.StreamHandler[TextIO]):
    """The one root handler installed by ``configure_logging``."""


# Libraries that may have installed their own handlers; they must go through ours.
_THIRD_PARTY_LOGGERS: Final = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "sqlalchemy",
    "apscheduler",
    "litestar",
    "httpx",
    "httpcore",
    "alembic",
)


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send structlog and stdlib logging as redacted JSON lines to ``stream``
    (default: stderr). Safe to call again; the previous handler is replaced."""
    number = _level_number(level)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), _drop_record_leftovers, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
    )
    handler = _JsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    for name in _THIRD_PARTY_LOGGERS:
        third_party = logging.getLogger(name)
        third_party.handlers.clear()
        third_party.propagate = True
    # RequestIdMiddleware writes the access log without the query string;
    # uvicorn's own access line would repeat it with the query string.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Alembic narrates every start-up at info ("Context impl SQLiteImpl." and one
    # line per revision); a command prints only what it is for, so below debug
    # only its warnings and errors pass.
    alembic_level = logging.NOTSET if number <= logging.DEBUG else logging.WARNING
    logging.getLogger("alembic").setLevel(alembic_level)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Caching would pin loggers used before this call to the old chain and
        # break structlog.testing.capture_logs in tests.
        cache_logger_on_first_use=False,
    )


# -- request ids and the access log ----------------------------------------------

_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_REQUEST_ID_HEADER: Final = b"x-request-id"
_access_log = structlog.get_logger("strongroom.access")
# Asked first, because a structlog call that the level filters out still cost
# about 3% of the server's CPU under load (its logger is built per call).
_access_level = logging.getLogger("strongroom.access")


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name.lower() == _REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            return candidate if _REQUEST_ID_RE.fullmatch(candidate) else None
    return None


class RequestIdMiddleware:
    """ASGI middleware: request id in, request id out, one access-log event.

    Takes ``X-Request-ID`` when it is 1-64 characters of ``[A-Za-z0-9._-]``,
    otherwise makes a uuid4 hex; binds it as ``request_id`` in structlog's
    context variables for the request and echoes it in the response.

    Wrap the whole application (``RequestIdMiddleware(app)``): inside
    ``Litestar(middleware=[...])`` it only sees routed requests, so Litestar's
    own 404 and 405 answers would go unlogged and without an id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        header_value = request_id.encode("ascii")
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != _REQUEST_ID_HEADER
                ]
                headers.append((_REQUEST_ID_HEADER, header_value))
                message["headers"] = headers
            await send(message)

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # Debug level: the audit trail already records every request durably,
            # and rendering a redacted line per request costs more than serving it.
            if _access_level.isEnabledFor(logging.DEBUG):
                client = scope.get("client")
                _access_log.debug(
                    "http_request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status if status is not None else 500,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    client_ip=client[0] if client else None,
                )
            structlog.contextvars.clear_contextvars()
