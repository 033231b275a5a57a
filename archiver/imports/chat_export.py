"""Parse WhatsApp "Export chat" files into messages, reading only the file given.

A user exports a chat from the phone as a ``.txt`` file, or as a ``.zip``
holding that text (``_chat.txt`` from iOS, ``WhatsApp Chat with X.txt`` from
Android, with the name localised) next to the media files.
:func:`parse_chat_export` turns those bytes into :class:`ExportedMessage`
objects and keeps each message's exact source lines (``raw``) for sealing.
Of a zip it keeps only the chat in memory: :class:`ExportMedia` reads each
media file from the zip when asked for it.

Written by hand because no library parses these exports well enough for an
archive: the Python ones (whatstk, which is GPL-3.0; chat-miner;
whatsapp-chat-analyzer) build data frames for analytics, drop the source lines
and their line numbers, guess the date order, do not report the lines they
could not read, and do not read the zip defensively.

Headers read
------------
A message starts with a header: a date, a time, then one of four separators
(one per file, the one most of its lines use)::

    [31/12/2023, 21:05:12] Ana: text       bracket: iOS
    31/12/2023, 21:05 - Ana: text          dash: Android
    2016-06-27, 8:04:08 AM: Ana: text      colon: iOS before 2017
    13. 6. 2018. 21:25:15 Ana: text        plain: no separator at all

Dates have three fields split by ``/``, ``.`` or ``-``, each optionally
followed by a space, with an optional final dot (``13. 6. 2018.``,
``2021. 3. 5.``); 2-digit years are 20xx. Between date and time: ``, ``, a
space, or a word (French ``à``, Finnish ``klo``). Times use ``:`` or ``.``
(``21.25.15``), with or without seconds and an optional final dot. A 12-hour
marker may stand before or after the time: ``AM``, ``a.m.``, ``a. m.``,
``午前``/``午後``, ``오전``/``오후``, ``上午``/``下午``. Invisible marks (U+200E,
U+200F, bidi controls, U+FEFF, also inside the iOS bracket) and odd spaces
(U+00A0, U+202F) are allowed anywhere in a header. A line without a header
continues the message before it.

A 12-hour marker beside hour 0 or 13 to 23 (some phones write ``13:19 PM``)
is read as a 24-hour time and reported in ``warnings``.

Day or month first
------------------
Decided once per file, never guessed. A 4-digit first field is a year
(year, month, day). Otherwise a date whose first field only fits as a day (over
12) is evidence for day first, one whose second field only fits as a day for
month first, and the side with more evidence wins; dates that fit only the
losing side are reported as impossible. When no date tells (every day in the
file is 12 or less), the file is refused with :class:`DateOrderAmbiguous`
unless the caller gives ``date_order``. ``date_order_reason`` says which order
was used and why.

System lines
------------
A header with no ``sender: `` part is a system line (``sender`` is None), in
any language, and so is a header whose would-be sender holds a quotation mark
(a subject change quoting a subject with a colon in it). On iOS a notice is
printed under the chat's or group's name, its text led by U+200E: such a text
that is none of the media and deletion notices below is a system line too (the
name stays in ``raw``). Older iOS exports have no U+200E; their notices are
recognised by :data:`SYSTEM_NOTICES`.

Localised notices
-----------------
:data:`MEDIA_OMITTED_NOTICES`, :data:`DELETED_NOTICES`, :data:`EDITED_MARKERS`,
:data:`IOS_ATTACHMENT_LABELS`, :data:`ANDROID_ATTACHMENT_LABELS` and
:data:`SYSTEM_NOTICES` cover the languages of the samples in
``tests/unit/test_chat_export.py`` (each cites its source). Notices in other
languages come through as ordinary text, with ``raw`` untouched. An attachment
whose file has WhatsApp's own naming (``IMG-20240105-WA0001.jpg``,
``00000012-PHOTO-2024-01-05-10-00-00.jpg``, ``2015-08-04-PHOTO-00004762.jpg``,
``00000002-Invoice.pdf``) is recognised whatever its label.

Limits
------
* The format has no escaping: a continuation line that is itself a well-formed
  header starts a new message, and one that looks like a damaged header (a
  date, a time-like token and the file's separator) is reported as a problem.
  Nothing can tell either apart from the real thing.
* ``text`` drops U+200E/U+200F and the bidi embedding and isolate controls,
  and turns U+00A0/U+202F into plain spaces; ``raw`` keeps every byte.
* A sender name holding ``": "`` is cut at its first ``": "``.
* iOS notices tied to a person but led by U+200E that are not listed here
  (``Missed voice call``) become system lines; the name is only in ``raw``.
  Group notices of older iOS exports (no U+200E) other than those in
  :data:`SYSTEM_NOTICES` stay messages of the group's name.
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import PurePosixPath
from typing import IO, Literal, get_args

from archiver.core.errors import ArchiverError

MessageKind = Literal["text", "media", "media_omitted", "system", "deleted"]
DateOrder = Literal["dmy", "mdy", "ymd"]
DATE_ORDERS: tuple[DateOrder, ...] = get_args(DateOrder)
HeaderStyle = Literal["bracket", "dash", "colon", "plain"]
Platform = Literal["android", "ios"]

MAX_ZIP_TOTAL_BYTES = 2 * 1024**3
"""Refuse a zip whose members add up to more than this, uncompressed."""

MAX_ZIP_MEMBER_BYTES = 1024**3
"""Refuse a zip with any member larger than this, uncompressed."""

MAX_ZIP_MEMBERS = 100_000
"""Refuse a zip with more entries than this."""

PROBLEM_TEXT_CHARS = 80
"""How much of a line a problem quotes."""

MEDIA_OMITTED_NOTICES = (
    "<Media omitted>",
    "<Medien ausgeschlossen>",
    "<Multimedia omitido>",
    "<Médias omis>",
    "<Mídia oculta>",
    "<Arquivo de mídia oculto>",
    "<メディアなし>",
    "<Media omessi>",
    "<Media weggelaten>",
    "<Без медиафайлов>",
)
"""Android's whole-message stand-ins for media left out of an export."""

_IOS_PLACEHOLDERS = (
    r"(?:image|video|audio|sticker|GIF|Contact card) omitted",
    r"(?:Bild|Video|Audio|Sticker|GIF) weggelassen",
    r"(?:imagen omitida|video omitido|audio omitido|sticker omitido|GIF omitido)",
    r"(?:image absente|vidéo absente|audio omis|sticker omis|GIF retiré)",
    r"(?:afbeelding|video|audio|sticker|GIF) weggelaten",
    r"(?:изображение|аудиофайл|видео|стикер|GIF) отсутствует",
)
# iOS names the left-out document first: "Report.pdf • 3 pages document omitted".
_IOS_DOCUMENT_PLACEHOLDER = (
    r".+?(?:\s•\s.*?)?\s"
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
        "dit bericht is verwijderd",
        "u hebt dit bericht verwijderd",
        "данное сообщение удалено",
        "вы удалили данное сообщение",
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
    "Сообщение изменено",
)
"""Text of the ``<…>`` suffix that marks an edited message."""

IOS_ATTACHMENT_LABELS = frozenset(
    {
        "attached",
        "anhang",
        "angehängt",
        "adjunto",
        "archivo adjunto",
        "pièce jointe",
        "anexado",
        "anexo",
        "添付ファイル",
        "allegato",
        "bijgevoegd",
    }
)
"""Labels of iOS ``<label: file>`` (and older ``file <label>``) attachments, casefolded."""

ANDROID_ATTACHMENT_LABELS = frozenset(
    {
        "file attached",
        "datei angehängt",
        "archivo adjunto",
        "fichier joint",
        "arquivo anexado",
        "ファイル添付",
        "file allegato",
        "bestand bijgevoegd",
    }
)
"""Labels of Android ``file (label)`` attachment lines, casefolded."""

SYSTEM_NOTICES = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        # End-to-end encryption, the first line of nearly every export.
        r"messages (?:and calls are end-to-end encrypted|(?:you send )?to this (?:chat|group)"
        r"(?: and calls)? are now secured with end-to-end encryption)\b.*",
        r"nachrichten und anrufe sind ende-zu-ende-verschlüsselt\b.*",
        r"los mensajes y las llamadas están cifrados de extremo a extremo\b.*",
        r"les messages et les appels sont chiffrés de bout en bout\b.*",
        r"as mensagens e as (?:ligações|chamadas) são protegidas com a criptografia de "
        r"ponta a ponta\b.*",
        r"сообщения и звонки защищены сквозным шифрованием\b.*",
        r"メッセージと通話はエンドツーエンドで暗号化されています.*",
        r"消息和通话已进行端到端加密.*",
        # Joins through an invite link, number and security-code changes.
        r".+ joined using this group['\u2019]s invite link",
        r".+ se unió usando el enlace de invitación de este grupo",
        r".+ changed their phone number to a new number\b.*",
        r".+ hat eine neue telefonnummer\b.*",
        r"\+?[0-9][0-9 ()\u2011-]+ (?:changed to|hat zu) \+?[0-9][0-9 ()\u2011-]+"
        r"(?: gewechselt)?\.?",
        r"your security code with .+ changed\b.*",
        r"deine sicherheitsnummer für .+ hat sich geändert\b.*",
    )
)
"""Whole-text patterns of notices that older iOS exports print under a name,
without the U+200E that marks newer ones; any match is a system line."""

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_PROBLEMS_SHOWN = 10

_MARKS = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
_ODD_SPACES = "\u00a0\u202f\u2007\u2009"
_VIEW = str.maketrans(dict.fromkeys(_ODD_SPACES, " "))
_CLEAN = str.maketrans({**dict.fromkeys(_ODD_SPACES, " "), **dict.fromkeys(_MARKS, None)})
_LRM = "\u200e"
_QUOTES = frozenset('"“”„«»「」『』')

_M = f"[{_MARKS}]*"
_DATE = (
    r"(?P<date>(?P<d1>[0-9]{1,4})(?P<sep>[./-]) ?(?P<d2>[0-9]{1,2})(?P=sep) ?"
    r"(?P<d3>[0-9]{1,4})\.?)"
)
_AFTERNOON = ("午後", "오후", "下午")
_CJK_MARKERS = ("午前", "오전", "上午", *_AFTERNOON)
# Not followed by a letter, so that "10:00 Amanda" has no "Am".
_MERIDIEM = r"(?:[AaPp]\.? ?[Mm]\.?|" + "|".join(_CJK_MARKERS) + r")(?![^\W\d_])"
_TIME = (
    rf"(?P<time>(?:(?P<pre>{_MERIDIEM}) ?)?(?P<hh>[0-9]{{1,2}})[:.](?P<mm>[0-9]{{2}})"
    rf"(?:[:.](?P<ss>[0-9]{{2}}))?(?: ?(?P<post>{_MERIDIEM}))?\.?)"
)
_DATE_TIME_GAP = r"(?:, ?| )(?:(?:à|klo) )?"
_HEAD = _M + _DATE + _DATE_TIME_GAP + _M + _TIME + _M
_STRICT: dict[HeaderStyle, re.Pattern[str]] = {
    "bracket": re.compile(_M + r"\[" + _HEAD + r"\] ?(?P<body>.*)", re.DOTALL),
    "dash": re.compile(_HEAD + r" [-\u2013] (?P<body>.*)", re.DOTALL),
    "colon": re.compile(_HEAD + r": (?P<body>.*)", re.DOTALL),
    "plain": re.compile(_HEAD + r" (?P<body>.*)", re.DOTALL),
}
# Shapes that can only be a header gone wrong; matched when _STRICT fails.
_LOOSE_DATE = _M + r"[0-9]{1,4}[./-] ?[0-9]{1,2}[./-] ?[0-9]{1,4}\.?(?:, ?| )"
_LOOSE: dict[HeaderStyle, re.Pattern[str]] = {
    "bracket": re.compile(_M + r"\[" + _LOOSE_DATE + r"[^\]]{0,40}\]"),
    "dash": re.compile(_LOOSE_DATE + r"\S*[0-9][:.]\S*[^-\u2013]{0,12}? [-\u2013] "),
    "colon": re.compile(_LOOSE_DATE + r"\S*[0-9][:.][0-9]\S*(?: \S{1,6})?: "),
    "plain": re.compile(_LOOSE_DATE + r"\S*[0-9][:.][0-9]"),
}
# Which style wins a tie: the more specific separators first.
_STYLES: tuple[HeaderStyle, ...] = ("bracket", "dash", "colon")
_PLATFORM: dict[HeaderStyle, Platform] = {
    "bracket": "ios",
    "colon": "ios",
    "dash": "android",
    "plain": "android",
}

_EDITED = re.compile(
    r"\s*<(?:" + "|".join(map(re.escape, EDITED_MARKERS)) + r")\.?>\Z", re.IGNORECASE
)
_OMITTED = re.compile(
    "|".join(
        [*map(re.escape, MEDIA_OMITTED_NOTICES), *_IOS_PLACEHOLDERS, _IOS_DOCUMENT_PLACEHOLDER]
    ),
    re.IGNORECASE,
)
# "<attached: name>", after a document's title and page count on newer phones.
_IOS_ATTACHMENT = re.compile(
    r"(?:.*\S\s)?<(?P<label>[^<>:\uff1a]{1,40}?)\s?[:\uff1a]\s?(?P<name>[^<>]+)>"
)
# "name <attached>", as iOS wrote it before 2017.
_IOS_OLD_ATTACHMENT = re.compile(r"(?P<name>[^<>]*[^<>\s])\s?<(?P<label>[^<>:\uff1a]{1,40})>")
_ANDROID_ATTACHMENT = re.compile(
    r"(?P<name>.+?)\s?[(\uff08](?P<label>[^()\uff08\uff09]{1,40})[)\uff09]"
)
# WhatsApp's own media file names, recognised whatever the label's language.
_IOS_MEDIA_NAME = re.compile(r"[0-9]{8}-.+\.\w{1,5}|[0-9]{4}(?:-[0-9]{2}){2}-[A-Z]+-[0-9]+\.\w+")
_ANDROID_MEDIA_NAME = re.compile(r"(?:IMG|VID|AUD|PTT|STK|DOC|GIF)-[0-9]{8}-WA[0-9]{4,}\.\w*")


@dataclass(frozen=True, slots=True)
class ParseProblem:
    """A line that could not be read (or was read with a warning), and why.

    ``text`` is the line's first :data:`PROBLEM_TEXT_CHARS` characters, without
    invisible marks; ``line_number`` is None for a problem of the whole file.
    """

    line_number: int | None
    reason: str
    text: str = ""

    def __str__(self) -> str:
        # Never the line's text: this string may reach a log.
        return (
            self.reason if self.line_number is None else f"line {self.line_number}: {self.reason}"
        )


@dataclass(frozen=True, slots=True)
class ExportedMessage:
    """One message or system notice of an export.

    ``kind`` is ``text``, ``media`` (``attachment`` names the file),
    ``media_omitted`` (exported without media), ``system`` (``sender`` is
    None) or ``deleted``. ``sent_at`` is naive local time: the export carries
    no zone. ``text`` is the cleaned, multi-line body without an edited marker
    (that is ``edited``); ``raw`` is the message's source lines exactly as
    exported, line breaks included.
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

    ``media`` holds the zip's other files by base name (empty for a ``.txt``),
    read from the file given to :func:`parse_chat_export` when looked up;
    ``errors`` the unreadable lines (only with ``partial=True``); ``warnings``
    lines read with a doubt; ``date_order`` how day-month dates were read and
    ``date_order_reason`` why.
    """

    messages: list[ExportedMessage]
    media: ExportMedia
    errors: list[ParseProblem]
    date_order: DateOrder
    date_order_reason: str
    style: HeaderStyle
    warnings: list[ParseProblem] = field(default_factory=list)

    @property
    def platform(self) -> Platform:
        """The phone that writes headers in this file's style."""
        return _PLATFORM[self.style]


class ChatExportError(ArchiverError):
    """The export cannot be read, or has lines that cannot be (see ``problems``,
    never empty: a problem of the whole file has no line number)."""

    def __init__(self, message: str, problems: Sequence[ParseProblem] = ()) -> None:
        self.problems = tuple(problems) or (ParseProblem(None, message),)
        if problems:
            listed = "; ".join(str(p) for p in self.problems[:_PROBLEMS_SHOWN])
            more = len(self.problems) - _PROBLEMS_SHOWN
            message = f"{message}: {listed}" + (f" (and {more} more)" if more > 0 else "")
        super().__init__(message)


class DateOrderAmbiguous(ChatExportError):
    """No date of the file shows whether the day or the month comes first."""


def quote(line: str) -> str:
    """A line as a problem quotes it: invisible marks removed, cut to length."""
    return line.translate(_CLEAN)[:PROBLEM_TEXT_CHARS]


class ExportMedia(Mapping[str, bytes]):
    """The files of a zip beside its chat, by base name. Each is read from the zip
    when looked up, so only one is in memory at a time; the zip's file must stay
    open meanwhile. Every member's checksum was verified when the zip was parsed."""

    def __init__(
        self, archive: zipfile.ZipFile | None = None, members: Sequence[zipfile.ZipInfo] = ()
    ) -> None:
        self._archive = archive
        self._members = {PurePosixPath(m.filename).name: m for m in members}

    def size(self, name: str) -> int:
        """The uncompressed size of the file ``name``, without reading it."""
        return self._members[name].file_size

    def __getitem__(self, name: str) -> bytes:
        member = self._members[name]
        assert self._archive is not None  # only a zip has members
        try:
            return self._archive.read(member)
        except _ZIP_READ_ERRORS as exc:
            raise ChatExportError(f"zip member {name!r} cannot be read: {exc}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)


def parse_chat_export(
    data: bytes | IO[bytes],
    filename: str,
    *,
    partial: bool = False,
    date_order: DateOrder | None = None,
) -> ParsedExport:
    """Parse an exported ``.txt`` or ``.zip`` (told apart by content), given as its
    bytes or as a seekable binary file (read from its start).

    Of a zip, every member is read once to check its size and checksum, but only
    the chat is kept; ``media`` reads the others from ``data`` when asked for.

    Lines that cannot be read raise :class:`ChatExportError` listing them,
    unless ``partial`` is true: then the readable messages come back with the
    problems in ``errors``. An unreadable file (not UTF-8, empty, a zip that is
    damaged, unsafe, too large or without a chat, no readable message) always
    raises, and so does a file whose day and month order cannot be told
    (:class:`DateOrderAmbiguous`) unless ``date_order`` gives it.
    """
    if date_order is not None and date_order not in DATE_ORDERS:
        raise ValueError(f"date_order must be one of {', '.join(DATE_ORDERS)}, not {date_order!r}")
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    source.seek(0)
    if source.read(4) in _ZIP_MAGICS:
        chat_name, chat_bytes, media = _read_zip(source, filename)
    elif filename.lower().endswith(".zip"):
        raise ChatExportError(f"{filename} is named .zip but is not a zip archive")
    else:
        source.seek(0)
        chat_name, chat_bytes, media = filename, source.read(), ExportMedia()

    lines, breaks = _split_lines(_decode(chat_bytes, chat_name))
    views = [line.translate(_VIEW) for line in lines]
    style = _detect_style(views, lines, chat_name)
    strict, loose = _STRICT[style], _LOOSE[style]
    headers = {i: m for i, view in enumerate(views) if (m := strict.match(view))}
    order, order_reason = _date_order(headers, lines, date_order, chat_name)

    messages: list[ExportedMessage] = []
    problems: list[ParseProblem] = []
    warnings: list[ParseProblem] = []
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
                    ParseProblem(
                        number, "continues a message whose header is unreadable", quote(line)
                    )
                )
            else:
                problems.append(
                    ParseProblem(
                        number, "not a message header, and no message precedes it", quote(line)
                    )
                )
            continue

        if draft is not None:
            messages.append(draft.finish(style))
            draft = None
        reason = None
        if header is None:
            reason = "timestamp header with an unreadable date or time"
        else:
            try:
                sent_at, doubt = _timestamp(header, order)
            except _BadHeader as exc:
                reason = str(exc)
            else:
                draft = _Draft(number, sent_at, header["body"], [line], [breaks[i]])
                if doubt:
                    warnings.append(ParseProblem(number, doubt, quote(line)))
        after_bad_header = reason is not None
        if reason is not None:
            problems.append(ParseProblem(number, reason, quote(line)))
    if draft is not None:
        messages.append(draft.finish(style))

    if problems and not partial:
        raise ChatExportError(f"{chat_name} has lines that cannot be parsed", problems)
    if not messages:
        raise ChatExportError(f"{chat_name} has no readable message", problems)
    return ParsedExport(messages, media, problems, order, order_reason, style, warnings)


class _BadHeader(ValueError):
    """A header line whose date or time is impossible."""


@dataclass(slots=True)
class _Draft:
    line_number: int
    sent_at: datetime
    body: str
    lines: list[str]
    breaks: list[str]

    def finish(self, style: HeaderStyle) -> ExportedMessage:
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
        marked = _PLATFORM[style] == "ios" and first.lstrip(" ").startswith(_LRM)
        if kind == "text" and (marked or any(p.fullmatch(text) for p in SYSTEM_NOTICES)):
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
    for pattern, labels, names in (
        (_IOS_ATTACHMENT, IOS_ATTACHMENT_LABELS, _IOS_MEDIA_NAME),
        (_IOS_OLD_ATTACHMENT, IOS_ATTACHMENT_LABELS, _IOS_MEDIA_NAME),
        (_ANDROID_ATTACHMENT, ANDROID_ATTACHMENT_LABELS, _ANDROID_MEDIA_NAME),
    ):
        found = pattern.fullmatch(line)
        if found:
            name = found["name"].strip()
            if found["label"].strip().casefold() in labels or names.fullmatch(name):
                return name
    return None


def _clean_sender(head: str) -> str:
    # Phone numbers come with U+2011 non-breaking hyphens; plain ones match contacts.
    return head.translate(_CLEAN).replace("\u2011", "-").strip()


def _timestamp(header: re.Match[str], order: DateOrder) -> tuple[datetime, str | None]:
    """The header's local time, and a warning when its 12-hour marker is odd."""
    d1, d2, d3 = header["d1"], header["d2"], header["d3"]
    if len(d1) == 4 or (order == "ymd" and len(d1) <= 2 and len(d3) <= 2):
        year, month, day = _year(d1), int(d2), int(d3)
        read_as = "ymd"
    elif len(d1) <= 2 and len(d3) in (2, 4) and order != "ymd":
        year = _year(d3)
        day, month = (int(d1), int(d2)) if order == "dmy" else (int(d2), int(d1))
        read_as = order
    else:
        raise _BadHeader(f"unreadable date {header['date']!r} (dates read as {order})")
    try:
        on = date(year, month, day)
    except ValueError:
        raise _BadHeader(f"impossible date {header['date']!r} (read as {read_as})") from None

    hour, minute, second = int(header["hh"]), int(header["mm"]), int(header["ss"] or 0)
    marker = header["pre"] or header["post"]
    doubt = None
    if hour > 23 or minute > 59 or second > 59:
        raise _BadHeader(f"impossible time {header['time']!r}")
    if marker:
        # Japanese clocks may say 午前0:05; Western ones run 12, 1, … 11.
        lowest = 0 if marker in _CJK_MARKERS else 1
        if lowest <= hour <= 12:
            afternoon = marker in _AFTERNOON or marker.startswith(("p", "P"))
            hour = hour % 12 + (12 if afternoon else 0)
        else:
            doubt = (
                f"12-hour marker {marker.strip()!r} beside hour {hour}: "
                f"read as the 24-hour time {hour:02}:{minute:02}"
            )
    return datetime.combine(on, time(hour, minute, second)), doubt


def _date_order(
    headers: dict[int, re.Match[str]],
    lines: Sequence[str],
    given: DateOrder | None,
    name: str,
) -> tuple[DateOrder, str]:
    """The file's order of day and month, and why; refuses to guess."""
    if given is not None:
        return given, f"{given}, as given by the importer"
    day_first: list[int] = []
    month_first: list[int] = []
    undecided: list[int] = []
    impossible: list[int] = []
    for i, m in headers.items():
        if len(m["d1"]) == 4 or len(m["d3"]) not in (2, 4):
            continue
        year, first, second = _year(m["d3"]), int(m["d1"]), int(m["d2"])
        as_dmy, as_mdy = _is_date(year, second, first), _is_date(year, first, second)
        if as_dmy and not as_mdy:
            day_first.append(i)
        elif as_mdy and not as_dmy:
            month_first.append(i)
        elif as_dmy:
            undecided.append(i)
        else:
            impossible.append(i)
    if not day_first and not month_first and not undecided:
        if impossible:
            return "dmy", "dmy: no date fits either order"
        return "ymd", "ymd: every date starts with a four-digit year"
    if len(day_first) == len(month_first):
        first = min([*day_first, *month_first, *undecided])
        why = (
            f"{_dates(len(day_first))} only day first and as many only month first"
            if day_first
            else "every date has a day and a month of 12 or less"
        )
        raise DateOrderAmbiguous(
            f"the order of day and month in {name} cannot be told",
            [
                ParseProblem(
                    first + 1,
                    f"day and month order cannot be told: {why}; give the date order (dmy or mdy)",
                    quote(lines[first]),
                )
            ],
        )
    if len(day_first) > len(month_first):
        order: DateOrder = "dmy"
        winner, loser, first_field = day_first, month_first, "day"
    else:
        order, winner, loser, first_field = "mdy", month_first, day_first, "month"
    reason = (
        f"{order}: {_dates(len(winner))} only {first_field} first, "
        f"such as {headers[winner[0]]['date']!r} on line {winner[0] + 1}"
    )
    if loser:
        reason += f"; {_dates(len(loser))} only the other order, refused"
    return order, reason


def _dates(count: int) -> str:
    return "1 date fits" if count == 1 else f"{count} dates fit"


def _year(digits: str) -> int:
    return int(digits) + (2000 if len(digits) <= 2 else 0)


def _is_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def _detect_style(views: Sequence[str], lines: Sequence[str], name: str) -> HeaderStyle:
    """The header style of most well-formed headers (of damaged ones if none is)."""
    for patterns in (_STRICT, _LOOSE):
        counts = {style: sum(bool(patterns[style].match(v)) for v in views) for style in _STYLES}
        best = max(_STYLES, key=lambda style: counts[style])
        if counts[best]:
            return best
        # Every header of the other styles is also a plain one: plain comes last.
        if patterns is _STRICT and any(_STRICT["plain"].match(v) for v in views):
            return "plain"
    first = next((i for i, line in enumerate(lines) if line.translate(_CLEAN).strip()), 0)
    raise ChatExportError(
        f"{name} has no WhatsApp message header; is it a chat export?",
        [
            ParseProblem(
                first + 1,
                "not a WhatsApp message header, and no line of the file starts with a date "
                "and a time",
                quote(lines[first]),
            )
        ],
    )


def _decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        shown = data[start : data.find(b"\n", exc.start) % (len(data) + 1)]
        raise ChatExportError(
            f"{name} is not UTF-8 text",
            [
                ParseProblem(
                    line,
                    f"not UTF-8 text (invalid byte at offset {exc.start}); export the chat "
                    "again or save the file as UTF-8",
                    quote(shown.decode("utf-8", "replace")),
                )
            ],
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


_CHECK_CHUNK = 2**20


def _read_zip(source: IO[bytes], filename: str) -> tuple[str, bytes, ExportMedia]:
    """Return the chat's member name and bytes, and every other file by name.

    Every member is read through once, a chunk at a time, so that a damaged one
    refuses the whole file before anything is imported. ZipExtFile stops at the
    declared size and checks the CRC, so the size checks also bound these reads.
    """
    try:
        archive = zipfile.ZipFile(source)
        members = _checked_members(archive, filename)
        chat = _chat_member(members, filename)
        for member in members:
            with archive.open(member) as stream:
                while stream.read(_CHECK_CHUNK):
                    pass
        chat_bytes = archive.read(chat)
    except _ZIP_READ_ERRORS as exc:
        raise ChatExportError(f"{filename} is not a readable zip archive: {exc}") from None
    media = ExportMedia(archive, [m for m in members if m is not chat])
    return f"{filename}:{chat.filename}", chat_bytes, media


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
