"""Structured logging: real JSON output, redaction both ways, request ids."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from hypothesis import assume, given
from hypothesis import strategies as st
from litestar import Litestar, get
from litestar.testing import TestClient

from api.observability.logging import (
    REDACTED,
    RequestIdMiddleware,
    configure_logging,
    is_sensitive_key,
    redact,
    scrub_text,
)

BEARER = "EAAGm0PX4ZCpsBAKZCZAu1x9Qe3ZBZCt5LTk2nB8ZBMLZCZAhZCk"
BASIC = "dXNlcjpodW50ZXIy"  # user:hunter2
APP_SECRET = "9f2c4e1ab37d58c06e4f1a2b3c4d5e6f"
MASTER_KEY_B64 = "q3Xv9s+Lk2mZ0pYw8R1tB6nC4dE7fG0hJ2kL5mN8oP0="  # 32 bytes
VERIFY_TOKEN = "s3cr3t-verify"
PHONES = ("+4915123456789", "447700900123", "+1 415-555-0100")
PHONE_DIGITS = ("4915123456789", "447700900123", "14155550100", "415-555-0100")
BODY_EN = "Please wire the remaining balance tomorrow"
BODY_JA = "明日の会議は10時です"
CONTACT_NAME = "Hanako Yamada"

SENSITIVE = (
    BEARER,
    BASIC,
    APP_SECRET,
    MASTER_KEY_B64,
    MASTER_KEY_B64.rstrip("="),
    VERIFY_TOKEN,
    *PHONES,
    *PHONE_DIGITS,
    BODY_EN,
    BODY_JA,
    "明日",
    CONTACT_NAME,
)

REQUEST_ID = "5f0c3a9e8b7d4c2a9e1f6b3d8a7c4e21"  # a uuid4 hex, fixed so test ids are stable
SEALED_UUID = "0193a1b2-c3d4-4e5f-8a7b-8c9d0e1f2a3b"
OBJECT_KEY = "journal/2026/11/21/8caa9fe67fc542198b855dde87f623fb.bin"


@pytest.fixture
def capture() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Configure real logging into a StringIO; return a reader of the JSON lines."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("debug", stream)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield lines
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def _raw(lines: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(line, ensure_ascii=False) for line in lines)


def test_secrets_and_personal_data_never_reach_the_output(
    capture: Callable[[], list[dict[str, Any]]],
) -> None:
    log = structlog.get_logger("test")
    log.info("webhook", headers={"Authorization": f"Bearer {BEARER}", "X-Trace": "ok"})
    log.info("graph call", authorization=f"Basic {BASIC}")
    log.info(f"calling graph with Authorization: Bearer {BEARER}")
    log.info(f"retrying with bearer {BEARER} after 2s")
    log.info("config loaded", app_secret=APP_SECRET, verify_token=VERIFY_TOKEN)
    log.info(f"secret is {APP_SECRET}")
    log.info("root key", master_key=MASTER_KEY_B64, s3_secret_key=MASTER_KEY_B64)
    log.info(f"loaded root key {MASTER_KEY_B64} from file")
    log.info(f"GET /webhook?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1")
    for phone in PHONES:
        log.info(f"sending to {phone} now")
        log.info("status", wa_id=phone.lstrip("+"), recipient=phone, note=f"tel {phone}")
    log.info("inbound", body=BODY_EN, caption=BODY_EN)
    log.info("inbound", text={"body": BODY_JA}, message=BODY_JA)
    log.info(
        "contacts",
        contacts=[{"profile": {"name": CONTACT_NAME}, "wa_id": "4915123456789"}],
    )
    log.info("raw", payload=json.dumps({"from": "447700900123", "text": {"body": BODY_JA}}))
    log.info("asgi", headers=[(b"authorization", f"Basic {BASIC}".encode()), (b"accept", b"*/*")])
    logging.getLogger("sqlalchemy.engine").warning("parameters (%r,)", "+4915123456789")
    logging.getLogger("uvicorn.error").info("client %s said %s", "+1 415-555-0100", BEARER)
    try:
        raise ValueError(f"no contact for {PHONES[0]} on record")
    except ValueError:
        log.exception("lookup failed")
        logging.getLogger("apscheduler").exception("job failed for 447700900123")

    lines = capture()
    raw = _raw(lines)
    assert len(lines) == 24
    for value in SENSITIVE:
        assert value not in raw, value
    assert REDACTED in raw
    assert "ValueError" in raw  # the exception is there, only its personal data is gone
    assert "X-Trace" in raw
    assert "*/*" in raw


def test_non_personal_values_survive(capture: Callable[[], list[dict[str, Any]]]) -> None:
    moment = datetime(2026, 11, 21, 7, 41, 0, 123456, tzinfo=UTC)
    structlog.contextvars.bind_contextvars(request_id=REQUEST_ID)
    log = structlog.get_logger("vault")
    log.info(
        f"sealed {OBJECT_KEY} at {moment.isoformat()} as {SEALED_UUID}",
        object_key=OBJECT_KEY,
        key_id="sk_0123456789abcdef01234567",
        version_id=SEALED_UUID,
        sealed_at=moment,
        retain_until="2033-11-21T00:00:00Z",
        duration_ms=12.5,
        status=200,
        size=123456789,
        attempts=3,
        kind="journal",
        content_type="application/json",
        path="/api/v1/accounts/42/messages",
        client_ip="192.168.100.200",
    )
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://0.0.0.0:8000")

    line, uvicorn_line = capture()
    assert line["event"] == (
        f"sealed {OBJECT_KEY} at 2026-11-21T07:41:00.123456+00:00 as {SEALED_UUID}"
    )
    assert line["request_id"] == REQUEST_ID
    assert line["object_key"] == OBJECT_KEY
    assert line["key_id"] == "sk_0123456789abcdef01234567"
    assert line["version_id"] == SEALED_UUID
    assert line["sealed_at"] == "2026-11-21T07:41:00.123456+00:00"
    assert line["retain_until"] == "2033-11-21T00:00:00Z"
    assert line["duration_ms"] == 12.5
    assert line["status"] == 200
    assert line["size"] == 123456789
    assert line["attempts"] == 3
    assert line["kind"] == "journal"
    assert line["content_type"] == "application/json"
    assert line["path"] == "/api/v1/accounts/42/messages"
    assert line["client_ip"] == "192.168.100.200"
    assert uvicorn_line["event"] == "Uvicorn running on http://0.0.0.0:8000"
    assert uvicorn_line["request_id"] == REQUEST_ID


def test_line_shape(capture: Callable[[], list[dict[str, Any]]]) -> None:
    structlog.get_logger("shape").warning("disk nearly full", free_pct=4)
    logging.getLogger("apscheduler.scheduler").error("job %s missed", "dispatch")
    first, second = capture()
    for line, level, event in (
        (first, "warning", "disk nearly full"),
        (second, "error", "job dispatch missed"),
    ):
        assert line["level"] == level
        assert line["event"] == event
        stamp = datetime.fromisoformat(line["timestamp"])
        assert stamp.utcoffset() is not None
        assert stamp.utcoffset() == UTC.utcoffset(None)
    assert first["logger"] == "shape"
    assert second["logger"] == "apscheduler.scheduler"


def test_level_filters(capture: Callable[[], list[dict[str, Any]]]) -> None:
    stream = io.StringIO()
    configure_logging("warning", stream)
    structlog.get_logger("x").info("quiet")
    logging.getLogger("sqlalchemy.engine").info("SELECT 1")
    structlog.get_logger("x").warning("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("chatty", io.StringIO())


def test_configuring_twice_does_not_duplicate(
    capture: Callable[[], list[dict[str, Any]]],
) -> None:
    stream = io.StringIO()
    configure_logging("info", stream)
    configure_logging("info", stream)
    structlog.get_logger("x").info("once")
    logging.getLogger("uvicorn").info("once too")
    assert len(stream.getvalue().splitlines()) == 2
    assert capture() == []  # the first stream's handler was replaced, not kept


# -- the redaction rule, both sides ----------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "Authorization",
        "cookie",
        "Set-Cookie",
        "token",
        "access_token",
        "hub.verify_token",
        "app_secret",
        "password",
        "master_key",
        "s3_secret_key",
        "api_key",
        "csrf_token",
        "X-Hub-Signature-256",
        "body",
        "text",
        "caption",
        "message",
        "content",
        "phone",
        "customer_phone_number",
        "display_phone_number",
        "wa_id",
        "from",
        "to",
        "recipient",
        "name",
        "profile",
        "contacts",
        "filename",
        "media_filename",
        "email",
    ],
)
def test_sensitive_keys(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "object_key",
        "idempotency_key",
        "key_id",
        "root_key_id",
        "request_id",
        "event",
        "timestamp",
        "status",
        "duration_ms",
        "content_type",
        "kind",
        "job_name",
        "bucket_name",
        "token_type",
        "error_message",
        "path",
        "method",
    ],
)
def test_non_sensitive_keys(key: str) -> None:
    assert not is_sensitive_key(key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call +4915123456789 now", "call [redacted] now"),
        ("447700900123", "[redacted]"),
        ("+1 415-555-0100", "[redacted]"),
        ("+1 (415) 555-0100.", "[redacted]."),
        ("電話番号は09012345678です", "電話番号は[redacted]です"),
        ("wa_id=4915123456789&x=1", "wa_id=[redacted]&x=1"),
        ("Bearer abc.def", "Bearer [redacted]"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: [redacted]"),
        ("Cookie: session=abc; theme=dark", "Cookie: [redacted]"),
        ("sig sha256=" + "ab" * 32, "sig sha256=[redacted]"),
        (
            "/webhook?hub.verify_token=xyz&hub.challenge=9",
            "/webhook?hub.verify_token=[redacted]&hub.challenge=9",
        ),
        ("/v21.0/me?access_token=EAAB&fields=id", "/v21.0/me?access_token=[redacted]&fields=id"),
        ("postgresql+asyncpg://u:pw@db:5432/x", "postgresql+asyncpg://[redacted]@db:5432/x"),
        ("hex 0123456789abcdef0123456789abcdef", "hex [redacted]"),
        (f"b64 {MASTER_KEY_B64} end", "b64 [redacted] end"),
        ('{"to": "447700900123", "type": "text"}', '{"to": "[redacted]", "type": "text"}'),
        ("Contact(name='Hanako', id=3)", "Contact(name=[redacted], id=3)"),
    ],
)
def test_scrub_removes(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-21T07:41:00.123456Z",
        "2026-11-21 07:41:00+00:00",
        "2026-11-21",
        SEALED_UUID,
        "12345678-1234-1234-1234-123456789012",  # an all-digit UUID is still a UUID
        OBJECT_KEY,
        "journal/2026/11/21/0193a1b2c3d4e5f6a7b8c9d0e1f2a3b4",
        "GET /api/v1/accounts/42 200 12.5ms",
        "retry 3 of 5 after 1500 ms",
        "192.168.100.200:8000",
        "took 3.14159265358 s",
        'File "/work/main/.venv/lib/python3.11/site-packages/structlog/_base.py", line 1234',
        "sk_0123456789abcdef01234567",
        "some_very_long_snake_case_identifier_name_here",
        "content_type=application/json status=200",
    ],
)
def test_scrub_keeps(text: str) -> None:
    assert scrub_text(text) == text


def test_bearer_redacts_whatever_follows() -> None:
    # Documented trade-off: the word after Bearer/Basic is always treated as a credential.
    assert scrub_text("Bearer token missing") == "Bearer [redacted] missing"


def test_redact_walks_nested_values() -> None:
    event = {
        "event": "inbound +4915123456789",
        "entry": [{"changes": [{"value": {"contacts": [{"wa_id": "1"}], "id": "wamid.X"}}]}],
        "headers": [(b"Authorization", b"Bearer abc"), ("accept", "text/html")],
        "raw": b"from 447700900123",
        "binary": bytes(range(32)),
        "request_id": REQUEST_ID,
        "sha256": "ab" * 32,
        "nested": {"deeper": {"app_secret": "x", "n": 5, "when": datetime(2026, 1, 2, tzinfo=UTC)}},
        "ids": {uuid.UUID(SEALED_UUID)},
        "4915123456789": "a phone as a key",
    }
    out = redact(None, "info", event)
    assert out["event"] == "inbound [redacted]"
    change = out["entry"][0]["changes"][0]["value"]
    assert change == {"contacts": REDACTED, "id": "wamid.X"}
    assert out["headers"] == [("Authorization", REDACTED), ("accept", "text/html")]
    assert out["raw"] == "from [redacted]"
    assert out["binary"] == "[32 bytes]"
    assert out["request_id"] == REQUEST_ID
    assert out["sha256"] == "ab" * 32
    assert out["nested"] == {
        "deeper": {"app_secret": REDACTED, "n": 5, "when": "2026-01-02T00:00:00+00:00"}
    }
    assert out["ids"] == [SEALED_UUID]
    assert "4915123456789" not in out
    assert out[REDACTED] == "a phone as a key"


def test_redact_survives_cycles_and_bad_str() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    loop: dict[str, Any] = {}
    loop["self"] = loop
    out = redact(None, "info", {"event": "x", "loop": loop, "obj": Broken()})
    assert out["obj"] == "[unprintable]"
    assert "[too deep]" in json.dumps(out)


# -- properties ------------------------------------------------------------------

_BOUNDARIES = st.sampled_from([" ", "\n", ", ", ": ", "=", "/", "(", "「", "は", "\t", "#"])
_SEPARATORS = st.sampled_from(["", "", "", " ", "-"])


@st.composite
def e164_numbers(draw: st.DrawFn) -> str:
    """An E.164 number, 8-15 digits, with or without +, maybe split by spaces or dashes."""
    digits = draw(st.text(alphabet="0123456789", min_size=7, max_size=14))
    digits = draw(st.sampled_from("123456789")) + digits
    parts = [digits[0]]
    for digit in digits[1:]:
        parts.append(draw(_SEPARATORS) + digit)
    plus = draw(st.sampled_from(["+", ""]))
    return plus + "".join(parts)


_ISO_DATE_SHAPE = re.compile(r"(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])")


@given(
    number=e164_numbers(),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    left=_BOUNDARIES,
    right=_BOUNDARIES,
)
def test_phone_numbers_never_survive(
    number: str, before: str, after: str, left: str, right: str
) -> None:
    # An 8-digit number written exactly like an ISO date (2012-10-15) is a date, by design.
    assume(not _ISO_DATE_SHAPE.fullmatch(number))
    scrubbed = scrub_text(f"{before}{left}{number}{right}{after}")
    assert number.lstrip("+") not in scrubbed


@given(value=st.uuids(), before=st.text(max_size=20), after=st.text(max_size=20))
def test_uuids_always_survive(value: uuid.UUID, before: str, after: str) -> None:
    # Only a credential scheme word right before it may take it, by design.
    assume(not re.search(r"(?i)(bearer|basic)\s*$", before))
    assert str(value) in scrub_text(f"{before}\n{value}\n{after}")


# -- RequestIdMiddleware ---------------------------------------------------------


@get("/hello", sync_to_thread=False)
def hello() -> dict[str, str]:
    structlog.get_logger("handler").info("inside handler")
    return {"ok": "yes"}


@get("/boom", sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("boom")


def _app() -> Litestar:
    # logging_config=None: Litestar's default config would add its own plaintext handler.
    return Litestar(
        route_handlers=[hello, boom],
        middleware=[RequestIdMiddleware],
        logging_config=None,
        debug=False,
    )


def _access(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("logger") == "strongroom.access"]


def test_request_id_is_echoed_and_logged(capture: Callable[[], list[dict[str, Any]]]) -> None:
    with TestClient(_app()) as client:
        response = client.get(
            "/hello?phone=4915123456789&q=alice", headers={"X-Request-ID": "abc-123.X_9"}
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-123.X_9"
    lines = capture()
    inside = [line for line in lines if line["event"] == "inside handler"]
    assert inside[0]["request_id"] == "abc-123.X_9"
    (access,) = _access(lines)
    assert access["event"] == "http_request"
    assert access["request_id"] == "abc-123.X_9"
    assert access["method"] == "GET"
    assert access["path"] == "/hello"
    assert access["status"] == 200
    assert isinstance(access["duration_ms"], float)
    assert access["client_ip"] == "testclient"
    # The test client's own httpx line shows the URL it requested; the server's do not.
    raw = _raw([line for line in lines if line["logger"] != "httpx"])
    assert "alice" not in raw
    assert "4915123456789" not in raw
    assert "?" not in access["path"]


@pytest.mark.parametrize(
    "incoming", [None, "", "x" * 65, "has space", "semi;colon", "ümlaut", "a\u200bb"]
)
def test_request_id_is_generated_when_missing_or_unsafe(
    capture: Callable[[], list[dict[str, Any]]], incoming: str | None
) -> None:
    headers = {} if incoming is None else {b"X-Request-ID": incoming.encode()}
    with TestClient(_app()) as client:
        response = client.get("/hello", headers=headers)
    generated = response.headers["x-request-id"]
    assert generated != incoming
    assert uuid.UUID(hex=generated).version == 4
    assert len(generated) == 32
    (access,) = _access(capture())
    assert access["request_id"] == generated


def test_wrapping_the_app_also_covers_unrouted_requests(
    capture: Callable[[], list[dict[str, Any]]],
) -> None:
    app = Litestar(route_handlers=[hello], logging_config=None)
    with TestClient(RequestIdMiddleware(app)) as client:
        missing = client.get("/missing?phone=4915123456789")
        wrong_method = client.post("/hello")
    assert missing.status_code == 404
    assert missing.headers["x-request-id"]
    assert wrong_method.status_code == 405
    logged = [(line["path"], line["status"]) for line in _access(capture())]
    assert logged == [("/missing", 404), ("/hello", 405)]


def test_a_64_character_id_is_accepted(capture: Callable[[], list[dict[str, Any]]]) -> None:
    incoming = "A" * 64
    with TestClient(_app()) as client:
        response = client.get("/hello", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] == incoming
    assert _access(capture())[0]["request_id"] == incoming


def test_server_errors_are_logged_with_status(
    capture: Callable[[], list[dict[str, Any]]],
) -> None:
    with TestClient(_app(), raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.headers["x-request-id"]
    (access,) = _access(capture())
    assert access["status"] == 500
    assert access["path"] == "/boom"


def test_the_access_log_is_silent_above_debug(
    capture: Callable[[], list[dict[str, Any]]],
) -> None:
    stream = io.StringIO()
    configure_logging("info", stream)  # capture() restores the logging set-up after
    with TestClient(_app()) as client:
        assert client.get("/hello").status_code == 200
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert "inside handler" in [line["event"] for line in lines]  # the stream is live
    assert _access(lines) == []


async def test_middleware_clears_context_and_reports_crashes(
    capture: Callable[[], list[dict[str, Any]]],
) -> None:
    async def crashing_app(scope: Any, receive: Any, send: Any) -> None:
        assert structlog.contextvars.get_contextvars()["request_id"]
        raise RuntimeError("before the response started")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhook",
        "query_string": b"hub.verify_token=xyz",
        "headers": [],
        "client": ("10.0.0.7", 5000),
    }
    structlog.contextvars.bind_contextvars(stale="from an earlier request")
    middleware = RequestIdMiddleware(crashing_app)
    with pytest.raises(RuntimeError, match="before the response started"):
        await middleware(scope, receive, send)  # type: ignore[arg-type]  # a hand-built scope
    assert structlog.contextvars.get_contextvars() == {}
    (access,) = _access(capture())
    assert access["status"] == 500
    assert access["method"] == "POST"
    assert access["path"] == "/webhook"
    assert access["client_ip"] == "10.0.0.7"
    assert "stale" not in access


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def noop(*_: Any) -> Any:
        return None

    await RequestIdMiddleware(app)({"type": "websocket"}, noop, noop)  # type: ignore[arg-type]  # a hand-built scope
    assert seen == ["websocket"]
