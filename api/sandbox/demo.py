"""``strongroom demo``: a populated archive in under a minute.

Run in the directory of a running embedded server (``make serve``), the demo
registers a business number with freshly generated secrets through the local
services, as ``strongroom accounts add`` does, serves its media from a loopback
copy of the fake Graph API (``api.sandbox.fake_graph``), and feeds a scripted sample
through the server's real signed webhook path: eight contacts in English and
Japanese, media with captions, a voice note, a location, a button reply,
reactions, quote replies, Business app echoes with an edit and a revoke, a
history sync chunk, delivery statuses (one failed), a marketing opt-out and a
template status update. It follows projection and media fetch in the shared
database, then creates a compliance officer for the demo account and prints how
to sign in.

Payload shapes follow Meta's documented webhooks, as in
``tests/fixtures/webhooks``. Every phone number is fictional: UK numbers from
Ofcom's drama range (+44 7700 900xxx), US numbers from 555-0100..0199, and
Japanese 090 numbers as in the fixtures.
"""

# ruff: noqa: RUF001 - the Japanese sample uses full-width punctuation, as Japanese text does

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shlex
import struct
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from api.bootstrap import Services
from api.cli.operator import CLI
from api.cli.operator import granted as granted_text
from api.sandbox.fake_graph import FakeMedia, meta_wamid, running_fake_graph
from api.worker import MEDIA_EVERY_SECONDS
from archiver.identity.models import Grant
from archiver.identity.services import IdentityConflict, Role
from archiver.records.queries import AccountProgress
from archiver.whatsapp.items import extract
from policy.decision import ContentKind, Source
from policy.errors import DuplicateTerm
from policy.outbox import ItemView, MessageContent, SendRequest

# How long a 401 on the first webhook is retried: the server re-reads its
# accounts on an unknown signature at most every 5 s.
SIGNATURE_GRACE_SECONDS = 12.0
_POLL_SECONDS = 0.5


class DemoError(Exception):
    """The demo cannot go on; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class DemoAccount:
    """The demo business number and its secrets, generated afresh for each run."""

    phone_number_id: str
    display_phone_number: str
    waba_id: str
    app_secret: str = field(repr=False)
    verify_token: str = field(repr=False)
    access_token: str = field(repr=False)

    @classmethod
    def generate(cls) -> DemoAccount:
        """Random ids and secrets; the number is from the fictional 555-01xx range."""
        line = 100 + secrets.randbelow(100)
        return cls(
            phone_number_id=_digits(15),
            display_phone_number=f"+1 415 555 0{line}",
            waba_id=_digits(15),
            app_secret=secrets.token_hex(32),
            verify_token=secrets.token_urlsafe(24),
            access_token="EAAD" + secrets.token_urlsafe(48),
        )

    @property
    def business_number(self) -> str:
        """The number as Meta writes it in payloads: digits only."""
        return "".join(c for c in self.display_phone_number if c.isdigit())


@dataclass(frozen=True, slots=True)
class DemoFile:
    """One media file the demo serves."""

    media_id: str
    mime_type: str
    data: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        """Base64 SHA-256, as Meta sends it in webhooks."""
        return base64.b64encode(hashlib.sha256(self.data).digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class DemoData:
    """The webhook bodies to deliver (in order) and the media they refer to."""

    payloads: list[bytes]
    files: list[DemoFile]
    expected_records: int
    expected_media: int


# -- media, generated in code ---------------------------------------------------

_Rect = tuple[int, int, int, int, tuple[int, int, int]]


def png(width: int, height: int, background: tuple[int, int, int], shapes: list[_Rect]) -> bytes:
    """A valid RGB PNG: ``background`` with filled rectangles drawn in order."""
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")  # filter type 0 for each scanline
        for x in range(width):
            colour = background
            for x0, y0, x1, y1, fill in shapes:
                if x0 <= x < x1 and y0 <= y < y1:
                    colour = fill
            row += bytes(colour)
        rows.append(bytes(row))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data)
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def _ogg_page(serial: int, sequence: int, granule: int, flags: int, packets: list[bytes]) -> bytes:
    lacing = bytearray()
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    page = bytearray(
        struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing))
    )
    page += lacing + b"".join(packets)
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[(crc >> 24) ^ byte]
    page[22:26] = struct.pack("<I", crc)
    return bytes(page)


def voice_note(seconds: int = 3) -> bytes:
    """A valid Ogg Opus voice note (mono, 48 kHz) of ``seconds`` of silence."""
    pre_skip = 312
    head = struct.pack("<8sBBHIhB", b"OpusHead", 1, 1, pre_skip, 48000, 0, 0)
    vendor = b"strongroom demo"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    # A 20 ms CELT frame that decodes to silence.
    frames = [b"\xf8\xff\xfe"] * (seconds * 50)
    serial = 0x5354524D
    return (
        _ogg_page(serial, 0, 0, 0x02, [head])
        + _ogg_page(serial, 1, 0, 0x00, [tags])
        + _ogg_page(serial, 2, pre_skip + 960 * len(frames), 0x04, frames)
    )


def pdf(lines: list[str]) -> bytes:
    """A valid one-page PDF showing ``lines`` (ASCII) in Helvetica."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    text = " ".join(f"({escape(line)}) Tj 0 -22 Td" for line in lines)
    stream = f"BT /F1 14 Tf 56 780 Td {text} ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


_WHITE = (255, 255, 255)
_NAVY = (24, 44, 92)
_GREY = (200, 204, 212)
_GREEN = (30, 140, 90)


def _statement_png() -> bytes:
    lines: list[_Rect] = [(6, 14 + 6 * i, 58 - 9 * (i % 3), 17 + 6 * i, _GREY) for i in range(6)]
    return png(64, 56, _WHITE, [(0, 0, 64, 9, _NAVY), *lines, (40, 50, 58, 53, _GREEN)])


def _parcel_png() -> bytes:
    box = (150, 105, 60)
    return png(
        60,
        48,
        (214, 226, 240),
        [(12, 14, 48, 42, box), (12, 14, 48, 18, (120, 80, 40)), (27, 14, 33, 42, (235, 220, 180))],
    )


def _card_png() -> bytes:
    return png(
        72,
        46,
        (236, 240, 244),
        [(4, 4, 68, 42, (40, 110, 190)), (4, 12, 68, 18, _WHITE), (8, 26, 34, 29, _GREY)],
    )


# -- the script -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Person:
    name: str
    wa_id: str

    @property
    def e164(self) -> str:
        return "+" + self.wa_id


OLIVER = _Person("Oliver Hughes", "447700900123")
PRIYA = _Person("Priya Shah", "447700900456")
EMILY = _Person("Emily Clarke", "447700900789")
YAMADA = _Person("山田 太郎", "819012345678")
SATO = _Person("佐藤 花子", "819023456789")
SUZUKI = _Person("鈴木 一郎", "819034567890")
MARIA = _Person("Maria Alvarez", "12025550143")
JAMES = _Person("James Carter", "13125550187")
PEOPLE = (OLIVER, PRIYA, EMILY, YAMADA, SATO, SUZUKI, MARIA, JAMES)


def _digits(n: int) -> str:
    return str(10 ** (n - 1) + secrets.randbelow(9 * 10 ** (n - 1)))


def _ts(at: datetime) -> str:
    return str(int(at.timestamp()))


class _Steps:
    """A story's clock: each call moves it on by some minutes."""

    def __init__(self, start: datetime) -> None:
        self.at = start

    def __call__(self, minutes: float = 1) -> datetime:
        self.at += timedelta(minutes=minutes)
        return self.at


class _Script:
    """Builds webhook bodies in Meta's shapes for one demo account."""

    def __init__(self, account: DemoAccount, media_base: str) -> None:
        self._account = account
        self._media_base = media_base
        self._payloads: list[tuple[datetime, dict[str, Any]]] = []
        self.files: list[DemoFile] = []

    def payloads(self) -> list[dict[str, Any]]:
        """Every body, in the order of the moments they describe."""
        return [body for _, body in sorted(self._payloads, key=lambda pair: pair[0])]

    def _metadata(self) -> dict[str, str]:
        return {
            "display_phone_number": self._account.business_number,
            "phone_number_id": self._account.phone_number_id,
        }

    def _post(self, at: datetime, field_name: str, value: dict[str, Any]) -> None:
        entry = {"id": self._account.waba_id, "changes": [{"value": value, "field": field_name}]}
        self._payloads.append((at, {"object": "whatsapp_business_account", "entry": [entry]}))

    def media(
        self,
        data: bytes,
        mime_type: str,
        *,
        caption: str | None = None,
        filename: str | None = None,
        voice: bool | None = None,
    ) -> dict[str, Any]:
        """Register a file and return its media object, with a direct ``url``."""
        file = DemoFile(_digits(16), mime_type, data)
        self.files.append(file)
        media: dict[str, Any] = {}
        if caption is not None:
            media["caption"] = caption
        if filename is not None:
            media["filename"] = filename
        media |= {
            "mime_type": mime_type,
            "sha256": file.sha256,
            "id": file.media_id,
            "url": f"{self._media_base}/download/{file.media_id}?mid={file.media_id}",
        }
        if voice is not None:
            media["voice"] = voice
        return media

    def said(
        self, who: _Person, at: datetime, kind: str, body: Any, *, reply_to: str | None = None
    ) -> str:
        """The customer sends a message (field ``messages``); returns its wamid."""
        wamid = meta_wamid(who.wa_id, outbound=False)
        message: dict[str, Any] = {}
        if reply_to is not None:
            message["context"] = {"from": self._account.business_number, "id": reply_to}
        message |= {"from": who.wa_id, "id": wamid, "timestamp": _ts(at), "type": kind, kind: body}
        self._post(
            at,
            "messages",
            {
                "messaging_product": "whatsapp",
                "metadata": self._metadata(),
                "contacts": [{"profile": {"name": who.name}, "wa_id": who.wa_id}],
                "messages": [message],
            },
        )
        return wamid

    def text(self, who: _Person, at: datetime, body: str, *, reply_to: str | None = None) -> str:
        return self.said(who, at, "text", {"body": body}, reply_to=reply_to)

    def react(self, who: _Person, at: datetime, wamid: str, emoji: str) -> str:
        return self.said(who, at, "reaction", {"message_id": wamid, "emoji": emoji})

    def echo(self, who: _Person, at: datetime, kind: str, body: Any) -> str:
        """The business writes from the WhatsApp Business app (``smb_message_echoes``)."""
        wamid = meta_wamid(who.wa_id, outbound=True)
        self._post(
            at,
            "smb_message_echoes",
            {
                "messaging_product": "whatsapp",
                "metadata": self._metadata(),
                "message_echoes": [
                    {
                        "from": self._account.business_number,
                        "to": who.wa_id,
                        "id": wamid,
                        "timestamp": _ts(at),
                        "type": kind,
                        kind: body,
                    }
                ],
            },
        )
        return wamid

    def reply(self, who: _Person, at: datetime, body: str) -> str:
        return self.echo(who, at, "text", {"body": body})

    def edit(self, who: _Person, at: datetime, original: str, body: str, *, echo: bool) -> str:
        edit = {
            "original_message_id": original,
            "message": {"type": "text", "text": {"body": body}},
        }
        return self.echo(who, at, "edit", edit) if echo else self.said(who, at, "edit", edit)

    def revoke(self, who: _Person, at: datetime, original: str) -> str:
        return self.echo(who, at, "revoke", {"original_message_id": original})

    def _status(self, at: datetime, status: dict[str, Any]) -> None:
        value = {
            "messaging_product": "whatsapp",
            "metadata": self._metadata(),
            "statuses": [status],
        }
        self._post(at, "messages", value)

    def delivered(self, who: _Person, steps: list[tuple[str, datetime]], category: str) -> str:
        """A Cloud API message known only by its statuses (``sent`` → ``delivered`` → …)."""
        wamid = meta_wamid(who.wa_id, outbound=True)
        conversation = secrets.token_hex(16)
        for status, at in steps:
            item: dict[str, Any] = {
                "id": wamid,
                "status": status,
                "timestamp": _ts(at),
                "recipient_id": who.wa_id,
            }
            if status in ("sent", "delivered"):
                item["conversation"] = {"id": conversation}
                if status == "sent":
                    item["conversation"]["expiration_timestamp"] = _ts(at + timedelta(hours=24))
                item["conversation"]["origin"] = {"type": category}
                item["pricing"] = {
                    "billable": True,
                    "pricing_model": "PMP",
                    "type": "regular",
                    "category": category,
                }
            self._status(at, item)
        return wamid

    def failed(self, who: _Person, at: datetime, code: int, title: str) -> str:
        wamid = meta_wamid(who.wa_id, outbound=True)
        error = {
            "code": code,
            "title": title,
            "message": title,
            "error_data": {"details": title},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
        }
        self._status(
            at,
            {
                "id": wamid,
                "status": "failed",
                "timestamp": _ts(at),
                "recipient_id": who.wa_id,
                "errors": [error],
            },
        )
        return wamid

    def preference(self, who: _Person, at: datetime, value: str, detail: str) -> None:
        self._post(
            at,
            "user_preferences",
            {
                "messaging_product": "whatsapp",
                "metadata": self._metadata(),
                "contacts": [{"profile": {"name": who.name}, "wa_id": who.wa_id}],
                "user_preferences": [
                    {
                        "wa_id": who.wa_id,
                        "detail": detail,
                        "category": "marketing_messages",
                        "value": value,
                        "timestamp": int(at.timestamp()),
                    }
                ],
            },
        )

    def template_status(
        self, at: datetime, name: str, language: str, category: str, event: str
    ) -> None:
        entry = {
            "id": self._account.waba_id,
            "time": int(at.timestamp()),
            "changes": [
                {
                    "value": {
                        "event": event,
                        "message_template_id": int(_digits(16)),
                        "message_template_name": name,
                        "message_template_language": language,
                        "reason": "NONE",
                        "message_template_category": category,
                    },
                    "field": "message_template_status_update",
                }
            ],
        }
        self._payloads.append((at, {"object": "whatsapp_business_account", "entry": [entry]}))

    def history(
        self,
        at: datetime,
        threads: list[tuple[_Person, list[tuple[bool, datetime, str, str]]]],
    ) -> None:
        """One history-sync chunk; each message is ``(from business, when, text, status)``."""
        business = self._account.business_number
        out_threads = []
        for who, messages in threads:
            items = []
            for from_business, when, body, status in messages:
                item: dict[str, Any] = {"from": business if from_business else who.wa_id}
                if from_business:
                    item["to"] = who.wa_id
                item |= {
                    "id": meta_wamid(who.wa_id, outbound=from_business),
                    "timestamp": _ts(when),
                    "type": "text",
                    "text": {"body": body},
                    "history_context": {"status": status},
                }
                items.append(item)
            out_threads.append({"id": who.wa_id, "messages": items})
        chunk = {
            "metadata": {"phase": 0, "chunk_order": 1, "progress": 100},
            "threads": out_threads,
        }
        value = {"messaging_product": "whatsapp", "metadata": self._metadata(), "history": [chunk]}
        self._post(at, "history", value)


def _history(s: _Script, now: datetime) -> None:
    """Coexistence onboarding: the Business app's recent past, synced once."""
    emily = _Steps(now - timedelta(days=10, hours=2))
    suzuki = _Steps(now - timedelta(days=9, hours=20))
    oliver = _Steps(now - timedelta(days=9, hours=5))
    s.history(
        now - timedelta(days=10, hours=3),
        [
            (
                EMILY,
                [
                    (False, emily(), "Hi, can we move my annual review to next week?", "READ"),
                    (True, emily(6), "Of course, Emily. Would Wednesday at 11:00 suit?", "READ"),
                    (False, emily(9), "Wednesday at 11 is perfect, thank you.", "READ"),
                    (True, emily(2), "Booked. I'll send the agenda beforehand.", "READ"),
                    (False, emily(60 * 20), "Could you add my pension to the agenda?", "READ"),
                    (True, emily(15), "Added. See you on Wednesday.", "DELIVERED"),
                ],
            ),
            (
                SUZUKI,
                [
                    (False, suzuki(), "先月の購入分の領収書を発行していただけますか？", "READ"),
                    (True, suzuki(12), "鈴木様、承知しました。宛名はいかがなさいますか？", "READ"),
                    (False, suzuki(4), "株式会社スズキ商事でお願いします。", "READ"),
                    (True, suzuki(30), "領収書をメールでお送りしました。ご確認ください。", "READ"),
                    (False, suzuki(8), "受け取りました。ありがとうございます。", "READ"),
                ],
            ),
            (
                OLIVER,
                [
                    (False, oliver(), "Is the quarterly valuation out yet?", "READ"),
                    (True, oliver(25), "It is: it went out by post and email today.", "READ"),
                    (False, oliver(3), "Got it, thanks.", "READ"),
                ],
            ),
        ],
    )


def _wealth_client(s: _Script, now: datetime) -> None:
    """A UK wealth-management client moves money into his pension."""
    t = _Steps(now - timedelta(days=8, hours=4))
    s.text(
        OLIVER,
        t(),
        "Good morning. I'd like to move £250,000 from my general investment account into "
        "my SIPP before the end of the tax year. What do you need from me?",
    )
    s.reply(
        OLIVER,
        t(7),
        "Good morning Mr Hughes. We need a signed transfer instruction and a recent GIA "
        "statement. I'm sending the form now.",
    )
    form = s.echo(
        OLIVER,
        t(1),
        "document",
        s.media(
            pdf(["Transfer instruction (DEMO)", "From: General Investment Account", "To: SIPP"]),
            "application/pdf",
            caption="Transfer instruction: please sign page 1",
            filename="transfer_instruction.pdf",
        ),
    )
    s.react(OLIVER, t(3), form, "👍")
    s.said(
        OLIVER,
        t(60 * 5),
        "image",
        s.media(_statement_png(), "image/png", caption="Last month's statement, as requested"),
    )
    s.said(
        OLIVER,
        t(2),
        "document",
        s.media(
            pdf(["Transfer instruction (DEMO)", "Signed: O. Hughes"]),
            "application/pdf",
            caption="Signed form attached",
            filename="transfer_instruction_signed.pdf",
        ),
    )
    typo = s.reply(OLIVER, t(20), "Thank you, both received. The £25,000 transfer goes in today.")
    s.edit(
        OLIVER,
        t(2),
        typo,
        "Thank you, both received. The £250,000 transfer goes in today.",
        echo=True,
    )
    s.text(
        OLIVER,
        t(15),
        "Thanks. Do I lose the tax relief if it settles after 5 April?",
        reply_to=typo,
    )
    answer = s.reply(
        OLIVER,
        t(10),
        "No: relief follows the contribution date, not settlement. We'll confirm on settlement.",
    )
    s.react(OLIVER, t(4), answer, "🙏")
    t(60 * 24 * 4)
    s.delivered(OLIVER, [("sent", t()), ("delivered", t(1)), ("read", t(42))], "utility")
    s.text(OLIVER, t(5), "Saw the notice, has it settled now?")
    s.reply(
        OLIVER, t(9), "Yes, it settled this morning. The confirmation is in your online account."
    )


def _isa_client(s: _Script, now: datetime) -> None:
    """A UK client asks about her ISA allowance and stops marketing messages."""
    t = _Steps(now - timedelta(days=4, hours=6))
    s.text(PRIYA, t(), "Hi, how much of my ISA allowance have I used this tax year?")
    s.reply(PRIYA, t(11), "Hi Priya, you've used £12,400 of your £20,000 allowance.")
    s.text(PRIYA, t(3), "Thanks. Please stop sending me the marketing newsletters.")
    s.preference(PRIYA, t(1), "stop", "User requested to stop marketing messages")
    s.reply(
        PRIYA,
        t(6),
        "Done, no more marketing messages. Service messages about your account will continue.",
    )
    s.failed(
        PRIYA,
        t(60 * 26),
        131050,
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
        "messages on WhatsApp from your business.",
    )


def _retail_order(s: _Script, now: datetime) -> None:
    """山田さん asks, in Japanese, where his order is and how it will be delivered."""
    t = _Steps(now - timedelta(days=5, hours=7))
    s.delivered(YAMADA, [("sent", t()), ("delivered", t(1)), ("read", t(180))], "utility")
    s.text(
        YAMADA,
        t(60 * 5),
        "こんにちは。先週注文した商品（注文番号 JP-20418）がまだ届いていません。"
        "配送状況を教えていただけますか？",
    )
    s.reply(
        YAMADA,
        t(4),
        "山田様、お問い合わせありがとうございます。確認いたしますので少々お待ちください。",
    )
    wrong = s.reply(
        YAMADA, t(9), "ご注文の商品は本日発送いたしました。追跡番号は 4921-7783-1104 です。"
    )
    s.revoke(YAMADA, t(2), wrong)
    right = s.reply(
        YAMADA,
        t(1),
        "失礼いたしました。正しい追跡番号は 4921-7783-1150 です。明日の午前中にお届け予定です。",
    )
    s.text(
        YAMADA,
        t(6),
        "ありがとうございます。明日は不在なので、宅配ボックスに入れてもらえますか？",
        reply_to=right,
    )
    s.said(
        YAMADA,
        t(1),
        "location",
        {
            "address": "東京都渋谷区神南1-2-3",
            "latitude": 35.66404,
            "longitude": 139.69822,
            "name": "グランメゾン渋谷 宅配ボックス",
        },
    )
    done = s.reply(YAMADA, t(8), "承知しました。配送業者に宅配ボックスへの配達を依頼しました。")
    s.react(YAMADA, t(2), done, "🙏")
    t(60 * 22)
    s.said(
        YAMADA,
        t(),
        "image",
        s.media(
            _parcel_png(),
            "image/png",
            caption="届きました！箱が少しへこんでいましたが、中身は無事です。",
        ),
    )
    s.reply(
        YAMADA,
        t(14),
        "ご連絡ありがとうございます。お詫びに次回使える500円クーポンをお送りします。",
    )
    s.text(YAMADA, t(3), "ありがとうございます！また利用します。")


def _exchange(s: _Script, now: datetime) -> None:
    """佐藤さん exchanges a jacket for a larger size."""
    t = _Steps(now - timedelta(days=3, hours=2))
    s.text(SATO, t(), "サイズ交換はできますか？Mサイズを注文しましたが、少し小さかったです。")
    offer = s.reply(
        SATO,
        t(10),
        "佐藤様、お届けから14日以内でしたら無料で交換できます。Lサイズの在庫がございます。",
    )
    s.react(SATO, t(2), offer, "👍")
    s.text(SATO, t(1), "では L サイズでお願いします。")
    s.echo(
        SATO,
        t(12),
        "document",
        s.media(
            pdf(["Return label (DEMO)", "Order JP-20533", "Returns Centre, Tokyo"]),
            "application/pdf",
            caption="返送ラベルです。印刷して箱に貼ってください。",
            filename="return_label_JP-20533.pdf",
        ),
    )
    s.text(SATO, t(30), "印刷しました。明日発送します。")


def _patient(s: _Script, now: datetime) -> None:
    """A US patient reschedules an appointment, partly by voice note."""
    t = _Steps(now - timedelta(days=6, hours=3))
    s.template_status(t(), "appointment_reminder", "en_US", "UTILITY", "APPROVED")
    reminder = s.delivered(
        MARIA, [("sent", t(60 * 20)), ("delivered", t(1)), ("read", t(35))], "utility"
    )
    s.said(
        MARIA,
        t(1),
        "interactive",
        {"type": "button_reply", "button_reply": {"id": "reschedule", "title": "Reschedule"}},
        reply_to=reminder,
    )
    s.reply(
        MARIA,
        t(8),
        "Hi Maria, no problem. Dr. Patel has Tuesday at 9:30 AM or Thursday at 2:15 PM. "
        "Which works better?",
    )
    s.said(MARIA, t(12), "audio", s.media(voice_note(), "audio/ogg; codecs=opus", voice=True))
    s.text(
        MARIA, t(1), "Sorry, driving. Thursday 2:15 works. Should I bring my new insurance card?"
    )
    booked = s.reply(MARIA, t(5), "You're booked for Thursday at 2:15 PM. Yes, card and photo ID.")
    s.react(MARIA, t(1), booked, "❤️")
    s.said(
        MARIA,
        t(60 * 3),
        "image",
        s.media(_card_png(), "image/png", caption="Front of the new card"),
    )
    s.reply(MARIA, t(7), "Thank you, we've updated your file. See you Thursday.")


def _walk_in(s: _Script, now: datetime) -> None:
    """A US patient books a Saturday slot, then edits his own message."""
    t = _Steps(now - timedelta(days=2, hours=5))
    s.text(JAMES, t(), "Hi, do you take walk-ins on Saturday?")
    s.reply(
        JAMES,
        t(6),
        "Hi James, no walk-ins on Saturdays, but Dr. Nguyen has 10:00 AM free. Shall I book it?",
    )
    yes = s.text(JAMES, t(2), "Yes please")
    s.edit(JAMES, t(1), yes, "Yes please, 10:00 is perfect", echo=False)
    booked = s.reply(JAMES, t(3), "Booked: Saturday 10:00 AM with Dr. Nguyen.")
    s.react(JAMES, t(1), booked, "👍")
    s.delivered(JAMES, [("sent", t(60 * 20)), ("delivered", t(1))], "utility")


def _today(s: _Script, now: datetime) -> None:
    """Three customers write within the hour: the outbox answers them (their
    customer service windows are open)."""
    t = _Steps(now - timedelta(minutes=40))
    s.text(OLIVER, t(), "Hello again, has my transfer to the ISA gone through?")
    s.text(PRIYA, t(3), "Could you waive the transfer fee this time?")
    s.text(YAMADA, t(5), "先日はありがとうございました。ポイントはいつ反映されますか？")


def build_demo(account: DemoAccount, now: datetime, media_base: str) -> DemoData:
    """The demo's webhook bodies, timed over the ten days before ``now``, with media
    served under ``media_base``."""
    script = _Script(account, media_base)
    stories = (
        _history,
        _wealth_client,
        _isa_client,
        _retail_order,
        _exchange,
        _patient,
        _walk_in,
        _today,
    )
    for story in stories:
        story(script, now)
    bodies = [
        json.dumps(p, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        for p in script.payloads()
    ]
    items = [item for p in script.payloads() for item in extract(p, now)]
    return DemoData(
        payloads=bodies,
        files=script.files,
        expected_records=len({item.dedupe_key for item in items}),
        expected_media=sum(1 for item in items if item.media is not None),
    )


# -- running it against a server ---------------------------------------------------


def _lost(url: str, exc: httpx.HTTPError) -> DemoError:
    return DemoError(f"lost the connection to {url} ({type(exc).__name__})")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return response.text[:200]


def _check_url(url: str) -> str:
    """``url`` without a trailing slash; refuse anything but an absolute http(s) URL."""
    wrong = DemoError(f"expected an http(s) URL like http://127.0.0.1:8000, got {url!r}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise wrong from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise wrong
    return url.rstrip("/")


async def _check_server(client: httpx.AsyncClient, url: str) -> None:
    try:
        response = await client.get("/readyz")
    except httpx.HTTPError as exc:
        raise DemoError(
            f"cannot reach Strongroom at {url} ({type(exc).__name__}); "
            "is `strongroom serve` (make serve) running there?"
        ) from None
    if response.status_code == 503:
        raise DemoError(f"the server at {url} is not ready: {response.text[:200]}")
    if response.status_code != 200:
        raise DemoError(
            f"{url} does not look like Strongroom (GET /readyz answered {response.status_code})"
        )


async def _register(services: Services, account: DemoAccount) -> str:
    row = await services.accounts.register(
        CLI,
        phone_number_id=account.phone_number_id,
        display_phone_number=account.display_phone_number,
        app_secret=account.app_secret,
        verify_token=account.verify_token,
        access_token=account.access_token,
        waba_id=account.waba_id,
    )
    return row.id


async def _deliver(
    client: httpx.AsyncClient,
    url: str,
    account: DemoAccount,
    payloads: list[bytes],
    out: Callable[[str], None],
) -> None:
    secret = account.app_secret.encode("utf-8")

    async def post(body: bytes) -> httpx.Response:
        signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
        try:
            return await client.post("/webhooks/whatsapp", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _lost(url, exc) from None

    for number, body in enumerate(payloads, start=1):
        response = await post(body)
        if number == 1 and response.status_code == 401:
            out("  waiting for the server to load the new account…")
            deadline = time.monotonic() + SIGNATURE_GRACE_SECONDS
            while response.status_code == 401 and time.monotonic() < deadline:
                await asyncio.sleep(_POLL_SECONDS)
                response = await post(body)
            if response.status_code == 401:
                raise DemoError(
                    f"the server at {url} did not accept the demo account's signature within "
                    f"{SIGNATURE_GRACE_SECONDS:.0f} s; run the demo in the directory where the "
                    "server runs, with the same STRONGROOM_* settings"
                )
        if response.status_code != 200:
            raise DemoError(
                f"the server refused webhook {number}/{len(payloads)} "
                f"(HTTP {response.status_code}): {_error_text(response)}"
            )


async def _wait(
    services: Services,
    account_id: str,
    data: DemoData,
    deadline: float,
    out: Callable[[str], None],
) -> AccountProgress:
    """Poll the database until every item is projected and no media is pending."""
    shown = ""
    told_about_job = False
    while True:
        progress = await services.records.progress(account_id)
        media = progress.media
        failed = f", {media['failed']} failed" if media["failed"] else ""
        line = (
            f"  projected {progress.records}/{data.expected_records} records; "
            f"media {media['fetched']}/{data.expected_media} fetched{failed}"
        )
        if line != shown:
            out(line)
            shown = line
        projected = progress.records >= data.expected_records
        settled = media.total() >= data.expected_media and not media["pending"]
        if projected and not settled and not told_about_job:
            out(f"  waiting for the media fetch job (it runs every {MEDIA_EVERY_SECONDS} s)…")
            told_about_job = True
        left = deadline - time.monotonic()
        if (projected and settled) or left <= 0:
            return progress
        await asyncio.sleep(min(_POLL_SECONDS, left))


@dataclass(frozen=True, slots=True)
class _Officer:
    """The demo's compliance officer and what became of the grant."""

    username: str
    password: str = field(repr=False)
    granted: bool
    outcome: str


async def _officer(
    services: Services,
    account_id: str,
    role: Role = Role.COMPLIANCE_OFFICER,
    prefix: str = "demo-officer",
) -> _Officer:
    """A new user with a random password and ``role`` (``compliance_officer``) on
    the demo account: granted at once, or (once an admin exists) pending an admin's
    approval."""
    password = secrets.token_urlsafe(18)
    for _ in range(3):
        username = f"{prefix}-{secrets.token_hex(2)}"
        try:
            user, result = await services.grants.add_user_as_operator(
                CLI, username, password, role, account_id
            )
            break
        except IdentityConflict:
            continue  # a previous run drew the same suffix
    else:
        raise DemoError(f"could not find a free {prefix}-#### user name")
    assert result is not None  # a role was asked for
    outcome = granted_text(result, role, account_id, user.username)
    granted = isinstance(result, Grant)
    return _Officer(username, password, granted, outcome)


# -- the outbox: the demo's replies go out through the policy to the fake Graph API ----

# Lexicon terms the demo adds (global, like any lexicon change): one blocks, one holds.
BLOCK_TERM = "guaranteed returns"
HOLD_TERM = "fee waiver"
# A state an item stays in (``delivered`` still becomes ``read``).
SETTLED = frozenset({"read", "failed", "blocked", "rejected", "expired", "cancelled"})
# Meta's "message undeliverable": what the fake reports for the Japanese reply.
UNDELIVERABLE = 131026


@dataclass(frozen=True, slots=True)
class _Outbound:
    label: str
    person: _Person
    text: str


def _outbound_script(ref: str) -> list[_Outbound]:
    """The demo's replies; ``ref`` keeps each run's texts its own (the same text to the
    same customer again soon would be held as a duplicate)."""
    return [
        _Outbound(
            "answer", OLIVER, f"Yes, Oliver: your ISA transfer arrived this morning ({ref})."
        ),
        _Outbound(
            "blocked",
            OLIVER,
            f"Our new fund offers {BLOCK_TERM} of 9% a year, shall I sign you up? ({ref})",
        ),
        _Outbound(
            "held",
            PRIYA,
            f"Hi Priya, I have asked for a {HOLD_TERM} on this transfer ({ref}).",
        ),
        _Outbound(
            "failing",
            YAMADA,
            f"山田様、ポイントは明日までに反映されます。（{ref}）",
        ),
    ]


def sandbox_port(graph_base_url: str) -> int | None:
    """The loopback port the server sends to Graph at, when it is the sandbox's
    (``STRONGROOM_GRAPH_BASE_URL=http://127.0.0.1:PORT``); else ``None``."""
    url = httpx.URL(graph_base_url)
    if url.host not in ("127.0.0.1", "localhost") or url.port is None:
        return None
    return url.port


async def _add_terms(services: Services) -> None:
    for term, action in ((BLOCK_TERM, "block"), (HOLD_TERM, "hold")):
        with contextlib.suppress(DuplicateTerm):  # an earlier run added it
            await services.lexicon.add(CLI, term, action)


async def _send_outbound(
    services: Services,
    account: DemoAccount,
    account_id: str,
    fake: FakeMedia,
    base: str,
    deadline: float,
    out: Callable[[str], None],
) -> list[tuple[_Outbound, ItemView]] | None:
    """Send the demo's replies through the outbox: the server's dispatcher posts
    them to ``fake``, whose signed status webhooks come back to ``base``. Wait until
    each item settles (or ``deadline``); ``None`` when the roles wait for an admin."""
    agent = await _officer(services, account_id, Role.AGENT, "demo-agent")
    supervisor = await _officer(services, account_id, Role.SUPERVISOR, "demo-supervisor")
    if not (agent.granted and supervisor.granted):
        out("outbox    skipped: the demo agent's and supervisor's roles wait for an admin")
        return None
    await _add_terms(services)
    fake.configure_webhook(
        f"{base}/webhooks/whatsapp",
        account.app_secret,
        {account.phone_number_id: account.business_number},
        waba_id=account.waba_id,
    )
    fake.fail_delivery(UNDELIVERABLE, to=YAMADA.wa_id, phone_number_id=account.phone_number_id)
    fake.start_delivery()
    try:
        agent_id = await services.identity.user_id_of(agent.username)
        supervisor_id = await services.identity.user_id_of(supervisor.username)
        ref = secrets.token_hex(3)
        items = []
        for outbound in _outbound_script(ref):
            request = SendRequest(
                account_id=account_id,
                to=outbound.person.e164,
                content=MessageContent(kind=ContentKind.TEXT, text=outbound.text),
                idempotency_key=f"demo-{outbound.label}-{ref}",
                source=Source.API,
            )
            view = await services.outbox.submit(CLI, agent_id, request)
            out(f"  outbox {outbound.label}: {view.state}")
            if view.state == "held":
                view = await services.outbox.approve(
                    CLI, supervisor_id, view.id, "Fee waiver agreed by the branch (demo)"
                )
                out(f"  outbox {outbound.label}: {view.state} by {supervisor.username}")
            items.append((outbound, view))
        while True:
            items = [(o, await services.outbox.get(None, v.id)) for o, v in items]
            left = deadline - time.monotonic()
            if all(v.state in SETTLED for _, v in items) or left <= 0:
                return items
            await asyncio.sleep(min(_POLL_SECONDS, left))
    finally:
        fake.stop_delivery()


def _outbound_lines(items: list[tuple[_Outbound, ItemView]]) -> list[str]:
    lines = []
    for outbound, view in items:
        why = ""
        if view.error_code is not None:
            why = f" (Graph error {view.error_code})"
        elif view.state == "blocked" and view.decision:
            codes = sorted({r["code"] for r in view.decision.get("reasons", [])})
            why = f" ({', '.join(codes)})"
        approved = " after approval" if view.approved_by else ""
        lines.append(
            f"outbox    {view.id}  {outbound.label:<8} to {outbound.person.name}: "
            f"{view.state}{approved}{why}"
        )
    return lines


def strongroom_command(executable: str = sys.executable, cwd: str | None = None) -> str:
    """This installation's ``strongroom``, as a shell in ``cwd`` (default: here) runs
    it with no virtual environment active: the console script beside ``executable``
    (``.venv/bin/strongroom`` from the repository root), else ``executable -m api.cli.main``."""
    script = Path(executable).with_name("strongroom")
    if not script.is_file():
        return f"{shlex.quote(executable)} -m api.cli.main"
    here = os.path.abspath(cwd if cwd is not None else os.getcwd())
    relative = os.path.relpath(script, here)
    # A path below here reads best; one that climbs out is clearer absolute.
    shown = str(script) if relative.startswith("..") else relative
    if os.sep not in shown:
        shown = f".{os.sep}{shown}"  # else the shell would look it up on PATH
    return shlex.quote(shown)


async def run_demo(
    services: Services, url: str, *, wait_seconds: float, out: Callable[[str], None]
) -> None:
    """Populate the archive served at ``url`` with the demo; report through ``out``.

    ``services`` must be opened on the server's own data (same directory and
    settings). Raises ``DemoError`` (one line) when the server is unreachable or
    refuses a delivery, and when projection and media fetch have not finished
    within ``wait_seconds`` of the start (after printing what did arrive).
    """
    started = time.monotonic()
    base = _check_url(url)
    async with httpx.AsyncClient(base_url=base, timeout=15.0) as client:
        await _check_server(client, base)
        account = DemoAccount.generate()
        account_id = await _register(services, account)
        out(
            f"registered demo account {account_id} ({account.display_phone_number}, "
            f"phone_number_id {account.phone_number_id}) with fresh secrets"
        )
        media = FakeMedia(account.access_token)
        port = sandbox_port(services.settings.graph_base_url)
        with contextlib.ExitStack() as stack:
            try:
                media_base = stack.enter_context(running_fake_graph(media, port=port or 0))
            except OSError as exc:
                raise DemoError(
                    f"cannot serve the sandbox's Graph API at {services.settings.graph_base_url} "
                    f"({exc.strerror}); is another demo running?"
                ) from None
            data = build_demo(account, services.clock.now(), media_base)
            for file in data.files:
                media.add(file.media_id, file.data, file.mime_type)
            out(f"serving {len(data.files)} media files at {media_base}")
            await _deliver(client, base, account, data.payloads, out)
            out(
                f"delivered {len(data.payloads)} signed webhooks "
                f"({data.expected_records} items) to {base}/webhooks/whatsapp"
            )
            progress = await _wait(services, account_id, data, started + wait_seconds, out)
            downloads = sum(media.download_requests.values())
            outbound = None
            if port is None:
                out(
                    "outbox    skipped: the server sends to "
                    f"{services.settings.graph_base_url}; start it and the demo with "
                    "STRONGROOM_GRAPH_BASE_URL=http://127.0.0.1:PORT to send through the sandbox"
                )
            else:
                outbound = await _send_outbound(
                    services, account, account_id, media, base, started + wait_seconds, out
                )
    seconds = round(time.monotonic() - started, 1)
    complete = (
        progress.records >= data.expected_records
        and progress.media["fetched"] >= data.expected_media
    )
    out(f"done in {seconds} s" if complete else f"stopped waiting after {seconds} s")
    out(f"account   {account_id}  {account.display_phone_number}")
    by_kind = ", ".join(f"{n} {kind}" for kind, n in sorted(progress.kinds.items()))
    out(f"records   {progress.records} of {data.expected_records}: {by_kind}")
    states = ", ".join(f"{n} {state}" for state, n in sorted(progress.media.items()))
    out(f"media     {states or 'none yet'} (of {data.expected_media})")
    for problem in progress.problems:
        out(f"  media problem: {problem}")
    for line in _outbound_lines(outbound or []):
        out(line)
    unsettled = [v.id for _, v in outbound or [] if v.state not in SETTLED]

    officer = await _officer(services, account_id)
    contacts = await services.records.contacts_of(YAMADA.e164)
    contact = next(iter(contacts), None) if contacts else None
    out("")
    out(officer.outcome)
    if not officer.granted:
        out(f"  until an admin approves it, {officer.username} can sign in but reads nothing")
    out(f"sign in to the console at {base}/login")
    out(f"  username  {officer.username}")
    out(f"  password  {officer.password}  (shown only this once)")
    after = "" if officer.granted else " after the approval"
    out(f"  the first sign-in{after} enrols an authenticator app (TOTP): have one at hand")
    once = "" if officer.granted else ", once the grant is approved,"
    out(f"or{once} read the archive over HTTP with an API token of that user:")
    strongroom = strongroom_command()
    out(f"  TOKEN=$({strongroom} tokens create {officer.username} --scope archive.read)")
    auth = '-H "Authorization: Bearer $TOKEN"'
    out(f'  curl -s {auth} "{base}/api/v1/accounts/{account_id}/records?limit=100"')
    if contact is not None:
        out(
            f'  curl -s {auth} "{base}/api/v1/contacts/{contact}/messages'
            f'?account_id={account_id}"  # 山田さん, in Japanese'
        )

    if complete and unsettled:
        raise DemoError(
            f"stopped waiting after {seconds} s with outbox items {', '.join(unsettled)} "
            "not yet settled"
        )
    if not complete:
        why = f"; {progress.problems[0]}" if progress.problems else ""
        if progress.media["fetched"] < data.expected_media and not downloads:
            why = "; the server never downloaded from the demo's media host"
        raise DemoError(
            f"stopped waiting after {seconds} s with {progress.records}/{data.expected_records} "
            f"records and {progress.media['fetched']}/{data.expected_media} media fetched{why}"
        )
