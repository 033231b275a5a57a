"""GraphClient: retries, backoff, Retry-After, error mapping, streamed downloads.

The client talks to ``httpx.MockTransport``, a real httpx transport that hands
each request to a function here; ``sleep`` is recorded instead of waited.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from archiver.core.errors import ArchiverError
from archiver.whatsapp.graph import (
    GraphClient,
    GraphError,
    GraphPermanent,
    GraphTransient,
    MediaTooLarge,
)

BASE = "https://graph.test"
TOKEN = "EAAGtokenVALUE1234567890abcdefSECRET"


class Recorder:
    """Serves scripted responses and keeps every request and every sleep."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


@pytest.fixture
async def http() -> AsyncIterator[Callable[[Recorder], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(recorder: Recorder) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.MockTransport(recorder.handle))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def graph(
    recorder: Recorder,
    http: Callable[[Recorder], httpx.AsyncClient],
    base: str = BASE,
    **kwargs: Any,
) -> GraphClient:
    kwargs.setdefault("download_hosts", (".test",))  # the fake media hosts of these tests
    return GraphClient(base, http=http(recorder), sleep=recorder.sleep, **kwargs)


def graph_error(status: int, code: int, message: str = "boom", **headers: str) -> httpx.Response:
    body = {"error": {"message": message, "type": "OAuthException", "code": code}}
    return httpx.Response(status, json=body, headers=headers)


def media_body(url: str = "https://lookaside.test/m?mid=1&hash=secret") -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "url": url,
        "mime_type": "image/jpeg",
        "sha256": "ab" * 32,
        "file_size": "303833",
        "id": "1234",
    }


async def test_media_info_sends_the_bearer_token_to_the_versioned_path(http: Any) -> None:
    recorder = Recorder(httpx.Response(200, json=media_body()))
    info = await graph(recorder, http).media_info("1234", TOKEN)
    (request,) = recorder.requests
    assert request.method == "GET"
    assert str(request.url) == f"{BASE}/v21.0/1234"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert info.mime_type == "image/jpeg"
    assert info.sha256 == "ab" * 32
    assert info.file_size == 303833  # Graph sends it as a string
    assert "lookaside" not in repr(info)


async def test_request_posts_json_under_the_configured_version(http: Any) -> None:
    answer = {"messaging_product": "whatsapp", "messages": [{"id": "wamid.1"}]}
    recorder = Recorder(httpx.Response(200, json=answer))
    client = graph(recorder, http, base=f"{BASE}/", api_version="v23.0")
    body = await client.request("POST", "/555/messages", TOKEN, json={"to": "1"})
    assert body == answer
    (request,) = recorder.requests
    assert str(request.url) == f"{BASE}/v23.0/555/messages"
    assert json.loads(request.content) == {"to": "1"}


async def test_server_errors_are_retried_with_growing_jittered_backoff(http: Any) -> None:
    recorder = Recorder(
        graph_error(500, 2), graph_error(503, 1), httpx.Response(200, json=media_body())
    )
    await graph(recorder, http, backoff_seconds=0.2).media_info("1234", TOKEN)
    assert len(recorder.requests) == 3
    first, second = recorder.sleeps
    assert 0.1 <= first <= 0.2
    assert 0.2 <= second <= 0.4


async def test_transient_errors_give_up_after_max_attempts(http: Any) -> None:
    recorder = Recorder(graph_error(502, 2))
    with pytest.raises(GraphTransient) as caught:
        await graph(recorder, http, max_attempts=4).media_info("1234", TOKEN)
    assert caught.value.status == 502
    assert caught.value.code == 2
    assert len(recorder.requests) == 4
    assert len(recorder.sleeps) == 3
    assert isinstance(caught.value, ArchiverError)


async def test_network_errors_are_transient_and_keep_the_url_out(http: Any) -> None:
    failure = httpx.ConnectError(f"cannot reach {BASE}/v21.0/1234?access_token={TOKEN}")
    recorder = Recorder(failure, httpx.Response(200, json=media_body()))
    await graph(recorder, http).media_info("1234", TOKEN)
    assert len(recorder.requests) == 2

    recorder = Recorder(failure)
    with pytest.raises(GraphTransient) as caught:
        await graph(recorder, http).media_info("1234", TOKEN)
    assert caught.value.status is None
    assert "ConnectError" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert "graph.test" not in str(caught.value)
    assert caught.value.__cause__ is None


async def test_429_waits_for_retry_after(http: Any) -> None:
    recorder = Recorder(
        graph_error(429, 130429, **{"Retry-After": "3"}), httpx.Response(200, json=media_body())
    )
    await graph(recorder, http, max_retry_after=10).media_info("1234", TOKEN)
    assert recorder.sleeps == [3.0]


async def test_retry_after_as_http_date_is_relative_to_the_server_date(http: Any) -> None:
    sent = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    headers = {
        "Date": format_datetime(sent, usegmt=True),
        "Retry-After": format_datetime(sent + timedelta(seconds=5), usegmt=True),
    }
    recorder = Recorder(graph_error(429, 4, **headers), httpx.Response(200, json=media_body()))
    await graph(recorder, http).media_info("1234", TOKEN)
    assert recorder.sleeps == [5.0]


async def test_a_long_retry_after_is_left_to_the_caller(http: Any) -> None:
    recorder = Recorder(graph_error(429, 130429, **{"Retry-After": "120"}))
    with pytest.raises(GraphTransient) as caught:
        await graph(recorder, http, max_retry_after=10).media_info("1234", TOKEN)
    assert caught.value.retry_after == 120.0
    assert len(recorder.requests) == 1
    assert recorder.sleeps == []


@pytest.mark.parametrize("code", [4, 80007, 130429])
async def test_throttling_codes_are_transient_whatever_the_status(http: Any, code: int) -> None:
    recorder = Recorder(graph_error(400, code), httpx.Response(200, json=media_body()))
    await graph(recorder, http).media_info("1234", TOKEN)
    assert len(recorder.requests) == 2


async def test_unknown_or_expired_media_id_is_permanent_and_not_retried(http: Any) -> None:
    message = "Unsupported get request. Object with ID '1234' does not exist"
    recorder = Recorder(graph_error(400, 100, message))
    with pytest.raises(GraphPermanent) as caught:
        await graph(recorder, http).media_info("1234", TOKEN)
    assert (caught.value.status, caught.value.code) == (400, 100)
    assert not caught.value.auth_failed
    assert str(caught.value) == f"Graph API 400 (code 100): {message}"
    assert len(recorder.requests) == 1
    assert recorder.sleeps == []


async def test_a_rejected_token_is_permanent_and_never_echoed(http: Any) -> None:
    message = f"Malformed access token {TOKEN} for https://lookaside.test/m?hash=secret"
    recorder = Recorder(graph_error(401, 190, message))
    with pytest.raises(GraphPermanent) as caught:
        await graph(recorder, http).media_info("1234", TOKEN)
    assert caught.value.auth_failed
    assert TOKEN not in str(caught.value)
    assert "hash=secret" not in str(caught.value)
    assert "lookaside" not in str(caught.value)


async def test_error_details_are_preferred_and_bounded(http: Any) -> None:
    body = {
        "error": {
            "message": "(#131000) Something",
            "code": 100,
            "error_data": {"messaging_product": "whatsapp", "details": "x" * 1000},
        }
    }
    recorder = Recorder(httpx.Response(400, json=body))
    with pytest.raises(GraphPermanent) as caught:
        await graph(recorder, http).media_info("1234", TOKEN)
    assert str(caught.value).startswith("Graph API 400 (code 100): xxx")
    assert len(str(caught.value)) < 250


async def test_a_non_json_gateway_error_is_transient(http: Any) -> None:
    recorder = Recorder(httpx.Response(502, text="<html>Bad gateway</html>"))
    with pytest.raises(GraphTransient) as caught:
        await graph(recorder, http, max_attempts=1).media_info("1234", TOKEN)
    assert caught.value.status == 502
    assert caught.value.code is None


async def test_a_success_without_json_is_transient(http: Any) -> None:
    recorder = Recorder(httpx.Response(200, text="oops"))
    with pytest.raises(GraphTransient):
        await graph(recorder, http, max_attempts=1).media_info("1234", TOKEN)


async def test_a_malformed_media_id_is_refused_before_any_request(http: Any) -> None:
    recorder = Recorder(httpx.Response(200, json=media_body()))
    for bad in ("", "..", "1/../me", "1?fields=x"):
        with pytest.raises(GraphPermanent):
            await graph(recorder, http).media_info(bad, TOKEN)
    assert recorder.requests == []


async def test_media_info_without_url_is_permanent(http: Any) -> None:
    recorder = Recorder(httpx.Response(200, json={"id": "1234"}))
    with pytest.raises(GraphPermanent):
        await graph(recorder, http).media_info("1234", TOKEN)


async def test_download_follows_a_redirect_with_the_token(http: Any) -> None:
    recorder = Recorder(
        httpx.Response(302, headers={"Location": "https://lookaside.test/real"}),
        httpx.Response(200, content=b"jpeg bytes"),
    )
    data = await graph(recorder, http).download(
        "https://lookaside.test/m?mid=1", TOKEN, max_bytes=100
    )
    assert data == b"jpeg bytes"
    assert [str(r.url) for r in recorder.requests] == [
        "https://lookaside.test/m?mid=1",
        "https://lookaside.test/real",
    ]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in recorder.requests)


async def test_download_retries_server_errors(http: Any) -> None:
    recorder = Recorder(graph_error(500, 2), httpx.Response(200, content=b"ok"))
    assert await graph(recorder, http).download("https://l.test/m", TOKEN, 10) == b"ok"
    assert len(recorder.sleeps) == 1


async def test_download_refuses_a_declared_size_over_the_limit(http: Any) -> None:
    recorder = Recorder(httpx.Response(200, content=b"x" * 11))
    with pytest.raises(MediaTooLarge):
        await graph(recorder, http).download("https://l.test/m", TOKEN, max_bytes=10)
    assert len(recorder.requests) == 1


async def test_download_stops_reading_a_streamed_body_over_the_limit(http: Any) -> None:
    produced: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for n in range(100):
            produced.append(n)
            yield b"x" * 4

    recorder = Recorder(httpx.Response(200, content=chunks()))
    with pytest.raises(MediaTooLarge):
        await graph(recorder, http).download("https://l.test/m", TOKEN, max_bytes=10)
    assert "content-length" not in recorder.requests[0].headers
    assert len(produced) < 10


async def test_download_maps_errors_like_requests(http: Any) -> None:
    recorder = Recorder(graph_error(403, 10, "Permission denied"))
    with pytest.raises(GraphPermanent) as caught:
        await graph(recorder, http).download("https://l.test/m", TOKEN, 10)
    assert caught.value.auth_failed
    assert caught.value.status == 403


async def test_download_never_sends_the_token_in_clear_text_for_a_tls_graph(http: Any) -> None:
    recorder = Recorder(httpx.Response(200, content=b"ok"))
    for url in ("http://l.test/m", "ftp://l.test/m", "/relative", "not a url"):
        with pytest.raises(GraphPermanent) as caught:
            await graph(recorder, http).download(url, TOKEN, 10)
        assert url not in str(caught.value)
    assert recorder.requests == []


def test_errors_form_one_tree() -> None:
    assert issubclass(GraphTransient, GraphError)
    assert issubclass(MediaTooLarge, GraphPermanent)
    assert issubclass(GraphError, ArchiverError)
    with pytest.raises(ValueError, match="max_attempts"):
        GraphClient(BASE, max_attempts=0)
    with pytest.raises(ValueError, match="http"):
        GraphClient("ftp://graph.test")


async def test_a_post_is_not_retried_when_graph_may_have_acted(http: Any) -> None:
    for failure in (graph_error(500, 131000), httpx.ReadTimeout("read timed out")):
        recorder = Recorder(failure, httpx.Response(200, json={"messages": [{"id": "w"}]}))
        with pytest.raises(GraphTransient) as caught:
            await graph(recorder, http).request("POST", "555/messages", TOKEN, json={})
        assert caught.value.maybe_processed
        assert len(recorder.requests) == 1


async def test_a_post_is_retried_when_graph_certainly_did_not_act(http: Any) -> None:
    for failure in (graph_error(429, 130429), httpx.ConnectError("refused")):
        recorder = Recorder(failure, httpx.Response(200, json={"messages": [{"id": "w"}]}))
        body = await graph(recorder, http).request("POST", "555/messages", TOKEN, json={})
        assert body == {"messages": [{"id": "w"}]}
        assert len(recorder.requests) == 2


async def test_download_refuses_hosts_that_are_not_metas(http: Any) -> None:
    recorder = Recorder(httpx.Response(200, content=b"ok"))
    client = graph(recorder, http, download_hosts=(".fbsbx.com",))
    for url in ("https://attacker.example/m", "https://fbsbx.com.attacker.example/m"):
        with pytest.raises(GraphPermanent, match="not one of Meta's media hosts"):
            await client.download(url, TOKEN, max_bytes=10)
    assert recorder.requests == []


def meta_error(status: int, code: int, message: str, details: str) -> httpx.Response:
    """An error as the Cloud API sends it: the title in ``message``, the detail in
    ``error_data.details``."""
    body = {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": "AbCdEf",
        }
    }
    return httpx.Response(status, json=body)


def accepted(wamid: str = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI") -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "messaging_product": "whatsapp",
            "contacts": [{"input": "+1 650 555 1234", "wa_id": "16505551234"}],
            "messages": [{"id": wamid}],
        },
    )


TEXT = {
    "messaging_product": "whatsapp",
    "to": "16505551234",
    "type": "text",
    "text": {"body": "hi"},
}


async def test_send_message_posts_the_payload_and_returns_the_wamid(http: Any) -> None:
    recorder = Recorder(accepted("wamid.ABC"))
    sent = await graph(recorder, http).send_message("106540352242922", TOKEN, TEXT)
    assert (sent.wamid, sent.wa_id) == ("wamid.ABC", "16505551234")
    assert "16505551234" not in repr(sent)
    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/v21.0/106540352242922/messages"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == TEXT


async def test_send_message_refuses_a_malformed_phone_number_id(http: Any) -> None:
    recorder = Recorder(accepted())
    for bad in ("", "me", "1/../2", "12?x=1", "١٢"):
        with pytest.raises(GraphPermanent, match="phone number id"):
            await graph(recorder, http).send_message(bad, TOKEN, TEXT)
    assert recorder.requests == []


@pytest.mark.parametrize(
    "reply",
    [
        {"messaging_product": "whatsapp"},
        {"messages": []},
        {"messages": [{"id": ""}]},
        {"messages": ["wamid.X"]},
    ],
)
async def test_a_success_without_a_wamid_may_have_been_sent_and_is_never_resent(
    http: Any, reply: dict[str, Any]
) -> None:
    recorder = Recorder(httpx.Response(200, json=reply), accepted())
    with pytest.raises(GraphTransient) as caught:
        await graph(recorder, http).send_message("555", TOKEN, TEXT)
    assert caught.value.maybe_processed
    assert len(recorder.requests) == 1


# (code, HTTP status, Meta's title, class, maybe_processed, retried inside the call)
SEND_ERRORS = [
    (130429, 400, "Rate limit hit", GraphTransient, False, True),
    (4, 400, "Application request limit reached", GraphTransient, False, True),
    (80007, 400, "Rate limit issues", GraphTransient, False, True),
    (
        131056,
        400,
        "(Business Account, Consumer Account) pair rate limit hit",
        GraphTransient,
        False,
        False,
    ),
    (
        131049,
        400,
        "This message was not delivered to maintain healthy ecosystem engagement.",
        GraphTransient,
        False,
        False,
    ),
    (131000, 500, "Something went wrong", GraphTransient, True, False),
    (131016, 500, "Service unavailable", GraphTransient, True, False),
    (131047, 400, "Re-engagement message", GraphPermanent, None, False),
    (
        131050,
        400,
        "Unable to deliver the message. This recipient has chosen to stop receiving "
        "marketing messages on WhatsApp from your business.",
        GraphPermanent,
        None,
        False,
    ),
    (131026, 400, "Message Undeliverable", GraphPermanent, None, False),
    (130403, 400, "Message blocked by business", GraphPermanent, None, False),
    (
        132000,
        400,
        "Number of parameters does not match the expected number of params",
        GraphPermanent,
        None,
        False,
    ),
    (132015, 400, "Template is Paused", GraphPermanent, None, False),
    (132016, 400, "Template is Disabled", GraphPermanent, None, False),
    (368, 403, "Temporarily blocked for policies violations", GraphPermanent, None, False),
    (131031, 400, "Account has been locked", GraphPermanent, None, False),
    (131048, 400, "Spam rate limit hit", GraphPermanent, None, False),
    (987654, 400, "Some code nobody documented", GraphPermanent, None, False),
]


@pytest.mark.parametrize(
    ("code", "status", "title", "kind", "maybe_processed", "retried"), SEND_ERRORS
)
async def test_each_send_error_code_maps_to_its_class_with_code_and_title_kept(
    http: Any,
    code: int,
    status: int,
    title: str,
    kind: type[GraphError],
    maybe_processed: bool | None,
    retried: bool,
) -> None:
    details = f"Details of {code} for {TOKEN}"
    recorder = Recorder(meta_error(status, code, f"(#{code}) {title}", details))
    with pytest.raises(GraphError) as caught:
        await graph(recorder, http, max_attempts=3).send_message("555", TOKEN, TEXT)
    error = caught.value
    assert type(error) is kind
    assert (error.status, error.code) == (status, code)
    assert error.title == title
    assert f"Details of {code}" in str(error)
    assert TOKEN not in str(error)
    assert not error.auth_failed
    if isinstance(error, GraphTransient):
        assert error.maybe_processed is maybe_processed
    assert len(recorder.requests) == (3 if retried else 1)


async def test_the_per_user_marketing_limit_asks_for_a_day(http: Any) -> None:
    recorder = Recorder(meta_error(400, 131049, "(#131049) limit", "later"))
    with pytest.raises(GraphTransient) as caught:
        await graph(recorder, http).send_message("555", TOKEN, TEXT)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 24 * 3600
    assert recorder.sleeps == []


async def test_a_send_that_failed_after_it_went_out_is_never_retried(http: Any) -> None:
    for failure in (
        meta_error(500, 131000, "(#131000) Something went wrong", "x"),
        graph_error(502, 2),
        httpx.Response(503, text="<html>unavailable</html>"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("peer closed"),
    ):
        recorder = Recorder(failure, accepted())
        with pytest.raises(GraphTransient) as caught:
            await graph(recorder, http, max_attempts=5).send_message("555", TOKEN, TEXT)
        assert caught.value.maybe_processed
        assert len(recorder.requests) == 1
        assert recorder.sleeps == []


async def test_a_send_that_could_not_connect_is_retried(http: Any) -> None:
    for failure in (httpx.ConnectError("refused"), httpx.ConnectTimeout("slow")):
        recorder = Recorder(failure, failure, accepted("wamid.LATE"))
        sent = await graph(recorder, http, max_attempts=3).send_message("555", TOKEN, TEXT)
        assert sent.wamid == "wamid.LATE"
        assert len(recorder.requests) == 3
        assert len(recorder.sleeps) == 2


async def test_a_403_with_a_policy_code_is_not_an_auth_failure(http: Any) -> None:
    recorder = Recorder(meta_error(403, 368, "(#368) blocked", "policy"))
    with pytest.raises(GraphPermanent) as caught:
        await graph(recorder, http).send_message("555", TOKEN, TEXT)
    assert not caught.value.auth_failed
    recorder = Recorder(httpx.Response(403, text="forbidden"))
    with pytest.raises(GraphPermanent) as caught:
        await graph(recorder, http).send_message("555", TOKEN, TEXT)
    assert caught.value.auth_failed
