"""Tests for the WhatsApp "Export chat" parser."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver import chat_export
from archiver.chat_export import (
    ChatExportError,
    ExportedMessage,
    ParsedExport,
    ParseProblem,
    parse_chat_export,
)
from archiver.errors import ArchiverError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "chat_exports"
NNBSP = "\u202f"
LRM = "\u200e"


def at(iso: str) -> datetime:
    """A naive local timestamp, as the parser returns them."""
    return datetime.fromisoformat(iso)


def fixture(name: str) -> ParsedExport:
    return parse_chat_export((FIXTURES / name).read_bytes(), name)


def parse_text(
    text: str, *, partial: bool = False, date_order: Literal["DMY", "MDY"] | None = None
) -> ParsedExport:
    return parse_chat_export(text.encode(), "chat.txt", partial=partial, date_order=date_order)


def by_line(parsed: ParsedExport) -> dict[int, ExportedMessage]:
    return {m.line_number: m for m in parsed.messages}


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# One row per fixture: platform, date order, and the kind of every message in order.
FIXTURE_KINDS = {
    "android_en_us.txt": (
        "android",
        "MDY",
        "system system text text media_omitted deleted deleted text system media",
    ),
    "android_en_gb.txt": ("android", "DMY", "system text text text media media_omitted text"),
    "android_de.txt": (
        "android",
        "DMY",
        "system text text media_omitted deleted media text system",
    ),
    "android_es.txt": ("android", "DMY", "system text text media_omitted deleted media text"),
    "android_fr.txt": ("android", "DMY", "system text text media_omitted deleted media text"),
    "android_pt_br.txt": ("android", "DMY", "system text text media_omitted deleted media text"),
    "android_ja.txt": (
        "android",
        "YMD",
        "system text text media_omitted deleted media text system",
    ),
    "ios_en_gb.txt": (
        "ios",
        "DMY",
        "system system system text text media media_omitted deleted text media_omitted text system",
    ),
    "ios_en_us.txt": ("ios", "MDY", "system text text media deleted text media_omitted text"),
    "ios_de.txt": ("ios", "DMY", "system text text media media_omitted deleted text"),
}


@pytest.mark.parametrize("name", sorted(FIXTURE_KINDS))
def test_every_fixture_parses_with_its_platform_order_and_kinds(name: str) -> None:
    platform, order, kinds = FIXTURE_KINDS[name]
    parsed = fixture(name)
    assert parsed.platform == platform
    assert parsed.date_order == order
    assert not parsed.date_order_guessed
    assert parsed.errors == []
    assert [m.kind for m in parsed.messages] == kinds.split()
    assert all((m.sender is None) == (m.kind == "system") for m in parsed.messages)


@pytest.mark.parametrize("name", sorted(FIXTURE_KINDS))
def test_raw_is_the_exact_source_of_each_message(name: str) -> None:
    source = (FIXTURES / name).read_bytes().decode()
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    for message in fixture(name).messages:
        assert source.startswith(message.raw, starts[message.line_number - 1])


def test_android_us_12_hour_with_narrow_no_break_space() -> None:
    messages = by_line(fixture("android_en_us.txt"))
    assert messages[3].sent_at == at("2023-12-28T09:15")
    assert messages[11].sent_at == at("2023-12-28T12:02")
    assert messages[13].sent_at == at("2024-01-02T11:30")
    assert messages[3].sender == "Maria Lopez"


def test_multi_line_message_keeps_inner_blank_lines() -> None:
    message = by_line(fixture("android_en_us.txt"))[4]
    assert message.sender == "Rosewood Bakery"
    assert message.text == (
        "Good morning Maria! Yes, we do.\nWe can hold two loaves until noon.\n\n"
        "Pickup is at the side door."
    )
    assert message.raw.count("\n") == 3


def test_android_day_first_24_hour_and_continuation_starting_with_a_date() -> None:
    messages = by_line(fixture("android_en_gb.txt"))
    assert messages[6].sent_at == at("2024-01-16T09:40")
    assert (
        messages[4].text == "Brilliant, thanks.\n16/01 works for me. Could the engineer ring ahead?"
    )
    assert messages[2].sender == "+44 7700 900123"


def test_android_german_dotted_dates() -> None:
    messages = by_line(fixture("android_de.txt"))
    assert messages[2].sent_at == at("2023-12-31T17:46")
    assert messages[6].sent_at == at("2024-01-02T09:05")
    assert messages[6].attachment == "IMG-20240102-WA0000.jpg"
    assert messages[8].edited
    assert messages[8].text == "Abholung bis 18 Uhr möglich"


def test_android_spanish_12_hour_with_no_break_spaces() -> None:
    messages = by_line(fixture("android_es.txt"))
    assert messages[1].sent_at == at("2024-03-14T10:02")
    assert messages[6].sent_at == at("2024-03-14T12:40")
    assert messages[3].sender == "Clínica Dental Sonrisa"
    assert messages[3].text == "Hola Lucía, sí: viernes 15 a las 4:30 p. m."


def test_android_french_and_portuguese_date_time_gaps() -> None:
    french = by_line(fixture("android_fr.txt"))
    assert french[7].sent_at == at("2024-02-13T09:00")
    assert french[2].text == "Bonjour, la commande n° 4471 est-elle prête ?"
    portuguese = by_line(fixture("android_pt_br.txt"))
    assert portuguese[7].sent_at == at("2024-05-21T09:12")
    assert portuguese[3].text == "Boa tarde, João! Entregamos sim.\nTaxa de R$ 15,00."


def test_android_japanese_year_first() -> None:
    messages = by_line(fixture("android_ja.txt"))
    assert messages[2].sender == "佐藤花子"
    assert messages[2].sent_at == at("2024-03-01T10:02")
    assert messages[9].sender is None
    assert messages[9].text.startswith("佐藤花子さんが電話番号を変更しました")


def test_japanese_morning_and_afternoon_markers() -> None:
    parsed = parse_text(
        "2024/03/01 午前0:05 - 山田: おはよう\n2024/03/01 午後9:05 - 山田: こんばんは\n"
    )
    assert [m.sent_at for m in parsed.messages] == [
        at("2024-03-01T00:05"),
        at("2024-03-01T21:05"),
    ]


def test_ios_day_first_with_marks_group_notices_and_crlf() -> None:
    parsed = fixture("ios_en_gb.txt")
    messages = by_line(parsed)
    assert messages[1].sender is None
    assert messages[1].text.startswith("Messages and calls are end-to-end encrypted.")
    assert messages[2].text == "Sam Reid created group “Harbour Dental Rota”"
    assert messages[4].sent_at == at("2024-02-14T09:00:45")
    assert messages[5].text == "Thanks! Could we move it to the morning?\nAny time before 11 works."
    assert messages[5].raw.endswith("morning?\r\nAny time before 11 works.")
    assert messages[7].attachment == "00000005-PHOTO-2024-02-14-09-03-00.jpg"
    assert messages[10].edited
    assert messages[10].text == "Moved to 09:30 on the 21st"
    assert messages[11].text == "Audit checklist.pdf • 2 pages document omitted"
    assert messages[12].sender == "~ Priya"
    assert all(LRM not in m.text and NNBSP not in m.text for m in parsed.messages)


def test_ios_us_12_hour() -> None:
    messages = by_line(fixture("ios_en_us.txt"))
    assert messages[2].sent_at == at("2024-03-04T14:15:07")
    assert messages[3].text.splitlines() == [
        "Hi Dan, yes it is! Showings this week:",
        "Thu 3/7 at 5:30 PM",
        "Sat 3/9 at 11:00 AM",
    ]
    assert messages[10].sent_at == at("2024-03-15T00:05")
    assert messages[10].edited


def test_ios_german_attachment_and_phone_number_sender() -> None:
    messages = by_line(fixture("ios_de.txt"))
    assert messages[3].sender == "+49 151 2345-6789"
    assert messages[5].attachment == "00000007-PHOTO-2024-03-02-10-21-00.jpg"
    assert messages[8].sent_at == at("2024-03-14T18:00")


@pytest.mark.parametrize(
    ("body", "kind", "attachment"),
    [
        ("<Media omitted>", "media_omitted", None),
        ("<Medien ausgeschlossen>", "media_omitted", None),
        ("<Multimedia omitido>", "media_omitted", None),
        ("<Médias omis>", "media_omitted", None),
        ("<Mídia oculta>", "media_omitted", None),
        ("<メディアなし>", "media_omitted", None),
        (f"{LRM}sticker omitted", "media_omitted", None),
        (f"{LRM}Audio weggelassen", "media_omitted", None),
        (f"{LRM}imagen omitida", "media_omitted", None),
        (f"{LRM}vidéo absente", "media_omitted", None),
        ("VID-20240105-WA0001.mp4 (file attached)", "media", "VID-20240105-WA0001.mp4"),
        ("Angebot (final).pdf (Datei angehängt)", "media", "Angebot (final).pdf"),
        ("PTT-20240105-WA0002.opus (archivo adjunto)", "media", "PTT-20240105-WA0002.opus"),
        ("facture.pdf (fichier joint)", "media", "facture.pdf"),
        ("IMG-20240105-WA0001.jpg (arquivo anexado)", "media", "IMG-20240105-WA0001.jpg"),
        ("IMG-20240105-WA0001.jpg (ファイル添付)", "media", "IMG-20240105-WA0001.jpg"),
        ("IMG-20240105-WA0001.jpg (plik załączony)", "media", "IMG-20240105-WA0001.jpg"),
        (f"{LRM}<pièce jointe : contrat.pdf>", "media", "contrat.pdf"),
        (f"{LRM}<Anhang: Angebot.pdf>", "media", "Angebot.pdf"),
        (f"{LRM}<adjunto: factura.pdf>", "media", "factura.pdf"),
        (f"{LRM}<anexado: nota.pdf>", "media", "nota.pdf"),
        ("<添付ファイル\uff1a見積書.pdf>", "media", "見積書.pdf"),
        (
            f"{LRM}<bijgevoegd: 00000012-PHOTO-2024-01-05-10-00-00.jpg>",
            "media",
            "00000012-PHOTO-2024-01-05-10-00-00.jpg",
        ),
        ("Ce message a été supprimé", "deleted", None),
        ("Vous avez supprimé ce message.", "deleted", None),
        ("Eliminaste este mensaje.", "deleted", None),
        ("Você apagou esta mensagem", "deleted", None),
        ("このメッセージを削除しました", "deleted", None),
        ("see the photo (file attached)?", "text", None),
        ("<note: remember this>", "text", None),
    ],
)
def test_localised_media_and_deletion_notices(body: str, kind: str, attachment: str | None) -> None:
    message = parse_text(f"[05/01/2024, 10:00:00] Ana: {body}\n").messages[0]
    assert (message.kind, message.attachment, message.sender) == (kind, attachment, "Ana")


def test_android_subject_change_with_a_colon_is_a_system_line() -> None:
    message = parse_text('05/01/2024, 10:00 - Ana changed the subject from "Q1" to "Q2: plan"\n')
    assert message.messages[0].sender is None
    assert message.messages[0].kind == "system"


def test_day_first_inferred_from_a_day_over_12() -> None:
    parsed = parse_text("03/04/2024, 10:00 - Ana: a\n13/04/2024, 10:00 - Ana: b\n")
    assert parsed.date_order == "DMY"
    assert not parsed.date_order_guessed
    assert parsed.messages[0].sent_at == at("2024-04-03T10:00")


def test_month_first_inferred_from_a_second_field_over_12() -> None:
    parsed = parse_text("03/04/24, 10:00 AM - Ana: a\n04/13/24, 10:00 PM - Ana: b\n")
    assert parsed.date_order == "MDY"
    assert not parsed.date_order_guessed
    assert parsed.messages[0].sent_at == at("2024-03-04T10:00")


def test_ambiguous_dates_fall_back_to_the_default_and_say_so() -> None:
    text = "03/04/2024, 10:00 - Ana: a\n05/04/2024, 10:00 - Ana: b\n"
    parsed = parse_text(text)
    assert parsed.date_order == chat_export.DEFAULT_DATE_ORDER == "DMY"
    assert parsed.date_order_guessed
    assert parsed.messages[0].sent_at == at("2024-04-03T10:00")
    forced = parse_text(text, date_order="MDY")
    assert forced.date_order == "MDY"
    assert not forced.date_order_guessed
    assert forced.messages[0].sent_at == at("2024-03-04T10:00")


def test_a_date_against_the_inferred_order_is_a_problem() -> None:
    text = "13/04/2024, 10:00 - Ana: a\n14/04/2024, 10:00 - Ana: b\n04/15/2024, 10:00 - Ana: c\n"
    parsed = parse_text(text, partial=True)
    assert parsed.date_order == "DMY"
    assert [m.text for m in parsed.messages] == ["a", "b"]
    assert [p.line_number for p in parsed.errors] == [3]
    assert "impossible date" in parsed.errors[0].reason


def test_unparseable_first_line_raises_with_its_line_number() -> None:
    text = "Chat history with Ana\n05/01/2024, 10:00 - Ana: hello\n"
    with pytest.raises(ChatExportError) as caught:
        parse_text(text)
    assert caught.value.problems == (
        ParseProblem(1, "not a message header, and no message precedes it"),
    )
    assert "line 1: not a message header" in str(caught.value)
    assert isinstance(caught.value, ArchiverError)

    parsed = parse_text(text, partial=True)
    assert [m.text for m in parsed.messages] == ["hello"]
    assert parsed.errors == [ParseProblem(1, "not a message header, and no message precedes it")]


def test_impossible_date_is_reported_and_its_continuation_dropped() -> None:
    text = (
        "05/01/2023, 10:00 - Ana: fine\n"
        "32/13/2023, 10:01 - Ana: broken\n"
        "more of the broken one\n"
        "05/01/2023, 10:02 - Ana: fine again\n"
    )
    with pytest.raises(ChatExportError, match=r"line 2: impossible date '32/13/2023'"):
        parse_text(text)
    parsed = parse_text(text, partial=True)
    assert [m.text for m in parsed.messages] == ["fine", "fine again"]
    assert [p.line_number for p in parsed.errors] == [2, 3]
    assert parsed.errors[1].reason == "continues a message whose header is unreadable"


@pytest.mark.parametrize(
    "header",
    [
        "05/01/2023, 25:61 - Ana: late",
        "05/01/2023, 9:5x PM - Ana: typo",
        "05/01/2023, 13:05 PM - Ana: not a 12-hour time",
        "[05/01/2023, 10:00:61] Ana: too many seconds",
        "[05/01/2023, half past ten] Ana: no time",
    ],
)
def test_malformed_time_in_a_header_is_a_problem(header: str) -> None:
    good = (
        "[05/01/2023, 09:00:00] Ana: ok"
        if header.startswith("[")
        else "05/01/2023, 09:00 - Ana: ok"
    )
    parsed = parse_text(f"{good}\n{header}\n", partial=True)
    assert [m.text for m in parsed.messages] == ["ok"]
    assert [p.line_number for p in parsed.errors] == [2]


def test_zip_from_ios_with_media() -> None:
    chat = (FIXTURES / "ios_en_gb.txt").read_bytes()
    photo = b"\xff\xd8\xff\xe0 fake jpeg"
    data = make_zip(
        {"_chat.txt": chat, "00000005-PHOTO-2024-02-14-09-03-00.jpg": photo, "__MACOSX/._x": b"x"}
    )
    parsed = parse_chat_export(data, "WhatsApp Chat - Harbour Dental Rota.zip")
    assert parsed.platform == "ios"
    assert parsed.media == {"00000005-PHOTO-2024-02-14-09-03-00.jpg": photo}
    attachments = [m.attachment for m in parsed.messages if m.kind == "media"]
    assert attachments == list(parsed.media)


def test_zip_from_android_found_by_content_not_name() -> None:
    chat = (FIXTURES / "android_de.txt").read_bytes()
    data = make_zip(
        {
            "WhatsApp Chat mit Jonas Weber.txt": chat,
            "IMG-20240102-WA0000.jpg": b"jpeg",
            "Preisliste.txt": b"a document someone sent",
        }
    )
    parsed = parse_chat_export(data, "upload.txt")
    assert parsed.platform == "android"
    assert set(parsed.media) == {"IMG-20240102-WA0000.jpg", "Preisliste.txt"}
    assert len(parsed.messages) == 8


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"IMG-1.jpg": b"x"}, "no chat .txt"),
        ({"a.txt": b"x", "b.txt": b"y"}, "several possible chat files"),
        ({"_chat.txt": b"[05/01/2024, 10:00:00] A: b", "../evil.sh": b"x"}, "unsafe member"),
        ({"_chat.txt": b"[05/01/2024, 10:00:00] A: b", "/etc/passwd": b"x"}, "unsafe member"),
        ({"_chat.txt": b"[05/01/2024, 10:00:00] A: b", "C:/x.jpg": b"x"}, "unsafe member"),
        ({"_chat.txt": b"[05/01/2024, 10:00:00] A: b", "a\\..\\x": b"x"}, "unsafe member"),
        ({"_chat.txt": b"x", "media/_chat.txt": b"y"}, "two files named"),
        ({"_chat.txt": b"\xff\xfe\x00"}, "not UTF-8"),
        ({"_chat.txt": b""}, "is empty"),
    ],
)
def test_bad_zips_are_refused(members: dict[str, bytes], message: str) -> None:
    with pytest.raises(ChatExportError, match=message):
        parse_chat_export(make_zip(members), "export.zip")


def test_damaged_zip_is_refused() -> None:
    data = make_zip({"_chat.txt": b"[05/01/2024, 10:00:00] Ana: hi" * 50})
    with pytest.raises(ChatExportError, match="not a readable zip archive"):
        parse_chat_export(data[: len(data) // 2], "export.zip")


def test_file_named_zip_that_is_not_a_zip_is_refused() -> None:
    with pytest.raises(ChatExportError, match="not a zip archive"):
        parse_chat_export(b"05/01/2024, 10:00 - Ana: hi\n", "export.zip")


@pytest.mark.parametrize(
    ("limit", "value"),
    [("MAX_ZIP_MEMBER_BYTES", 10), ("MAX_ZIP_TOTAL_BYTES", 40), ("MAX_ZIP_MEMBERS", 2)],
)
def test_zip_bomb_limits(monkeypatch: pytest.MonkeyPatch, limit: str, value: int) -> None:
    chat = b"[05/01/2024, 10:00:00] Ana: hi\n"
    data = make_zip({"_chat.txt": chat, "a.jpg": b"0" * 9, "b.jpg": b"0" * 9})
    assert parse_chat_export(data, "export.zip").messages
    monkeypatch.setattr(chat_export, limit, value)
    with pytest.raises(ChatExportError, match=f"{value}"):
        parse_chat_export(data, "export.zip")


def test_encrypted_zip_member_is_refused() -> None:
    data = bytearray(make_zip({"_chat.txt": b"[05/01/2024, 10:00:00] Ana: hi\n"}))
    # zipfile cannot write encrypted members: set the flag in the central directory.
    flags = data.index(b"PK\x01\x02") + 8
    data[flags] |= 0x1
    with pytest.raises(ChatExportError, match="encrypted"):
        parse_chat_export(bytes(data), "export.zip")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"\xef\xbb\xbf \n\n", "is empty"),
        ("05/01/2024, 10:00 - Ana: caf\xe9\n".encode("latin-1"), "not UTF-8"),
        (b"just some notes\nwith no timestamps\n", "no WhatsApp message header"),
    ],
)
def test_unreadable_text_is_refused_even_when_partial(data: bytes, message: str) -> None:
    with pytest.raises(ChatExportError, match=message):
        parse_chat_export(data, "chat.txt", partial=True)


# --- round trip ----------------------------------------------------------------------

LETTERS = st.characters(categories=["L", "N"], max_codepoint=0x2FFF) | st.sampled_from(" .,!?'-😀")
SENDERS = st.text(LETTERS, min_size=1, max_size=20).map(str.strip).filter(bool)
LINES = (
    st.text(LETTERS, min_size=1, max_size=30)
    .map(str.strip)
    .filter(lambda line: bool(line) and not line[0].isdigit())
)
TEXTS = st.lists(LINES, min_size=1, max_size=3).map("\n".join)
WHEN = st.datetimes(min_value=at("2009-01-01T00:00"), max_value=at("2099-12-31T23:59:59"))


def _hour12(when: datetime) -> str:
    return f"{(when.hour - 1) % 12 + 1}:{when:%M}"


def _ampm(when: datetime) -> str:
    return "AM" if when.hour < 12 else "PM"


# style -> (date order, is iOS, header for a timestamp); Android headers carry no seconds.
RENDERERS: dict[str, tuple[str, bool, Callable[[datetime], str]]] = {
    "android DMY 24h": (
        "DMY",
        False,
        lambda w: f"{w:%d/%m/%Y}, {w:%H:%M} - ",
    ),
    "android MDY 12h": (
        "MDY",
        False,
        lambda w: f"{w.month}/{w.day}/{w:%y}, {_hour12(w)}{NNBSP}{_ampm(w)} - ",
    ),
    "android DMY dotted": ("DMY", False, lambda w: f"{w:%d.%m.%y}, {w:%H:%M} - "),
    "android YMD": ("YMD", False, lambda w: f"{w:%Y/%m/%d} {w:%H:%M} - "),
    "ios DMY 24h": ("DMY", True, lambda w: f"[{w:%d/%m/%Y}, {w:%H:%M:%S}] "),
    "ios MDY 12h": (
        "MDY",
        True,
        lambda w: f"{LRM}[{w.month}/{w.day}/{w:%y}, {_hour12(w)}:{w:%S}{NNBSP}{_ampm(w)}] ",
    ),
}


@settings(max_examples=150, deadline=None)
@given(
    style=st.sampled_from(sorted(RENDERERS)),
    sent=st.lists(st.tuples(SENDERS, TEXTS, WHEN), min_size=1, max_size=8),
)
def test_round_trip(style: str, sent: list[tuple[str, str, datetime]]) -> None:
    order, ios, header = RENDERERS[style]
    export = "".join(f"{header(when)}{sender}: {text}\n" for sender, text, when in sent)
    parsed = parse_text(export)
    if parsed.date_order_guessed and parsed.date_order != order:
        assert order == "MDY"
        parsed = parse_text(export, date_order="MDY")
    assert parsed.date_order == order
    assert parsed.platform == ("ios" if ios else "android")
    assert [(m.sender, m.text, m.sent_at, m.kind) for m in parsed.messages] == [
        (
            sender,
            text,
            when.replace(microsecond=0, second=when.second if ios else 0),
            "text",
        )
        for sender, text, when in sent
    ]
