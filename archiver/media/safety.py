"""How a customer's media file may be served to a browser.

Customer files are hostile. A browser runs script in HTML, SVG and XML
documents, and a script type can be pulled in by one of them; served inline from
Strongroom's origin, such a file would act with the officer's session. So a file
is shown inline only when its bytes prove it a raster image, audio or video,
with the type the bytes show; everything else is a download of
``application/octet-stream``, a type no browser renders. The declared MIME type
is the customer's word: it can only narrow what the bytes show, and a claim that
contradicts them makes the file a download.
"""

from __future__ import annotations

from dataclasses import dataclass

import filetype  # type: ignore[import-untyped]  # filetype ships no type information

ATTACHMENT_TYPE = "application/octet-stream"

# The types a browser shows without running script, each with its container: a
# claim and the bytes agree when they name the same container. MP4, M4A and 3GP
# are all ISO-BMFF, told apart only by brands that encoders set loosely.
_CONTAINERS = {
    "image/png": "png",
    "image/apng": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
    "audio/mpeg": "mp3",
    "audio/aac": "aac",
    "audio/amr": "amr",
    "audio/ogg": "ogg",
    "audio/mp4": "isobmff",
    "video/mp4": "isobmff",
    "video/3gpp": "isobmff",
    "video/webm": "webm",
}
# Names senders use for the same types.
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "audio/mp3": "audio/mpeg",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
}
# Every signature filetype knows lies within its first 8 KiB.
_SNIFF_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Delivery:
    """How to serve one file: its ``Content-Type``, and whether a browser may show it
    (``inline``) or must only download it."""

    content_type: str
    inline: bool

    @property
    def kind(self) -> str | None:
        """``image``, ``audio`` or ``video`` for a file shown inline, else ``None``."""
        return self.content_type.partition("/")[0] if self.inline else None


DOWNLOAD = Delivery(ATTACHMENT_TYPE, inline=False)


def delivery(data: bytes, declared: str | None) -> Delivery:
    """How ``data``, claimed to be of type ``declared`` (``None``: no claim), may be
    served: inline with the claimed type when the bytes show that container, inline
    with the detected type when nothing was claimed, otherwise a download."""
    detected = filetype.guess_mime(data[:_SNIFF_BYTES]) if data else None
    container = _CONTAINERS.get(detected) if isinstance(detected, str) else None
    if container is None:
        return DOWNLOAD
    claim = _essence(declared)
    if claim is None:
        return Delivery(str(detected), inline=True)
    if _CONTAINERS.get(claim) != container:
        return DOWNLOAD
    return Delivery(claim, inline=True)


def claimed_kind(declared: str | None) -> str | None:
    """``image``, ``audio`` or ``video`` when a file claimed to be ``declared`` may be
    shown inline should its bytes agree (only they decide: see :func:`delivery`)."""
    claim = _essence(declared)
    return claim.partition("/")[0] if claim in _CONTAINERS else None


def _essence(declared: str | None) -> str | None:
    """``type/subtype`` of a MIME type, lower-cased, without parameters; ``None``
    for no claim (absent or blank)."""
    essence = (declared or "").partition(";")[0].strip().lower()
    if not essence:
        return None
    return _ALIASES.get(essence, essence)
