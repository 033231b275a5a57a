"""Serve the fake Graph API over real HTTP on loopback, in a background thread.

    with running_fake_graph(media) as base_url:
        client = GraphClient(base_url)

The socket is bound (port 0) before the server starts, so there is no race for
a free port; start-up is awaited with a deadline and shutdown joins the thread.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from api.fake_graph import FakeMedia, create_fake_graph

HOST = "127.0.0.1"


@contextmanager
def running_fake_graph(media: FakeMedia, *, timeout: float = 10.0) -> Iterator[str]:
    """Run the fake Graph API for ``media`` and yield its base URL."""
    app = create_fake_graph(media)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
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
                    raise RuntimeError(f"the fake Graph API did not start on {HOST}:{port}")
                time.sleep(0.01)
            yield f"http://{HOST}:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("the fake Graph API did not stop")
