"""Which media a browser may be shown inline, and as what: the bytes decide."""

from __future__ import annotations

import pytest

from archiver.media.safety import ATTACHMENT_TYPE, Delivery, claimed_kind, delivery

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32
GIF = b"GIF89a\x01\x00\x01\x00" + b"\x00" * 32
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32
OGG = b"OggS\x00\x02" + b"\x00" * 32 + b"OpusHead"
MP3 = b"ID3\x04\x00\x00" + b"\x00" * 32
M4A = b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00M4A isom" + b"\x00" * 16
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00isommp42" + b"\x00" * 16
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
HTML = b"<!doctype html><html><script>alert(1)</script></html>"
XML = b'<?xml version="1.0"?><x:script xmlns:x="http://www.w3.org/1999/xhtml">1</x:script>'
JS = b"fetch('/api/v1/accounts').then(r => r.text()).then(alert)"
PDF = b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj"

INLINE_CASES = [
    pytest.param(PNG, "image/png", "image/png", id="png"),
    pytest.param(JPEG, "image/jpeg", "image/jpeg", id="jpeg"),
    # an alias of the same type
    pytest.param(JPEG, "image/jpg", "image/jpeg", id="jpeg-as-jpg"),
    pytest.param(GIF, "image/gif", "image/gif", id="gif"),
    pytest.param(WEBP, "image/webp", "image/webp", id="webp"),
    # parameters are dropped
    pytest.param(OGG, "audio/ogg; codecs=opus", "audio/ogg", id="ogg-with-codecs"),
    pytest.param(MP3, "audio/mpeg", "audio/mpeg", id="mp3"),
    pytest.param(MP3, "AUDIO/MP3", "audio/mpeg", id="mp3-alias-upper"),
    pytest.param(M4A, "audio/mp4", "audio/mp4", id="m4a"),
    pytest.param(MP4, "video/mp4", "video/mp4", id="mp4"),
    # both are ISO-BMFF, told apart loosely
    pytest.param(MP4, "audio/mp4", "audio/mp4", id="mp4-as-audio"),
    pytest.param(MP4, "video/3gpp", "video/3gpp", id="mp4-as-3gpp"),
    # no claim (a chat import): the bytes alone decide
    pytest.param(PNG, None, "image/png", id="png-unclaimed"),
    pytest.param(PNG, "  ", "image/png", id="png-blank-claim"),
]

DOWNLOAD_CASES = [
    # the claim contradicts the bytes
    pytest.param(PNG, "image/jpeg", id="png-as-jpeg"),
    pytest.param(JPEG, "image/png", id="jpeg-as-png"),
    pytest.param(OGG, "video/mp4", id="ogg-as-mp4"),
    pytest.param(MP4, "image/png", id="mp4-as-png"),
    # real image bytes claimed as a document type
    pytest.param(PNG, "text/html", id="png-as-html"),
    pytest.param(PNG, "image/svg+xml", id="png-as-svg"),
    pytest.param(SVG, "image/svg+xml", id="svg"),
    # a hostile file claiming a harmless type
    pytest.param(SVG, "image/png", id="svg-as-png"),
    pytest.param(SVG, None, id="svg-unclaimed"),
    pytest.param(HTML, "text/html", id="html"),
    pytest.param(HTML, "image/jpeg", id="html-as-jpeg"),
    pytest.param(XML, "application/xml", id="xml"),
    pytest.param(XML, "text/xml", id="xml-as-text-xml"),
    pytest.param(JS, "application/javascript", id="js"),
    pytest.param(JS, "text/javascript", id="js-as-text-javascript"),
    pytest.param(JS, None, id="js-unclaimed"),
    # bytes proven, but a type that is not shown inline
    pytest.param(PDF, "application/pdf", id="pdf"),
    pytest.param(b"\x00\x01\x02 nothing known", "application/octet-stream", id="unknown"),
    pytest.param(b"\x00\x01\x02 nothing known", "image/png", id="unknown-as-png"),
    pytest.param(b"", "image/png", id="empty-as-png"),
    pytest.param(b"", None, id="empty-unclaimed"),
]


@pytest.mark.parametrize(("data", "declared", "served"), INLINE_CASES)
def test_proven_images_audio_and_video_are_shown_inline(
    data: bytes, declared: str | None, served: str
) -> None:
    assert delivery(data, declared) == Delivery(served, inline=True)


@pytest.mark.parametrize(("data", "declared"), DOWNLOAD_CASES)
def test_anything_else_is_a_download_no_browser_renders(data: bytes, declared: str | None) -> None:
    served = delivery(data, declared)
    assert served == Delivery(ATTACHMENT_TYPE, inline=False)
    assert served.kind is None


def test_a_hostile_tail_after_a_real_image_header_is_still_only_an_image() -> None:
    # Served as image/png with nosniff, a browser decodes it as an image and never
    # as the HTML that follows the signature.
    assert delivery(PNG + HTML, "image/png") == Delivery("image/png", inline=True)


def test_the_kind_says_which_element_may_show_it() -> None:
    assert delivery(PNG, "image/png").kind == "image"
    assert delivery(OGG, "audio/ogg").kind == "audio"
    assert delivery(MP4, "video/mp4").kind == "video"


@pytest.mark.parametrize(
    ("declared", "kind"),
    [
        ("image/png", "image"),
        ("image/JPEG", "image"),
        ("audio/ogg; codecs=opus", "audio"),
        ("video/mp4", "video"),
        ("image/svg+xml", None),
        ("text/html", None),
        ("application/pdf", None),
        (None, None),
    ],
)
def test_a_claim_alone_only_says_what_could_be_shown(
    declared: str | None, kind: str | None
) -> None:
    assert claimed_kind(declared) == kind
