"""Tests for the WhatsApp "Export chat" parser."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver.core.errors import ArchiverError
from archiver.imports import chat_export
from archiver.imports.chat_export import (
    ChatExportError,
    DateOrder,
    DateOrderAmbiguous,
    ExportedMessage,
    ParsedExport,
    ParseProblem,
    parse_chat_export,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "chat_exports"
NNBSP = "\u202f"
LRM = "\u200e"


def at(iso: str) -> datetime:
    """A naive local timestamp, as the parser returns them."""
    return datetime.fromisoformat(iso)


def fixture(name: str) -> ParsedExport:
    return parse_chat_export((FIXTURES / name).read_bytes(), name)


def parse_text(
    text: str, *, partial: bool = False, date_order: DateOrder | None = None
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
        "mdy",
        "system system text text media_omitted deleted deleted text system media",
    ),
    "android_en_gb.txt": ("android", "dmy", "system text text text media media_omitted text"),
    "android_de.txt": (
        "android",
        "dmy",
        "system text text media_omitted deleted media text system",
    ),
    "android_es.txt": ("android", "dmy", "system text text media_omitted deleted media text"),
    "android_fr.txt": ("android", "dmy", "system text text media_omitted deleted media text"),
    "android_pt_br.txt": ("android", "dmy", "system text text media_omitted deleted media text"),
    "android_ja.txt": (
        "android",
        "ymd",
        "system text text media_omitted deleted media text system",
    ),
    "ios_en_gb.txt": (
        "ios",
        "dmy",
        "system system system text text media media_omitted deleted text media_omitted text system",
    ),
    "ios_en_us.txt": ("ios", "mdy", "system text text media deleted text media_omitted text"),
    "ios_de.txt": ("ios", "dmy", "system text text media media_omitted deleted text"),
}


@pytest.mark.parametrize("name", sorted(FIXTURE_KINDS))
def test_every_fixture_parses_with_its_platform_order_and_kinds(name: str) -> None:
    platform, order, kinds = FIXTURE_KINDS[name]
    parsed = fixture(name)
    assert parsed.platform == platform
    assert parsed.date_order == order
    assert parsed.date_order_reason.startswith(f"{order}: ")
    assert parsed.errors == parsed.warnings == []
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
    message = parse_text(f"[13/01/2024, 10:00:00] Ana: {body}\n").messages[0]
    assert (message.kind, message.attachment, message.sender) == (kind, attachment, "Ana")


def test_android_subject_change_with_a_colon_is_a_system_line() -> None:
    message = parse_text('13/01/2024, 10:00 - Ana changed the subject from "Q1" to "Q2: plan"\n')
    assert message.messages[0].sender is None
    assert message.messages[0].kind == "system"


class Sample(NamedTuple):
    """A real-format export (written for these tests in the format seen in
    ``source``) and what it must read as: per message ``(local time, sender,
    kind, text, attachment)``, and the lines warned about."""

    source: str
    text: str
    messages: list[tuple[str, str | None, str, str, str | None]]
    warnings: tuple[int, ...] = ()
    date_order: DateOrder | None = None


# Sources: "P" = Pustur/whatsapp-chat-parser tests/parser.test.ts, "I" =
# AyazKhuraishi/whatsapp-export-inconsistencies (its message, system-message and
# attachment pages), "W" = gesiscss/WhatsR inst/Languages.csv; issue threads by URL.
P = "Pustur/whatsapp-chat-parser tests/parser.test.ts"
SAMPLES = {
    # -- byte-order marks and invisible marks ------------------------------------
    "BOM before the first bracket": Sample(
        "gesiscss/WhatsR R/parse_chat.R (strips U+FEFF from exports)",
        "\ufeff[14.03.19, 08:15:02] Lena: Ist der Tisch frei?\n",
        [("2019-03-14T08:15:02", "Lena", "text", "Ist der Tisch frei?", None)],
    ),
    "BOM inside the iOS bracket": Sample(
        "issue 15 (an iOS export whose first line is [\\ufeff29.01.18, 12:24:03])",
        "[\ufeff29.01.18, 12:24:03] Lena: Hallo\n[29.01.18, 12:25:10] Café Rot: Guten Tag\n",
        [
            ("2018-01-29T12:24:03", "Lena", "text", "Hallo", None),
            ("2018-01-29T12:25:10", "Café Rot", "text", "Guten Tag", None),
        ],
    ),
    "LRM before the bracket, p. m. with seconds": Sample(
        f"{P} (format 8)",
        f"{LRM}[3/6/18 1:55:00 p. m.] Ana: hola\n[23/6/18 9:05:00 a. m.] Ana: buenas\n",
        [
            ("2018-06-03T13:55", "Ana", "text", "hola", None),
            ("2018-06-23T09:05", "Ana", "text", "buenas", None),
        ],
    ),
    # -- date and time shapes ---------------------------------------------------
    "dashes in the date, dotted time, PM": Sample(
        f"{P} (format 2)",
        "03-06-2018, 01.55 PM - Ana: ok\n13-06-2018, 11.02 AM - Ana: later\n",
        [
            ("2018-06-03T13:55", "Ana", "text", "ok", None),
            ("2018-06-13T11:02", "Ana", "text", "later", None),
        ],
    ),
    "dotted time and a colon after it": Sample(
        f"{P} (format 3)",
        "13.06.18 21.25.15: Aino: moi\n",
        [("2018-06-13T21:25:15", "Aino", "text", "moi", None)],
    ),
    "Finnish klo between date and time": Sample(
        f"{P} (format 5)",
        "13.6.2018 klo 21.25.15 - Aino: nähdään huomenna\n",
        [("2018-06-13T21:25:15", "Aino", "text", "nähdään huomenna", None)],
    ),
    "Finnish iOS: dotted time in the bracket": Sample(
        "AyazKhuraishi/whatsapp-export-inconsistencies inconsistencies-messages/message-format.md",
        "[1.1.2019, 12.00.00] John Doe: Hello\n[13.1.2019, 12.00.00] Jane Doe: Hey!\nP.S. ok\n",
        [
            ("2019-01-01T12:00", "John Doe", "text", "Hello", None),
            ("2019-01-13T12:00", "Jane Doe", "text", "Hey!\nP.S. ok", None),
        ],
    ),
    "spaces in the date and a final dot, no separator": Sample(
        f"{P} (format 6)",
        "13. 6. 2018. 21:25:15 Marko: vidimo se\n14. 6. 2018. 08:00:01 Ivana: dobro\n",
        [
            ("2018-06-13T21:25:15", "Marko", "text", "vidimo se", None),
            ("2018-06-14T08:00:01", "Ivana", "text", "dobro", None),
        ],
    ),
    "month first in a dotted iOS date": Sample(
        "joweich/chat-miner test/whatsapp/test_dateformat5.txt",
        "[10.21.21, 15:21:45] John Doe: Lorem ipsum : dolor\n",
        [("2021-10-21T15:21:45", "John Doe", "text", "Lorem ipsum : dolor", None)],
    ),
    "year first with brackets and a comma": Sample(
        f"{P} (format 9)",
        "[2018/06/13, 21:25:15] Ana: m\n",
        [("2018-06-13T21:25:15", "Ana", "text", "m", None)],
    ),
    "Swedish-Finnish Android: ISO date, no comma": Sample(
        "AyazKhuraishi/whatsapp-export-inconsistencies inconsistencies-messages/message-format.md",
        "2019-01-01 12:00 - +1 (000) 000-0000: Good day!\n",
        [("2019-01-01T12:00", "+1 (000) 000-0000", "text", "Good day!", None)],
    ),
    "time with a final dot": Sample(
        "joweich/chat-miner test/whatsapp/test_dateformat3.txt",
        "2022/12/14, 13:34. - John Doe: Lorem ipsum dolor sit amet.\n",
        [("2022-12-14T13:34", "John Doe", "text", "Lorem ipsum dolor sit amet.", None)],
    ),
    "dashes, day first, seconds in brackets": Sample(
        "https://github.com/automaciej/whatsapp-archive/issues/4",
        "[27-11-18 18:43:20] Tom Hanks: Message\n",
        [("2018-11-27T18:43:20", "Tom Hanks", "text", "Message", None)],
    ),
    "month first with dashes in brackets": Sample(
        "https://github.com/gesiscss/WhatsR/issues/32",
        "[01-29-2018, 23:33:00] Alice: Hello?\n[01-29-2018, 23:45:01] Bob: Hello\n",
        [
            ("2018-01-29T23:33", "Alice", "text", "Hello?", None),
            ("2018-01-29T23:45:01", "Bob", "text", "Hello", None),
        ],
    ),
    "iOS before 2017: no brackets, colon after the time": Sample(
        "https://github.com/automaciej/whatsapp-archive/issues/1",
        "2016-06-27, 8:04:08 AM: Neil: Hi\n2016-06-27, 8:05:30 PM: Ana: Hi Neil\n",
        [
            ("2016-06-27T08:04:08", "Neil", "text", "Hi", None),
            ("2016-06-27T20:05:30", "Ana", "text", "Hi Neil", None),
        ],
    ),
    "old colon style, day first, 24-hour": Sample(
        "https://github.com/nmoya/whatsapp-parser/issues/4",
        "24/3/14, 13:59:59: Sender Name: Message\n",
        [("2014-03-24T13:59:59", "Sender Name", "text", "Message", None)],
    ),
    "Indonesian: dotted time, no comma": Sample(
        "https://github.com/mtln/chat-export/pull/28",
        "30/08/25 18.00 - Budi: sudah sampai\n",
        [("2025-08-30T18:00", "Budi", "text", "sudah sampai", None)],
    ),
    # -- 12-hour clocks in many locales -------------------------------------------
    "Spanish p. m. with a no-break space inside": Sample(
        "https://github.com/Pustur/whatsapp-chat-parser/issues/224",
        "20/6/2017 8:28\u00a0p.\u00a0m. - Michelle: test\n",
        [("2017-06-20T20:28", "Michelle", "text", "test", None)],
    ),
    "US Android: U+202F before PM": Sample(
        f"{P} (format 12)",
        f"3/16/18, 1:55{NNBSP}PM - Ana: m\n",
        [("2018-03-16T13:55", "Ana", "text", "m", None)],
    ),
    "Canadian English: year first and p.m.": Sample(
        "https://github.com/dimagi/open-chat-studio/issues/221",
        "2023-12-20, 5:46 p.m. - Farid: 👋🏼\n2023/12/20, 5:47 am - Farid: again\n",
        [
            ("2023-12-20T17:46", "Farid", "text", "👋🏼", None),
            ("2023-12-20T05:47", "Farid", "text", "again", None),
        ],
    ),
    "emoji in the sender, p. m.": Sample(
        "joweich/chat-miner test/whatsapp/test_unicode.txt",
        "29/10/22, 10:37 p. m. - John Doe 🤓: Testing emoji 🤓\n",
        [("2022-10-29T22:37", "John Doe 🤓", "text", "Testing emoji 🤓", None)],
    ),
    "Japanese markers before the time, hour 0": Sample(
        "https://github.com/ChatLab/ChatLab/pull/280 (午前/午後 before the time)",
        "2024/03/01 午前0:05 - 山田: おはよう\n2024/03/01 午後9:05 - 山田: こんばんは\n",
        [
            ("2024-03-01T00:05", "山田", "text", "おはよう", None),
            ("2024-03-01T21:05", "山田", "text", "こんばんは", None),
        ],
    ),
    "Korean: spaced year-first date, 오전/오후 before the time": Sample(
        "https://github.com/ChatLab/ChatLab/pull/280 (오전/오후); Korean dates as in "
        "https://github.com/scrapinghub/dateparser/issues/1139",
        "2023. 3. 18. 오전 10:58 - 김민준: 안녕하세요\n2023. 3. 18. 오후 12:03 - 이서연: 네\n",
        [
            ("2023-03-18T10:58", "김민준", "text", "안녕하세요", None),
            ("2023-03-18T12:03", "이서연", "text", "네", None),
        ],
    ),
    "Chinese iOS: 上午/下午 before the time": Sample(
        "https://github.com/ChatLab/ChatLab/pull/280 ([2026/7/9 02:28:09], 上午/下午)",
        "[2022/7/21 上午5:11:12] 王芳: 你好\n[2022/7/21 下午12:30:00] 李雷: 下午好\n",
        [
            ("2022-07-21T05:11:12", "王芳", "text", "你好", None),
            ("2022-07-21T12:30", "李雷", "text", "下午好", None),
        ],
    ),
    "marker after the time on a CJK clock": Sample(
        "https://github.com/ChatLab/ChatLab/pull/280 (markers after the time)",
        "2024/5/2 3:07 下午 - 张三: 到了\n",
        [("2024-05-02T15:07", "张三", "text", "到了", None)],
    ),
    "PM beside hour 13: read as 24-hour, warned": Sample(
        "https://github.com/lucasrodes/whatstk/issues/17",
        "04/15/2016 13:19:20 PM - Person1: hello\n04/15/2016 1:20:20 PM - Person2: hi\n",
        [
            ("2016-04-15T13:19:20", "Person1", "text", "hello", None),
            ("2016-04-15T13:20:20", "Person2", "text", "hi", None),
        ],
        warnings=(1,),
    ),
    "AM beside hour 0: read as 24-hour, warned": Sample(
        "https://github.com/lucasrodes/whatstk/issues/17 (a marker on a 24-hour clock)",
        "[15/04/2016, 0:12:00 AM] Ana: late\n[15/04/2016, 23:40:00 PM] Ana: later\n",
        [
            ("2016-04-15T00:12", "Ana", "text", "late", None),
            ("2016-04-15T23:40", "Ana", "text", "later", None),
        ],
        warnings=(1, 2),
    ),
    # -- attachments ---------------------------------------------------------------
    "iOS attachment with spaces inside the brackets": Sample(
        f"{P} (parseAttachments format 1)",
        "13/6/18, 1:55 p.m. - a: < attached: 00000042-PHOTO-2020-06-07-15-13-20.jpg >\n",
        [
            (
                "2018-06-13T13:55",
                "a",
                "media",
                "< attached: 00000042-PHOTO-2020-06-07-15-13-20.jpg >",
                "00000042-PHOTO-2020-06-07-15-13-20.jpg",
            )
        ],
    ),
    "older iOS attachment: name, then <attached>": Sample(
        f"{P} (parseAttachments format 3)",
        f"13/6/18, 1:55 p.m. - a: 2015-08-04-PHOTO-00004762.jpg <{LRM}attached>\n",
        [
            (
                "2018-06-13T13:55",
                "a",
                "media",
                "2015-08-04-PHOTO-00004762.jpg <attached>",
                "2015-08-04-PHOTO-00004762.jpg",
            )
        ],
    ),
    "Android attachment with its caption on the next line": Sample(
        f"{P} (parseAttachments format 4)",
        f"13/6/18, 1:55 p.m. - a: {LRM}4f2680f1db95a8454775cc2eefc95bfc.jpg (Datei angehängt)\n"
        "Dir auch frohe Ostern.\n",
        [
            (
                "2018-06-13T13:55",
                "a",
                "media",
                "4f2680f1db95a8454775cc2eefc95bfc.jpg (Datei angehängt)\nDir auch frohe Ostern.",
                "4f2680f1db95a8454775cc2eefc95bfc.jpg",
            )
        ],
    ),
    "iOS document: title and pages before <attached: …>": Sample(
        "https://github.com/mazen160/whatsapp-chat-parser/pull/3",
        "[11/13/22, 4:19:15 PM] Mycorporation: V--- SEGA RS.pdf • 14 pages "
        "<attached: 00000002-RS.pdf>\n",
        [
            (
                "2022-11-13T16:19:15",
                "Mycorporation",
                "media",
                "V--- SEGA RS.pdf • 14 pages <attached: 00000002-RS.pdf>",
                "00000002-RS.pdf",
            )
        ],
    ),
    "iOS contact card and Android audio without an extension": Sample(
        "AyazKhuraishi/whatsapp-export-inconsistencies inconsistencies-media/"
        "attachments-non-conformant.md",
        "[13/01/2019, 12:00:00] Jane: <attached: 00000001-John Doe.vcf>\n"
        "[13/01/2019, 12:00:05] Jane: AUD-20190101-WA0000. (file attached)\n",
        [
            (
                "2019-01-13T12:00",
                "Jane",
                "media",
                "<attached: 00000001-John Doe.vcf>",
                "00000001-John Doe.vcf",
            ),
            (
                "2019-01-13T12:00:05",
                "Jane",
                "media",
                "AUD-20190101-WA0000. (file attached)",
                "AUD-20190101-WA0000.",
            ),
        ],
    ),
    "Android document: its name repeated on the next line": Sample(
        "AyazKhuraishi/whatsapp-export-inconsistencies inconsistencies-media/"
        "attachments-non-conformant.md",
        "2019-01-13 12:00 - Jane: test_document.pdf (file attached)\ntest_document\n",
        [
            (
                "2019-01-13T12:00",
                "Jane",
                "media",
                "test_document.pdf (file attached)\ntest_document",
                "test_document.pdf",
            )
        ],
    ),
    "iOS without media: document and contact card omitted": Sample(
        "AyazKhuraishi/whatsapp-export-inconsistencies inconsistencies-media/"
        "attachments-non-conformant.md",
        f"[13/1/2019, 12:00:00] Jane: {LRM}test_document • 1 page document omitted\n"
        f"[13/1/2019, 12:00:09] Jane: {LRM}Contact card omitted\n",
        [
            (
                "2019-01-13T12:00",
                "Jane",
                "media_omitted",
                "test_document • 1 page document omitted",
                None,
            ),
            ("2019-01-13T12:00:09", "Jane", "media_omitted", "Contact card omitted", None),
        ],
    ),
    # -- system lines --------------------------------------------------------------
    "Android: encryption notice and group creation": Sample(
        "Pustur/whatsapp-chat-parser tests/index.test.ts",
        "16/03/2017, 00:45 - Messages to this group are now secured with end-to-end "
        "encryption. Tap for more info.\n"
        '16/03/2017, 00:45 - You created group "ShortChat"\n'
        "16/03/2017, 00:46 - Sample User: This is a test message\n",
        [
            (
                "2017-03-16T00:45",
                None,
                "system",
                "Messages to this group are now secured with end-to-end encryption. "
                "Tap for more info.",
                None,
            ),
            ("2017-03-16T00:45", None, "system", 'You created group "ShortChat"', None),
            ("2017-03-16T00:46", "Sample User", "text", "This is a test message", None),
        ],
    ),
    "iOS group notices under the group's name": Sample(
        "https://github.com/lucasrodes/whatstk/issues/139",
        f"[12/27/20, 18:51:14] My Group 2023: {LRM}Messages and calls are end-to-end "
        "encrypted. No one outside of this chat, not even WhatsApp, can read or listen to them.\n"
        f"[7/20/21, 11:21:27] +1 (777) 777\u20117777: {LRM}+1 (777) 777\u20117777 joined "
        "using this group's invite link\n"
        "[7/18/21, 18:34:07] ~ Nev: That's awesome.\n",
        [
            (
                "2020-12-27T18:51:14",
                None,
                "system",
                "Messages and calls are end-to-end encrypted. No one outside of this chat, not "
                "even WhatsApp, can read or listen to them.",
                None,
            ),
            (
                "2021-07-20T11:21:27",
                None,
                "system",
                "+1 (777) 777\u20117777 joined using this group's invite link",
                None,
            ),
            ("2021-07-18T18:34:07", "~ Nev", "text", "That's awesome.", None),
        ],
    ),
    "older iOS: notices without U+200E": Sample(
        "AyazKhuraishi/whatsapp-export-inconsistencies inconsistencies-messages/"
        "system-messages.md; W (number and security-code changes)",
        "[13.1.2019, 12.00.00] Jane Doe: Messages to this chat and calls are now secured "
        "with end-to-end encryption.\n"
        "[13.1.2019, 12.01.00] Jane Doe: Your security code with Jane Doe changed. Tap to "
        "learn more.\n"
        "[13.1.2019, 12.02.00] Jane Doe: Jane Doe changed their phone number to a new number. "
        "Tap to message or add the new number.\n"
        "[13.1.2019, 12.03.00] Jane Doe: I changed my number too\n",
        [
            (
                "2019-01-13T12:00",
                None,
                "system",
                "Messages to this chat and calls are now secured with end-to-end encryption.",
                None,
            ),
            (
                "2019-01-13T12:01",
                None,
                "system",
                "Your security code with Jane Doe changed. Tap to learn more.",
                None,
            ),
            (
                "2019-01-13T12:02",
                None,
                "system",
                "Jane Doe changed their phone number to a new number. Tap to message or add "
                "the new number.",
                None,
            ),
            ("2019-01-13T12:03", "Jane Doe", "text", "I changed my number too", None),
        ],
    ),
    "older iOS: number changes in English and German": Sample(
        "gesiscss/WhatsR inst/Languages.csv (englishios, germanios)",
        "[13.01.23, 09:00:00] Chor: +44 7700 900123 changed to +44 7700 900124\n"
        "[13.01.23, 09:01:00] Chor: Lea hat eine neue Telefonnummer. Tippe, um eine Nachricht "
        "zu schreiben oder die neue Nummer hinzuzufügen.\n",
        [
            (
                "2023-01-13T09:00",
                None,
                "system",
                "+44 7700 900123 changed to +44 7700 900124",
                None,
            ),
            (
                "2023-01-13T09:01",
                None,
                "system",
                "Lea hat eine neue Telefonnummer. Tippe, um eine Nachricht zu schreiben oder die "
                "neue Nummer hinzuzufügen.",
                None,
            ),
        ],
    ),
    "German: leaves, number changes, deletions": Sample(
        "gesiscss/WhatsR inst/Languages.csv (germanandroid, germanios)",
        "13.01.23, 09:00 - Jonas hat die Gruppe verlassen.\n"
        "13.01.23, 09:01 - +49 151 1234567 hat zu +49 170 7654321 gewechselt.\n"
        "13.01.23, 09:02 - Lea: Diese Nachricht wurde gelöscht.\n",
        [
            ("2023-01-13T09:00", None, "system", "Jonas hat die Gruppe verlassen.", None),
            (
                "2023-01-13T09:01",
                None,
                "system",
                "+49 151 1234567 hat zu +49 170 7654321 gewechselt.",
                None,
            ),
            ("2023-01-13T09:02", "Lea", "deleted", "Diese Nachricht wurde gelöscht.", None),
        ],
    ),
    "German iOS: notices without U+200E": Sample(
        "gesiscss/WhatsR inst/Languages.csv (germanios)",
        "[13.01.23, 09:03:00] Weinhandlung Vogel: Nachrichten und Anrufe sind "
        "Ende-zu-Ende-verschlüsselt. Tippe, um mehr zu erfahren.\n"
        "[13.01.23, 09:04:00] Weinhandlung Vogel: Deine Sicherheitsnummer für Lea hat sich "
        "geändert. Tippe, um mehr zu erfahren.\n",
        [
            (
                "2023-01-13T09:03",
                None,
                "system",
                "Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt. Tippe, um mehr zu "
                "erfahren.",
                None,
            ),
            (
                "2023-01-13T09:04",
                None,
                "system",
                "Deine Sicherheitsnummer für Lea hat sich geändert. Tippe, um mehr zu erfahren.",
                None,
            ),
        ],
    ),
    "Spanish Android: joins and leaves in a group": Sample(
        "a Spanish Android group export in a public parser's test data (exact-string search "
        "of the code index; it names no repository)",
        "01/02/22 5:05 p. m. - +39 349 849 6335 se unió usando el enlace de invitación de "
        "este grupo\n"
        "01/02/22 5:26 p. m. - +420 739 534 759 salió del grupo\n"
        "13/02/22 7:25 p. m. - +44 7944 771107: ¡Gran partido hoy!\n"
        "13/02/22 7:32 p. m. - Ana: <Multimedia omitido>\n",
        [
            (
                "2022-02-01T17:05",
                None,
                "system",
                "+39 349 849 6335 se unió usando el enlace de invitación de este grupo",
                None,
            ),
            ("2022-02-01T17:26", None, "system", "+420 739 534 759 salió del grupo", None),
            ("2022-02-13T19:25", "+44 7944 771107", "text", "¡Gran partido hoy!", None),
            ("2022-02-13T19:32", "Ana", "media_omitted", "<Multimedia omitido>", None),
        ],
    ),
    "Chinese iOS: encryption notice without U+200E": Sample(
        "EricluvPython/mimic.ai test_parser.py",
        "[2022/7/21 05:11:12] Sunaya: 消息和通话已进行端到端加密。只有此聊天中的成员可以查看、"
        "收听或分享。\n[2022/7/21 05:21:28] Sunaya: Yes\n",
        [
            (
                "2022-07-21T05:11:12",
                None,
                "system",
                "消息和通话已进行端到端加密。只有此聊天中的成员可以查看、收听或分享。",
                None,
            ),
            ("2022-07-21T05:21:28", "Sunaya", "text", "Yes", None),
        ],
    ),
    "Dutch and Russian deletions and omitted media": Sample(
        "public parsers' notice lists (exact-string search of the code index; it names no "
        "repository): Dit bericht is verwijderd, <Media weggelaten>, Данное сообщение удалено, "
        "<Без медиафайлов>",
        "13-01-2024 10:00 - Daan: Dit bericht is verwijderd\n"
        "13-01-2024 10:01 - Daan: <Media weggelaten>\n"
        "13-01-2024 10:02 - Ольга: Данное сообщение удалено\n"
        "13-01-2024 10:03 - Ольга: <Без медиафайлов>\n",
        [
            ("2024-01-13T10:00", "Daan", "deleted", "Dit bericht is verwijderd", None),
            ("2024-01-13T10:01", "Daan", "media_omitted", "<Media weggelaten>", None),
            ("2024-01-13T10:02", "Ольга", "deleted", "Данное сообщение удалено", None),
            ("2024-01-13T10:03", "Ольга", "media_omitted", "<Без медиафайлов>", None),
        ],
    ),
    # -- the date order given by the importer -------------------------------------
    "all days 12 or less, read month first as given": Sample(
        "https://github.com/Pustur/whatsapp-chat-parser (daysFirst option), tests/parser.test.ts",
        "3/6/18, 1:55 p.m. - a: m\n",
        [("2018-03-06T13:55", "a", "text", "m", None)],
        date_order="mdy",
    ),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_real_format_sample_reads_as_expected(name: str) -> None:
    sample = SAMPLES[name]
    parsed = parse_text(sample.text, date_order=sample.date_order)
    assert [(m.sent_at, m.sender, m.kind, m.text, m.attachment) for m in parsed.messages] == [
        (at(when), *rest) for when, *rest in sample.messages
    ]
    assert [w.line_number for w in parsed.warnings] == list(sample.warnings)
    assert all("read as the 24-hour time" in w.reason for w in parsed.warnings)
    assert parsed.errors == []
    assert all((m.sender is None) == (m.kind == "system") for m in parsed.messages)


@pytest.mark.parametrize("name", sorted(n for n in FIXTURE_KINDS if n.startswith("android")))
def test_each_fixture_encryption_notice_is_a_system_line_on_older_ios(name: str) -> None:
    """Android prints the notice without a sender; older iOS under the chat's name
    and without U+200E, which only the notice's own wording tells apart."""
    notice = fixture(name).messages[0]
    assert notice.kind == "system"
    on_ios = parse_text(f"[2024/03/01 10:00:00] Chat name: {notice.text}\n").messages[0]
    assert (on_ios.kind, on_ios.sender, on_ios.text) == ("system", None, notice.text)


@pytest.mark.parametrize(
    ("text", "order", "because", "first"),
    [
        # Day first: a first field over 12; month first: a second field over 12.
        ("03/04/2024, 10:00 - Ana: a\n13/04/2024, 10:00 - Ana: b\n", "dmy", "day first", 2),
        ("03/04/24, 10:00 AM - Ana: a\n04/13/24, 10:00 PM - Ana: b\n", "mdy", "month first", 2),
        ("[2024/04/03 10:00:00] Ana: a\n", "ymd", "four-digit year", None),
    ],
)
def test_the_date_order_is_inferred_and_the_reason_given(
    text: str, order: str, because: str, first: int | None
) -> None:
    parsed = parse_text(text)
    assert parsed.date_order == order
    assert because in parsed.date_order_reason
    if first is not None:
        assert f"on line {first}" in parsed.date_order_reason
    assert parsed.messages[0].sent_at.date().isoformat() in ("2024-04-03", "2024-03-04")


@pytest.mark.parametrize(
    "text",
    [
        # Every day 12 or less: nothing tells, so nothing is guessed.
        "03/04/2024, 10:00 - Ana: a\n05/04/2024, 10:00 - Ana: b\n",
        # As many dates fit only one order as only the other.
        "13/04/2024, 10:00 - Ana: a\n04/14/2024, 10:00 - Ana: b\n",
    ],
)
def test_an_ambiguous_date_order_is_refused_unless_given(text: str) -> None:
    for partial in (False, True):
        with pytest.raises(DateOrderAmbiguous) as caught:
            parse_text(text, partial=partial)
    (problem,) = caught.value.problems
    assert problem.line_number == 1
    assert problem.text == text.splitlines()[0]
    assert "day and month order cannot be told" in problem.reason
    assert "dmy or mdy" in problem.reason
    forced = parse_text(text, date_order="dmy", partial=True)
    assert forced.date_order == "dmy"
    assert forced.date_order_reason == "dmy, as given by the importer"
    assert forced.messages[0].sent_at.month == 4


def test_a_date_against_the_inferred_order_is_a_problem() -> None:
    text = "13/04/2024, 10:00 - Ana: a\n14/04/2024, 10:00 - Ana: b\n04/15/2024, 10:00 - Ana: c\n"
    parsed = parse_text(text, partial=True)
    assert parsed.date_order == "dmy"
    assert "1 date fits only the other order, refused" in parsed.date_order_reason
    assert [m.text for m in parsed.messages] == ["a", "b"]
    assert parsed.errors == [
        ParseProblem(3, "impossible date '04/15/2024' (read as dmy)", "04/15/2024, 10:00 - Ana: c")
    ]


# Each refusal: the text, and the (line, reason, quoted text) of every problem.
REFUSALS = {
    "a first line that is no header": (
        "Chat history with Ana\n13/01/2024, 10:00 - Ana: hello\n",
        [(1, "not a message header, and no message precedes it", "Chat history with Ana")],
    ),
    "an impossible date and its continuation": (
        "13/01/2023, 10:00 - Ana: fine\n32/13/2023, 10:01 - Ana: broken\nmore of it\n",
        [
            (2, "impossible date '32/13/2023' (read as dmy)", "32/13/2023, 10:01 - Ana: broken"),
            (3, "continues a message whose header is unreadable", "more of it"),
        ],
    ),
    "a damaged time": (
        "13/01/2023, 09:00 - Ana: ok\n13/01/2023, 9:5x PM - Ana: typo\n",
        [
            (
                2,
                "timestamp header with an unreadable date or time",
                "13/01/2023, 9:5x PM - Ana: typo",
            )
        ],
    ),
    "an impossible time": (
        "13/01/2023, 09:00 - Ana: ok\n13/01/2023, 25:61 - Ana: late\n",
        [(2, "impossible time '25:61'", "13/01/2023, 25:61 - Ana: late")],
    ),
    "too many seconds in a bracket": (
        "[13/01/2023, 09:00:00] Ana: ok\n[13/01/2023, 10:00:61] Ana: x\n",
        [(2, "impossible time '10:00:61'", "[13/01/2023, 10:00:61] Ana: x")],
    ),
    "no time in a bracket": (
        "[13/01/2023, 09:00:00] Ana: ok\n[13/01/2023, half past ten] Ana: no time\n",
        [
            (
                2,
                "timestamp header with an unreadable date or time",
                "[13/01/2023, half past ten] Ana: no time",
            )
        ],
    ),
    "a long line is quoted to 80 characters, without marks": (
        f"13/01/2023, 09:00 - Ana: ok\n{LRM}32/01/2023, 09:00 - Ana: {'x' * 100}\n",
        [
            (
                2,
                "impossible date '32/01/2023' (read as dmy)",
                f"32/01/2023, 09:00 - Ana: {'x' * 100}"[:80],
            )
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refusals_name_the_line_its_start_and_the_reason(name: str) -> None:
    text, expected = REFUSALS[name]
    with pytest.raises(ChatExportError) as caught:
        parse_text(text)
    assert [(p.line_number, p.reason, p.text) for p in caught.value.problems] == expected
    assert isinstance(caught.value, ArchiverError)
    # The message lists lines and reasons, never the lines' text.
    assert f"line {expected[0][0]}: {expected[0][1]}" in str(caught.value)
    assert expected[0][2] not in str(caught.value)

    partial = parse_text(text, partial=True)
    assert [(p.line_number, p.reason, p.text) for p in partial.errors] == expected
    assert partial.messages


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
        ({"_chat.txt": b"[13/01/2024, 10:00:00] A: b", "../evil.sh": b"x"}, "unsafe member"),
        ({"_chat.txt": b"[13/01/2024, 10:00:00] A: b", "/etc/passwd": b"x"}, "unsafe member"),
        ({"_chat.txt": b"[13/01/2024, 10:00:00] A: b", "C:/x.jpg": b"x"}, "unsafe member"),
        ({"_chat.txt": b"[13/01/2024, 10:00:00] A: b", "a\\..\\x": b"x"}, "unsafe member"),
        ({"_chat.txt": b"x", "media/_chat.txt": b"y"}, "two files named"),
        ({"_chat.txt": b"\xff\xfe\x00"}, "not UTF-8"),
        ({"_chat.txt": b""}, "is empty"),
    ],
)
def test_bad_zips_are_refused(members: dict[str, bytes], message: str) -> None:
    with pytest.raises(ChatExportError, match=message):
        parse_chat_export(make_zip(members), "export.zip")


def test_damaged_zip_is_refused() -> None:
    data = make_zip({"_chat.txt": b"[13/01/2024, 10:00:00] Ana: hi" * 50})
    with pytest.raises(ChatExportError, match="not a readable zip archive"):
        parse_chat_export(data[: len(data) // 2], "export.zip")


def test_a_damaged_media_file_refuses_the_zip_before_any_is_read_for_import(
    tmp_path: Path,
) -> None:
    """Media files are read from the zip one at a time during the import; a damaged
    one (checksum) refuses the whole export at parsing, before anything is imported."""
    photo = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8
    data = bytearray(make_zip({"_chat.txt": b"[13/01/2024, 10:00:00] Ana: hi\n", "a.jpg": photo}))
    path = tmp_path / "export.zip"
    path.write_bytes(data)
    with path.open("rb") as file:
        parsed = parse_chat_export(file, "export.zip")
        assert parsed.media.size("a.jpg") == len(photo)
        assert parsed.media["a.jpg"] == photo
    zipped = zipfile.ZipFile(io.BytesIO(data)).getinfo("a.jpg")
    data[zipped.header_offset + 30 + len("a.jpg") + 10] ^= 0xFF  # inside its data
    path.write_bytes(data)
    with path.open("rb") as file, pytest.raises(ChatExportError, match=r"a\.jpg"):
        parse_chat_export(file, "export.zip")


def test_file_named_zip_that_is_not_a_zip_is_refused() -> None:
    with pytest.raises(ChatExportError, match="not a zip archive"):
        parse_chat_export(b"13/01/2024, 10:00 - Ana: hi\n", "export.zip")


@pytest.mark.parametrize(
    ("limit", "value"),
    [("MAX_ZIP_MEMBER_BYTES", 10), ("MAX_ZIP_TOTAL_BYTES", 40), ("MAX_ZIP_MEMBERS", 2)],
)
def test_zip_bomb_limits(monkeypatch: pytest.MonkeyPatch, limit: str, value: int) -> None:
    chat = b"[13/01/2024, 10:00:00] Ana: hi\n"
    data = make_zip({"_chat.txt": chat, "a.jpg": b"0" * 9, "b.jpg": b"0" * 9})
    assert parse_chat_export(data, "export.zip").messages
    monkeypatch.setattr(chat_export, limit, value)
    with pytest.raises(ChatExportError, match=f"{value}"):
        parse_chat_export(data, "export.zip")


def test_encrypted_zip_member_is_refused() -> None:
    data = bytearray(make_zip({"_chat.txt": b"[13/01/2024, 10:00:00] Ana: hi\n"}))
    # zipfile cannot write encrypted members: set the flag in the central directory.
    flags = data.index(b"PK\x01\x02") + 8
    data[flags] |= 0x1
    with pytest.raises(ChatExportError, match="encrypted"):
        parse_chat_export(bytes(data), "export.zip")


@pytest.mark.parametrize(
    ("data", "message", "line", "quoted"),
    [
        (b"", "is empty", None, ""),
        (b"\xef\xbb\xbf \n\n", "is empty", None, ""),
        (
            "13/01/2024, 10:00 - Ana: hi\n13/01/2024, 10:01 - Ana: caf\xe9\n".encode("latin-1"),
            "not UTF-8",
            2,
            "13/01/2024, 10:01 - Ana: caf\ufffd",
        ),
        (
            b"just some notes\nwith no timestamps\n",
            "no WhatsApp message header",
            1,
            "just some notes",
        ),
        (b"\n32/13/2024, 10:00 - Ana: x\n", "no readable message", 2, "32/13/2024, 10:00 - Ana: x"),
    ],
)
def test_unreadable_text_is_refused_even_when_partial(
    data: bytes, message: str, line: int | None, quoted: str
) -> None:
    with pytest.raises(ChatExportError, match=message) as caught:
        parse_chat_export(data, "chat.txt", partial=True)
    (problem,) = caught.value.problems
    assert (problem.line_number, problem.text) == (line, quoted)
    assert problem.reason


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


def _korean(when: datetime) -> str:
    return "오전" if when.hour < 12 else "오후"


# style -> (date order, platform, seconds kept, header for a timestamp).
RENDERERS: dict[str, tuple[DateOrder, str, bool, Callable[[datetime], str]]] = {
    "android dmy 24h": ("dmy", "android", False, lambda w: f"{w:%d/%m/%Y}, {w:%H:%M} - "),
    "android mdy 12h": (
        "mdy",
        "android",
        False,
        lambda w: f"{w.month}/{w.day}/{w:%y}, {_hour12(w)}{NNBSP}{_ampm(w)} - ",
    ),
    "android dmy dotted": ("dmy", "android", False, lambda w: f"{w:%d.%m.%y}, {w:%H:%M} - "),
    "android ymd": ("ymd", "android", False, lambda w: f"{w:%Y/%m/%d} {w:%H:%M} - "),
    "android Finnish klo": (
        "dmy",
        "android",
        False,
        lambda w: f"{w.day}.{w.month}.{w:%Y} klo {w:%H.%M} - ",
    ),
    "android Korean": (
        "ymd",
        "android",
        False,
        lambda w: f"{w:%Y}. {w.month}. {w.day}. {_korean(w)} {_hour12(w)} - ",
    ),
    "ios dmy 24h": ("dmy", "ios", True, lambda w: f"[{w:%d/%m/%Y}, {w:%H:%M:%S}] "),
    "ios mdy 12h": (
        "mdy",
        "ios",
        True,
        lambda w: f"{LRM}[{w.month}/{w.day}/{w:%y}, {_hour12(w)}:{w:%S}{NNBSP}{_ampm(w)}] ",
    ),
    "ios before 2017": (
        "ymd",
        "ios",
        True,
        lambda w: f"{w:%Y-%m-%d}, {_hour12(w)}:{w:%S} {_ampm(w)}: ",
    ),
    "spaced date, no separator": (
        "dmy",
        "android",
        True,
        lambda w: f"{w.day}. {w.month}. {w:%Y}. {w:%H:%M:%S} ",
    ),
}


@settings(max_examples=150, deadline=None)
@given(
    style=st.sampled_from(sorted(RENDERERS)),
    sent=st.lists(st.tuples(SENDERS, TEXTS, WHEN), min_size=1, max_size=8),
)
def test_round_trip(style: str, sent: list[tuple[str, str, datetime]]) -> None:
    order, platform, seconds, header = RENDERERS[style]
    export = "".join(f"{header(when)}{sender}: {text}\n" for sender, text, when in sent)
    try:
        parsed = parse_text(export)
    except DateOrderAmbiguous:
        parsed = parse_text(export, date_order=order)
    assert parsed.date_order == order
    assert parsed.platform == platform
    assert [(m.sender, m.text, m.sent_at, m.kind) for m in parsed.messages] == [
        (
            sender,
            text,
            when.replace(microsecond=0, second=when.second if seconds else 0),
            "text",
        )
        for sender, text, when in sent
    ]
