"""Parse WhatsApp "Export chat" files into messages, with no I/O of its own.

A user exports a chat from the phone as a ``.txt`` file, or as a ``.zip``
holding that text (``_chat.txt`` from iOS, ``WhatsApp Chat with X.txt`` from
Android, with the name localised) next to the media files.
:func:`parse_chat_export` turns those bytes into :class:`ExportedMessage`
objects and keeps each message's exact source lines (``raw``) for sealing.

Written by hand because no library parses these exports well enough for an
archive: the Python ones (whatstk, which is GPL-3.0; chat-miner;
whatsapp-chat-analyzer) build data frames for analytics, drop the source lines
and their line numbers, do not report the lines they could not read, know the
media and deletion notices of one or two languages, and do not read the zip
defensively.

Formats read
------------
Android, ``<date>, <time> - <sender>: <text>``::

    12/31/23, 9:05 PM - Ana: text        (US; U+202F before PM on newer phones)
    31/12/2023, 21:05 - Ana: text        (UK and most of the world)
    31.12.23, 21:05 - Ana: text          (German)
    31/12/23, 9:05 p. m. - Ana: text     (Spanish)
    31/12/2023 21:05 - Ana: text         (Portuguese: no comma)
    31/12/2023 à 21:05 - Ana: text       (French)
    2023/12/31 21:05 - 名前: テキスト      (Japanese; also 午前/午後 before the time)

iOS, ``[<date>, <time>] <sender>: <text>``, the line often led by U+200E::

    [31/12/2023, 21:05:12] Ana: text
    [12/31/23, 9:05:12 PM] Ana: text
    [31.12.23, 21:05:12] Ana: text

Dates use ``/``, ``.`` or ``-`` with 2- or 4-digit years (2-digit years are
20xx); times have 12- or 24-hour clocks, with or without seconds. A line
without a timestamp continues the message before it. A header with no
``sender: `` part is a system notice (``sender`` is None), and so is an
Android header whose would-be sender holds a quotation mark (a subject change
quoting a subject with a colon in it) and an iOS message whose text starts
with U+200E and is none of the notices below (iOS prints group notices under
the group's name; that name stays in ``raw``).

Day or month first
------------------
Decided once per file: a date whose first field only fits as a day (over 12)
is evidence for DMY, one whose second field only fits as a day for MDY, and
the side with more evidence wins (dates that fit only the losing side are
reported as impossible). With no evidence at all (every day in the
file is 12 or less) the order is :data:`DEFAULT_DATE_ORDER`, DMY because most
of WhatsApp's locales write the day first, and the result says
``date_order_guessed=True`` so the caller can ask the user (and pass
``date_order``). Year-first dates are always read as YMD.

Localised notices
-----------------
Covered in English, German, Spanish, French, Portuguese, Japanese and Italian
(iOS per-type placeholders: English, German, Spanish, French), gathered from
public exports; notices in other languages come through as ordinary text, with
``raw`` untouched. See :data:`MEDIA_OMITTED_NOTICES`,
:data:`DELETED_NOTICES`, :data:`EDITED_MARKERS`, :data:`IOS_ATTACHMENT_LABELS`
and :data:`ANDROID_ATTACHMENT_LABELS`. An attachment line whose file has
WhatsApp's own naming (``IMG-20240105-WA0001.jpg``,
``00000012-PHOTO-2024-01-05-10-00-00.jpg``) is recognised whatever its label.

Limits
------
* The format has no escaping: a continuation line that is itself a well-formed
  header starts a new message, and one that looks like a damaged header (a
  date, a time-like token and `` - `` or a bracketed date) is reported as a
  problem. Nothing can tell either apart from the real thing.
* ``text`` drops U+200E/U+200F and the bidi embedding and isolate controls,
  and turns U+00A0/U+202F into plain spaces; ``raw`` keeps every byte.
* A sender name holding ``": "`` is cut at its first ``": "``.
* iOS notices tied to a person but led by U+200E that are not listed here
  (``Missed voice call``) become system lines; the name is only in ``raw``.
* An attachment is recognised only on a message's first line.
* Digits must be ASCII; exports written with other digits (some Arabic
  locales) are not read.
"""

from __future__ import annotations

import io
import lzma
import re
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import PurePosixPath
from typing import Literal

from archiver.errors import ArchiverError

MessageKind = Literal["text", "media", "media_omitted", "system", "deleted"]
DateOrder = Literal["DMY", "MDY", "YMD"]
DayMonthOrder = Literal["DMY", "MDY"]
Platform = Literal["android", "ios"]

DEFAULT_DATE_ORDER: DayMonthOrder = "DMY"
"""How a file whose dates are all ambiguous (days 1 to 12 only) is read."""

MAX_ZIP_TOTAL_BYTES = 2 * 1024**3
"""Refuse a zip whose members add up to more than this, uncompressed."""

MAX_ZIP_MEMBER_BYTES = 1024**3
"""Refuse a zip with any member larger than this, uncompressed."""

MAX_ZIP_MEMBERS = 100_000
"""Refuse a zip with more entries than this."""

MEDIA_OMITTED_NOTICES = (
    "<Media omitted>",
    "<Medien ausgeschlossen>",
    "<Multimedia omitido>",
    "<Médias omis>",
    "<Mídia oculta>",
    "<Arquivo de mídia oculto>",
    "<メディアなし>",
    "<Media omessi>",
)
"""Android's whole-message stand-ins for media left out of an export."""

_IOS_PLACEHOLDERS = (
    r"(?:image|video|audio|sticker|GIF|Contact card) omitted",
    r"(?:Bild|Video|Audio|Sticker|GIF) weggelassen",
    r"(?:imagen omitida|video omitido|audio omitido|sticker omitido|GIF omitido)",
    r"(?:image absente|vidéo absente|audio omis|sticker omis|GIF retiré)",
)
# iOS names the left-out document first: "Report.pdf • 3 pages document omitted".
_IOS_DOCUMENT_PLACEHOLDER = (
    r".+\.\w{1,5}(?:\s•\s.*?)?\s"
    r"(?:document omitted|Dokument weggelassen|documento omitido|document omis)"
)

DELETED_NOTICES = frozenset(
    {
        "this message was deleted",
        "you deleted this message",
        "diese nachricht wurde gelöscht",
        "du hast diese nachricht gelöscht",
        "se eliminó este mensaje",
        "eliminaste este mensaje",
        "este mensaje fue eliminado",
        "ce message a été supprimé",
        "vous avez supprimé ce message",
        "esta mensagem foi apagada",
        "você apagou esta mensagem",
        "mensagem apagada",
        "このメッセージは削除されました",
        "このメッセージを削除しました",
        "questo messaggio è stato eliminato",
        "hai eliminato questo messaggio",
    }
)
"""Whole-message notices of a deleted message, casefolded, final stop removed."""

EDITED_MARKERS = (
    "This message was edited",
    "Diese Nachricht wurde bearbeitet",
    "Se editó este mensaje",
    "Ce message a été modifié",
    "Mensagem editada",
    "このメッセージは編集されました",
    "Questo messaggio è stato modificato",
)
"""Text of the ``<…>`` suffix that marks an edited message."""

IOS_ATTACHMENT_LABELS = frozenset(
    {
        "attached",
        "anhang",
        "adjunto",
        "archivo adjunto",
        "pièce jointe",
        "anexado",
        "anexo",
        "添付ファイル",
        "allegato",
    }
)
"""Labels of iOS ``<label: file>`` attachment lines, casefolded."""

ANDROID_ATTACHMENT_LABELS = frozenset(
    {
        "file attached",
        "datei angehängt",
        "archivo adjunto",
        "fichier joint",
        "arquivo anexado",
        "ファイル添付",
        "file allegato",
    }
)
"""Labels of Android ``file (label)`` attachment lines, casefolded."""

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_PROBLEMS_SHOWN = 10

_DATE = r"(?P<date>(?P<d1>[0-9]{1,4})(?P<sep>[./-])(?P<d2>[0-9]{1,2})(?P=sep)(?P<d3>[0-9]{1,4})\.?)"
_TIME = (
    r"(?P<time>(?P<jp>午前|午後)?(?P<hh>[0-9]{1,2})[:.](?P<mm>[0-9]{2})(?:[:.](?P<ss>[0-9]{2}))?"
    r"(?:\s?(?P<ampm>[AaPp]\.?\s?[Mm]\.?))?)"
)
_DATE_TIME_GAP = r"(?:,\s?|\s(?:à\s)?)"
_STRICT = {
    "android": re.compile(_DATE + _DATE_TIME_GAP + _TIME + r" [-\u2013] (?P<body>.*)", re.DOTALL),
    "ios": re.compile(r"\[" + _DATE + _DATE_TIME_GAP + _TIME + r"\]\s?(?P<body>.*)", re.DOTALL),
}
# Shapes that can only be a header gone wrong; matched when _STRICT fails.
_LOOSE_DATE = r"[0-9]{1,4}[./-][0-9]{1,2}[./-][0-9]{1,4}"
_LOOSE = {
    "android": re.compile(
        _LOOSE_DATE + r"\.?(?:,\s?|\s)\S*[0-9][:.]\S*[^-\u2013]{0,12}? [-\u2013] "
    ),
    "ios": re.compile(r"\[" + _LOOSE_DATE + r"[^\]]{0,30}\]"),
}

_MARKS = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
_ODD_SPACES = "\u00a0\u202f\u2007\u2009"
_VIEW = str.maketrans(dict.fromkeys(_ODD_SPACES, " "))
_CLEAN = str.maketrans({**dict.fromkeys(_ODD_SPACES, " "), **dict.fromkeys(_MARKS, None)})
_LRM = "\u200e"
_QUOTES = frozenset('"“”„«»「」『』')

_EDITED = re.compile(
    r"\s*<(?:" + "|".join(map(re.escape, EDITED_MARKERS)) + r")\.?>\Z", re.IGNORECASE
)
_OMITTED = re.compile(
    "|".join(
        [*map(re.escape, MEDIA_OMITTED_NOTICES), *_IOS_PLACEHOLDERS, _IOS_DOCUMENT_PLACEHOLDER]
    ),
    re.IGNORECASE,
)
_IOS_ATTACHMENT = re.compile(r"<(?P<label>[^<>:\uff1a]{1,40}?)\s?[:\uff1a]\s?(?P<name>[^<>]+)>")
_ANDROID_ATTACHMENT = re.compile(
    r"(?P<name>.+?)\s?[(\uff08](?P<label>[^()\uff08\uff09]{1,40})[)\uff09]"
)
# WhatsApp's own media file names, recognised whatever the label's language.
_IOS_MEDIA_NAME = re.compile(r"[0-9]{8}-[A-Z]+-[0-9]{4}(?:-[0-9]{2}){5}\.\w+")
_ANDROID_MEDIA_NAME = re.compile(r"(?:IMG|VID|AUD|PTT|STK|DOC)-[0-9]{8}-WA[0-9]{4,}\.\w+")


@dataclass(frozen=True, slots=True)
class ParseProblem:
    """A line that could not be read, and why."""

    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_number}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ExportedMessage:
    """One message or system notice of an export.

    ``kind`` is ``text``, ``media`` (``attachment`` names the file),
    ``media_omitted`` (exported without media), ``system`` (``sender`` is
    None) or ``deleted``. ``sent_at`` is naive local time: the export carries no zone. ``text`` is
    the cleaned, multi-line body without an edited marker (that is
    ``edited``); ``raw`` is the message's source lines exactly as exported,
    line breaks included.
    """

    line_number: int
    sent_at: datetime
    sender: str | None
    text: str
    kind: MessageKind
    raw: str
    attachment: str | None = None
    edited: bool = False


@dataclass(frozen=True, slots=True)
class ParsedExport:
    """What :func:`parse_chat_export` read from one export.

    ``media`` holds the zip's other files by base name (empty for a ``.txt``);
    ``errors`` the unreadable lines (only with ``partial=True``);
    ``date_order_guessed`` says no date showed whether the day or the month
    comes first, so ``date_order`` is :data:`DEFAULT_DATE_ORDER`.
    """

    messages: list[ExportedMessage]
    media: dict[str, bytes]
    errors: list[ParseProblem]
    date_order: DateOrder
    platform: Platform
    date_order_guessed: bool = False


class ChatExportError(ArchiverError):
    """The export cannot be read, or has lines that cannot be (see ``problems``)."""

    def __init__(self, message: str, problems: Sequence[ParseProblem] = ()) -> None:
        self.problems = tuple(problems)
        if self.problems:
            listed = "; ".join(str(p) for p in self.problems[:_PROBLEMS_SHOWN])
            more = len(self.problems) - _PROBLEMS_SHOWN
            message = f"{message}: {listed}" + (f" (and {more} more)" if more > 0 else "")
        super().__init__(message)


def parse_chat_export(
    data: bytes,
    filename: str,
    *,
    partial: bool = False,
    date_order: DayMonthOrder | None = None,
) -> ParsedExport:
    """Parse the bytes of an exported ``.txt`` or ``.zip`` (told apart by content).

    Lines that cannot be read raise :class:`ChatExportError` listing them,
    unless ``partial`` is true: then the readable messages come back with the
    problems in ``errors``. An unreadable file (not UTF-8, empty, a zip that is
    damaged, unsafe, too large or without a chat) always raises.
    ``date_order`` overrides the inferred order of day-first and month-first
    dates.
    """
    if data[:4] in _ZIP_MAGICS:
        chat_name, chat_bytes, media = _read_zip(data, filename)
    elif filename.lower().endswith(".zip"):
        raise ChatExportError(f"{filename} is named .zip but is not a zip archive")
    else:
        chat_name, chat_bytes, media = filename, data, {}

    lines, breaks = _split_lines(_decode(chat_bytes, chat_name))
    views = [line.lstrip(_MARKS).translate(_VIEW) for line in lines]
    platform = _detect_platform(views, chat_name)
    strict, loose = _STRICT[platform], _LOOSE[platform]
    headers = {i: m for i, view in enumerate(views) if (m := strict.match(view))}
    day_month, guessed = _day_month_order(headers.values(), date_order)
    year_first = sum(len(m["d1"]) == 4 for m in headers.values())

    messages: list[ExportedMessage] = []
    problems: list[ParseProblem] = []
    draft: _Draft | None = None
    after_bad_header = False
    for i, (line, view) in enumerate(zip(lines, views, strict=True)):
        number = i + 1
        header = headers.get(i)
        if header is None and not loose.match(view):
            if draft is not None:
                draft.lines.append(line)
                draft.breaks.append(breaks[i])
            elif not line.translate(_CLEAN).strip():
                continue
            elif after_bad_header:
                problems.append(
                    ParseProblem(number, "continues a message whose header is unreadable")
                )
            else:
                problems.append(
                    ParseProblem(number, "not a message header, and no message precedes it")
                )
            continue

        if draft is not None:
            messages.append(draft.finish(platform))
            draft = None
        reason = None
        if header is None:
            reason = f"timestamp header with an unreadable date or time: {view[:40]!r}"
        else:
            try:
                draft = _Draft(
                    number, _timestamp(header, day_month), header["body"], [line], [breaks[i]]
                )
            except _BadHeader as exc:
                reason = str(exc)
        after_bad_header = reason is not None
        if reason is not None:
            problems.append(ParseProblem(number, reason))
    if draft is not None:
        messages.append(draft.finish(platform))

    if problems and not partial:
        raise ChatExportError(f"{chat_name} has lines that cannot be parsed", problems)
    return ParsedExport(
        messages=messages,
        media=media,
        errors=problems,
        date_order="YMD" if year_first * 2 > len(headers) else day_month,
        platform=platform,
        date_order_guessed=guessed and year_first < len(headers),
    )


class _BadHeader(ValueError):
    """A header line whose date or time is impossible."""


@dataclass(slots=True)
class _Draft:
    line_number: int
    sent_at: datetime
    body: str
    lines: list[str]
    breaks: list[str]

    def finish(self, platform: Platform) -> ExportedMessage:
        lines, breaks = self.lines, self.breaks
        # WhatsApp trims messages, so trailing blank lines are padding, not text.
        while len(lines) > 1 and not lines[-1].translate(_CLEAN).strip():
            lines, breaks = lines[:-1], breaks[:-1]
        raw = "".join(line + brk for line, brk in zip(lines, breaks, strict=True))
        raw = raw[: len(raw) - len(breaks[-1])]

        head, colon, first = self.body.partition(": ")
        sender = _clean_sender(head) if colon else None
        if not sender or _QUOTES.intersection(sender):
            text = "\n".join(part.translate(_CLEAN) for part in [self.body, *lines[1:]])
            return ExportedMessage(self.line_number, self.sent_at, None, text, "system", raw)

        text = "\n".join(part.translate(_CLEAN) for part in [first, *lines[1:]])
        edited = _EDITED.search(text)
        if edited:
            text = text[: edited.start()]
        kind, attachment = _classify(text)
        if kind == "text" and platform == "ios" and first.startswith(_LRM):
            return ExportedMessage(self.line_number, self.sent_at, None, text, "system", raw)
        return ExportedMessage(
            self.line_number, self.sent_at, sender, text, kind, raw, attachment, bool(edited)
        )


def _classify(text: str) -> tuple[MessageKind, str | None]:
    whole = text.strip()
    if whole.casefold().rstrip(".。") in DELETED_NOTICES:
        return "deleted", None
    first_line = whole.partition("\n")[0].strip()
    attachment = _attachment_name(first_line)
    if attachment is not None:
        return "media", attachment
    if _OMITTED.fullmatch(whole):
        return "media_omitted", None
    return "text", None


def _attachment_name(line: str) -> str | None:
    ios = _IOS_ATTACHMENT.fullmatch(line)
    if ios:
        name = ios["name"].strip()
        if ios["label"].strip().casefold() in IOS_ATTACHMENT_LABELS or _IOS_MEDIA_NAME.fullmatch(
            name
        ):
            return name
    android = _ANDROID_ATTACHMENT.fullmatch(line)
    if android:
        name = android["name"].strip()
        label = android["label"].strip().casefold()
        if label in ANDROID_ATTACHMENT_LABELS or _ANDROID_MEDIA_NAME.fullmatch(name):
            return name
    return None


def _clean_sender(head: str) -> str:
    # Phone numbers come with U+2011 non-breaking hyphens; plain ones match contacts.
    return head.translate(_CLEAN).replace("\u2011", "-").strip()


def _timestamp(header: re.Match[str], day_month: DayMonthOrder) -> datetime:
    d1, d2, d3 = header["d1"], header["d2"], header["d3"]
    if len(d1) == 4:
        year, month, day = int(d1), int(d2), int(d3)
    elif len(d1) <= 2 and len(d3) in (2, 4):
        year = int(d3) + (2000 if len(d3) == 2 else 0)
        day, month = (int(d1), int(d2)) if day_month == "DMY" else (int(d2), int(d1))
    else:
        raise _BadHeader(f"unreadable date {header['date']!r}")
    try:
        on = date(year, month, day)
    except ValueError:
        raise _BadHeader(f"impossible date {header['date']!r} (read as {day_month})") from None

    hour, minute, second = int(header["hh"]), int(header["mm"]), int(header["ss"] or 0)
    meridiem = header["ampm"] or header["jp"]
    if meridiem:
        # Japanese clocks may say 午前0:05; Western ones run 12, 1, … 11.
        lowest = 0 if header["jp"] else 1
        if not lowest <= hour <= 12:
            raise _BadHeader(f"impossible 12-hour time {header['time']!r}")
        afternoon = meridiem == "午後" or meridiem.strip(". ").lower().startswith("p")
        hour = hour % 12 + (12 if afternoon else 0)
    try:
        return datetime.combine(on, time(hour, minute, second))
    except ValueError:
        raise _BadHeader(f"impossible time {header['time']!r}") from None


def _day_month_order(
    headers: Iterable[re.Match[str]], forced: DayMonthOrder | None
) -> tuple[DayMonthOrder, bool]:
    if forced is not None:
        if forced not in ("DMY", "MDY"):
            raise ValueError(f"date_order must be 'DMY' or 'MDY', not {forced!r}")
        return forced, False
    day_first = month_first = 0
    for m in headers:
        if len(m["d1"]) == 4 or len(m["d3"]) not in (2, 4):
            continue
        year, first, second = _year(m["d3"]), int(m["d1"]), int(m["d2"])
        as_dmy, as_mdy = _is_date(year, second, first), _is_date(year, first, second)
        day_first += as_dmy and not as_mdy
        month_first += as_mdy and not as_dmy
    if day_first == month_first:
        return DEFAULT_DATE_ORDER, True
    return ("DMY" if day_first > month_first else "MDY"), False


def _year(digits: str) -> int:
    return int(digits) + (2000 if len(digits) == 2 else 0)


def _is_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def _detect_platform(views: Sequence[str], name: str) -> Platform:
    android = sum(bool(_STRICT["android"].match(v) or _LOOSE["android"].match(v)) for v in views)
    ios = sum(bool(_STRICT["ios"].match(v) or _LOOSE["ios"].match(v)) for v in views)
    if not android and not ios:
        raise ChatExportError(f"{name} has no WhatsApp message header; is it a chat export?")
    return "ios" if ios > android else "android"


def _decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ChatExportError(
            f"{name} is not UTF-8 text (invalid byte at offset {exc.start})"
        ) from None
    if not text.translate(_CLEAN).strip():
        raise ChatExportError(f"{name} is empty")
    return text


def _split_lines(text: str) -> tuple[list[str], list[str]]:
    """Split into lines and the exact line break after each ("" after the last)."""
    parts = re.split(r"(\r\n|\n|\r)", text)
    lines, breaks = parts[0::2], [*parts[1::2], ""]
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
        breaks.pop()
    return lines, breaks


# What zipfile and its decompressors raise on damaged or hostile input.
_ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,
    ValueError,
)


def _read_zip(data: bytes, filename: str) -> tuple[str, bytes, dict[str, bytes]]:
    """Return the chat's member name and bytes, and every other file by name."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = _checked_members(archive, filename)
            chat = _chat_member(members, filename)
            # ZipExtFile stops at the declared size and checks the CRC, so the
            # size checks above also bound what these reads return.
            files = {PurePosixPath(m.filename).name: archive.read(m) for m in members}
    except _ZIP_READ_ERRORS as exc:
        raise ChatExportError(f"{filename} is not a readable zip archive: {exc}") from None
    chat_name = PurePosixPath(chat.filename).name
    return f"{filename}:{chat.filename}", files.pop(chat_name), files


def _checked_members(archive: zipfile.ZipFile, filename: str) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise ChatExportError(f"{filename} has more than {MAX_ZIP_MEMBERS} entries")
    members: list[zipfile.ZipInfo] = []
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if (
            name.startswith("/")
            or "\\" in name
            or "\0" in name
            or re.match(r"[A-Za-z]:", name)
            or ".." in parts
        ):
            raise ChatExportError(f"{filename} has an unsafe member name {name!r}")
        if info.is_dir() or parts[0] == "__MACOSX":
            continue
        if info.flag_bits & 0x1:
            raise ChatExportError(f"{filename} has an encrypted member {name!r}")
        if info.file_size > MAX_ZIP_MEMBER_BYTES:
            raise ChatExportError(
                f"{filename} member {name!r} is larger than {MAX_ZIP_MEMBER_BYTES} bytes"
            )
        total += info.file_size
        if total > MAX_ZIP_TOTAL_BYTES:
            raise ChatExportError(f"{filename} holds more than {MAX_ZIP_TOTAL_BYTES} bytes")
        base = PurePosixPath(name).name
        if base in seen:
            raise ChatExportError(f"{filename} has two files named {base!r}")
        seen.add(base)
        members.append(info)
    return members


def _chat_member(members: Sequence[zipfile.ZipInfo], filename: str) -> zipfile.ZipInfo:
    texts = [m for m in members if m.filename.lower().endswith(".txt")]
    for candidates in (
        [m for m in texts if PurePosixPath(m.filename).name == "_chat.txt"],
        [m for m in texts if "whatsapp" in PurePosixPath(m.filename).name.lower()],
        texts,
    ):
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            names = ", ".join(sorted(m.filename for m in candidates))
            raise ChatExportError(f"{filename} holds several possible chat files: {names}")
    raise ChatExportError(f"{filename} holds no chat .txt file")
