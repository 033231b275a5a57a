"""Hostile customer files, captured through the signed webhook and the media fetch
from a fake Graph API, are served by a real server only as downloads that no
browser renders; proven images and audio are shown inline."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from api.sandbox.demo import png, voice_note
from api.sandbox.fake_graph import FakeMedia, running_fake_graph
from tests.e2e.conftest import running_server
from tests.e2e.server import Server, customer_message

TOKEN = "e2e-graph-access-token"
CUSTOMER = "447700900555"
BASE = 1763720000
# Each script would leave a mark: a changed title and a request for /ran.
MARK = "document.title='ran';fetch('/ran')"
JS = f"{MARK};".encode()
HOSTILE: dict[str, tuple[bytes, str]] = {
    "svg-script": (
        f'<svg xmlns="http://www.w3.org/2000/svg"><script>{MARK}</script></svg>'.encode(),
        "image/svg+xml",
    ),
    "svg-onload": (
        f'<svg xmlns="http://www.w3.org/2000/svg" onload="{MARK}"><rect width="9" height="9"/>'
        "</svg>".encode(),
        "image/png",  # a hostile file claiming a harmless type
    ),
    "html-script": (
        f"<!doctype html><title>x</title><script>{MARK}</script>".encode(),
        "text/html",
    ),
    "xhtml-script": (
        f'<html xmlns="http://www.w3.org/1999/xhtml"><head><title>x</title></head>'
        f"<body><script>{MARK}</script></body></html>".encode(),
        "application/xhtml+xml",
    ),
    "javascript": (JS, "application/javascript"),
    "png-as-jpeg": (png(4, 4, (200, 0, 0), []), "image/jpeg"),  # claim contradicts bytes
}
PROVEN: dict[str, tuple[bytes, str, str]] = {
    "png": (
        png(64, 48, (30, 120, 200), [(8, 8, 40, 40, (250, 250, 250))]),
        "image/png",
        "image/png",
    ),
    "voice": (voice_note(1), "audio/ogg; codecs=opus", "audio/ogg"),
}


def svg_loading(script_url: str) -> bytes:
    """The issue's attack: an SVG that runs another media file as its script."""
    return f'<svg xmlns="http://www.w3.org/2000/svg"><script href="{script_url}"/></svg>'.encode()


class Captured:
    """Customer files delivered as messages through the signed webhook, their bytes
    served by the fake Graph API and fetched by the server's own worker."""

    def __init__(self, server: Server, media: FakeMedia, customer: str) -> None:
        self.server = server
        self.media = media
        self.customer = customer
        self.ids: dict[str, int] = {}
        self._contact: str | None = None

    def deliver(self, name: str, data: bytes, declared: str) -> int:
        """Send ``data`` as a message of the customer's; its media item id (still pending)."""
        media_id = f"sr-{self.customer}-{name}"
        self.media.add(media_id, data, declared)
        kind = declared.partition("/")[0]
        kind = kind if kind in ("image", "audio", "video") else "document"
        wamid = f"wamid.MEDIA.{self.customer}.{name}"
        body = {"id": media_id, "mime_type": declared, "sha256": self.media[media_id].sha256}
        if kind == "document":
            body["filename"] = f"{name}.html"  # a customer's name, never used to serve it
        offset = len(self.ids) + 1
        payload = customer_message(self.customer, wamid, BASE + offset, type=kind, **{kind: body})
        assert self.server.post_webhook(json.dumps(payload).encode()).status_code == 200
        self.server.records_of(wamid)
        self.ids[name] = self.server.wait_for(lambda: self._media_of(wamid))
        return self.ids[name]

    def wait_until_fetched(self) -> None:
        """Wait until the worker (it runs every 10 s) has fetched every file."""

        def done() -> bool:
            chat = self.server.get(f"/api/v1/conversations/{self.contact}").json()
            states = {m["id"]: m["state"] for msg in chat["messages"] for m in msg["media"]}
            return all(states.get(i) == "fetched" for i in self.ids.values())

        self.server.wait_for(done, timeout=60)

    @property
    def contact(self) -> str:
        if self._contact is None:
            found = self.server.get("/api/v1/contacts", phone="+" + self.customer)
            self._contact = str(found.json()["contact_id"])
        return self._contact

    def _media_of(self, wamid: str) -> int | None:
        chat = self.server.get(f"/api/v1/conversations/{self.contact}").json()
        for message in chat["messages"]:
            if message["wamid"] == wamid and message["media"]:
                found: int = message["media"][0]["id"]
                return found
        return None


def capture_all(server: Server, media: FakeMedia, customer: str) -> Captured:
    """Every hostile and every proven file, plus the SVG that loads the JavaScript
    file as its script, captured and fetched."""
    captured = Captured(server, media, customer)
    for name, (data, declared) in HOSTILE.items():
        captured.deliver(name, data, declared)
    for name, (data, declared, _) in PROVEN.items():
        captured.deliver(name, data, declared)
    script = f"/api/v1/media/{captured.ids['javascript']}"
    captured.deliver("svg-script-href", svg_loading(script), "image/svg+xml")
    captured.wait_until_fetched()
    return captured


@pytest.fixture(scope="module")
def fake_media() -> FakeMedia:
    return FakeMedia(access_token=TOKEN)


@pytest.fixture(scope="module")
def graph_url(fake_media: FakeMedia) -> Iterator[str]:
    with running_fake_graph(fake_media) as url:
        yield url


def server_with_graph(
    tmp_path_factory: pytest.TempPathFactory, database: str, graph_url: str
) -> Iterator[Server]:
    """A running server whose worker fetches media from the fake Graph API."""
    with running_server(
        tmp_path_factory.mktemp("media"),
        database,
        {"STRONGROOM_GRAPH_BASE_URL": graph_url},
        access_token=TOKEN,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def media_server(
    database_name: str, graph_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from server_with_graph(tmp_path_factory, database_name, graph_url)


@pytest.fixture(scope="module")
def captured(media_server: Server, fake_media: FakeMedia) -> Captured:
    return capture_all(media_server, fake_media, CUSTOMER)


def _served_safely(headers: Any) -> None:
    assert headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in [d.strip() for d in headers["content-security-policy"].split(";")]


HOSTILE_NAMES = [*HOSTILE, "svg-script-href"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_file_is_only_a_download(
    media_server: Server, captured: Captured, name: str
) -> None:
    media_id = captured.ids[name]
    response = media_server.get(f"/api/v1/media/{media_id}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    # Our own name, never the customer's ("<name>.html").
    assert response.headers["content-disposition"] == f'attachment; filename="media-{media_id}"'
    _served_safely(response.headers)
    expected = HOSTILE[name][0] if name in HOSTILE else b"<svg"
    assert response.content.startswith(expected)  # kept and served whole, as evidence


@pytest.mark.parametrize("name", list(PROVEN))
def test_a_file_whose_bytes_prove_its_type_is_shown_inline(
    media_server: Server, captured: Captured, name: str
) -> None:
    data, _, served = PROVEN[name]
    media_id = captured.ids[name]
    response = media_server.get(f"/api/v1/media/{media_id}")
    assert response.status_code == 200
    assert response.headers["content-type"] == served
    assert response.headers["content-disposition"] == f'inline; filename="media-{media_id}"'
    _served_safely(response.headers)
    assert response.content == data


def _embedded(html: str) -> list[str]:
    return re.findall(r"<(img|audio|video)\b", html)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_viewer_only_offers_a_hostile_file_for_download(
    media_server: Server, captured: Captured, name: str
) -> None:
    media_id = captured.ids[name]
    viewer = media_server.get(f"/media/{media_id}/view")
    assert viewer.status_code == 200
    assert _embedded(viewer.text) == []
    assert f'href="/api/v1/media/{media_id}" download' in viewer.text
    assert "is not shown here" in viewer.text


@pytest.mark.parametrize(("name", "element"), [("png", "img"), ("voice", "audio")])
def test_the_viewer_embeds_a_proven_file(
    media_server: Server, captured: Captured, name: str, element: str
) -> None:
    viewer = media_server.get(f"/media/{captured.ids[name]}/view")
    assert _embedded(viewer.text) == [element]


def test_the_console_keeps_its_own_policy_and_media_keep_theirs(
    media_server: Server, captured: Captured
) -> None:
    page = media_server.get(f"/media/{captured.ids['svg-script']}/view")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src" not in policy  # no inline or foreign script is ever allowed
    assert "frame-ancestors 'none'" in policy
    served = media_server.get(f"/api/v1/media/{captured.ids['svg-script']}")
    assert "default-src 'none'" in served.headers["content-security-policy"]
    # The conversation shows a thumbnail only of what claims to be a raster image.
    chat = media_server.get(f"/conversations/{captured.contact}")
    thumbs = set(re.findall(r'<img class="thumb" src="/api/v1/media/(\d+)"', chat.text))
    assert thumbs == {str(captured.ids[n]) for n in ("png", "svg-onload", "png-as-jpeg")}
