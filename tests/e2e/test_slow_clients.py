"""Slow clients are cut off, and others are served meanwhile, over real sockets.

The server runs with one-second header and body timeouts. The tricklers send a
little every tenth of a second and wait for the server's answer between sends
(a read with a deadline, not a sleep), as the probe's clients did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.server import Server, clean_env

TIMEOUT = 1.0  # the header and body timeouts the server runs with
MAX_CONNECTIONS = 60
# A cut-off comes at the timeout, give or take the loaded machine's slack.
SLACK = 3.0
WEBHOOK_HEAD = b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: strongroom\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("slow")
    env = clean_env(
        STRONGROOM_DATA_DIR=str(root / "data"),
        STRONGROOM_HTTP_HEADER_TIMEOUT=str(TIMEOUT),
        STRONGROOM_HTTP_BODY_TIMEOUT=str(TIMEOUT),
        STRONGROOM_HTTP_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    )
    srv = Server(env, root / "data", root / "log")
    try:
        srv.start()
        srv.bootstrap_users()
        yield srv
    finally:
        srv.close()


async def _trickle(
    port: int, first: bytes, drip: bytes, started: asyncio.Queue[None]
) -> tuple[float, bytes]:
    """Send ``first``, then ``drip`` every 0.1 s until the server answers and
    closes; return how long that took and what it answered."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = loop.time()
    answer = b""
    try:
        writer.write(first)
        await writer.drain()
        started.put_nowait(None)
        while loop.time() - start < TIMEOUT + SLACK:
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.1)
            except TimeoutError:
                writer.write(drip)
                await writer.drain()
                continue
            if not data:
                return loop.time() - start, answer
            answer += data
    except ConnectionError:
        return loop.time() - start, answer
    finally:
        writer.close()
    raise AssertionError(f"still connected after {TIMEOUT + SLACK} s, answered {answer[:40]!r}")


async def _answer_and_close(port: int, request: bytes) -> tuple[float, bytes]:
    """Send ``request`` (headers only) and read until the server closes; return
    the time from the answer's first bytes to the close, and the answer."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(65536), 10)
        answered = loop.time()
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            answer += chunk
    finally:
        writer.close()
    return loop.time() - answered, answer


async def test_tricklers_are_cut_off_while_a_normal_client_is_served(server: Server) -> None:
    started: asyncio.Queue[None] = asyncio.Queue()
    body_head = WEBHOOK_HEAD + b"Content-Length: 3000000\r\nX-Hub-Signature-256: sha256=0\r\n\r\n"
    tricklers = (
        # Headers a byte at a time, never finished.
        [_trickle(server.port, WEBHOOK_HEAD, b"X", started) for _ in range(15)]
        # A connection that sends nothing at all.
        + [_trickle(server.port, b"", b"", started) for _ in range(5)]
        # A 3 MB body, 1,000 bytes a tenth of a second.
        + [_trickle(server.port, body_head, b"{" * 1000, started) for _ in range(20)]
    )
    tasks = [asyncio.create_task(t) for t in tricklers]
    for _ in tasks:
        await started.get()

    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        for _ in range(3):
            response = await client.get("/healthz", headers={"connection": "close"})
            assert response.status_code == 200
    # Served while every trickler still held its connection.
    assert not any(task.done() for task in tasks)

    results = await asyncio.gather(*tasks)
    for elapsed, answer in results:
        assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK, (elapsed, answer[:40])
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    # The server still serves once they are gone.
    assert server.client.get("/healthz").status_code == 200


@pytest.mark.parametrize("route", ["webhook", "api"])
async def test_a_declared_length_over_the_limit_is_refused_unread(
    server: Server, route: str
) -> None:
    if route == "webhook":  # 3 MB at most
        head = WEBHOOK_HEAD + b"Content-Length: 4000000\r\n\r\n"
    else:  # Litestar's default of 10 MB, with a token that may search
        token = server.officer["Authorization"].encode()
        head = (
            b"POST /api/v1/search HTTP/1.1\r\nHost: strongroom\r\nAuthorization: " + token + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 20000000\r\n\r\n"
        )
    open_after_answer, answer = await _answer_and_close(server.port, head)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
    # Refused on the header alone, and the connection ended with the answer,
    # not left open for a body nobody reads (until the body deadline, 1 s).
    assert open_after_answer < TIMEOUT / 2, open_after_answer


async def test_an_answer_before_the_body_says_the_connection_ends_and_ends_it_cleanly(
    server: Server,
) -> None:
    body = b'{"phone_number_id": "1"}'
    head = (
        b"POST /api/v1/accounts HTTP/1.1\r\nHost: strongroom\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head)  # no token: refused before the body is read
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]
        # A keep-alive client must not send its next request on this connection.
        assert b"\r\nconnection: close\r\n" in answer.lower(), answer
        writer.write(body)
        await writer.drain()
        rest = b""
        while chunk := await asyncio.wait_for(reader.read(65536), 10):  # no reset
            rest += chunk
    finally:
        writer.close()
    assert rest.endswith(b"}"), rest  # the whole answer, then the connection's end


async def test_connections_past_the_bound_are_answered_503(server: Server) -> None:
    started: asyncio.Queue[None] = asyncio.Queue()
    idle = [
        asyncio.create_task(_trickle(server.port, b"", b"", started))
        for _ in range(MAX_CONNECTIONS)
    ]
    for _ in idle:
        await started.get()
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        refused = await client.get("/healthz")
    assert refused.status_code == 503
    for elapsed, _ in await asyncio.gather(*idle):
        assert elapsed <= TIMEOUT + SLACK
    assert server.client.get("/healthz").status_code == 200


async def test_a_body_in_pieces_within_the_bound_is_read(server: Server) -> None:
    body = b'{"object": "whatsapp_business_account", "entry": []}'
    head = WEBHOOK_HEAD + b"Content-Length: %d\r\nX-Hub-Signature-256: sha256=0\r\n\r\n" % len(body)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head + body[:10])
        for piece in (body[10:30], body[30:]):
            with pytest.raises(TimeoutError):  # no answer while the body is unfinished
                await asyncio.wait_for(reader.read(1), 0.25)
            writer.write(piece)
        answer = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    # Read whole and judged: the signature is wrong, not the timing.
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]
