"""POST /api/v1/search through a real server: blind-index terms in English and
Japanese, AND, OR, phrases checked on the decrypted text, filters, pagination,
scope and the audit of every search."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from api.bootstrap import open_services
from api.settings import load_settings
from archiver.identity.services import ROLE_PERMISSIONS, Permission, Role
from archiver.records.models import Record
from archiver.vault.models import SealedObject
from tests.e2e.server import Server, fixture
from tests.e2e.test_conversation import OPTED_OUT, RECEIVER_NAME, receipts_conversation

BASE_TIME = 1763700000


def _text(wamid: str, body: str, offset: int, sender: str = "16505551234") -> dict[str, Any]:
    payload = fixture("message_text")
    value = payload["entry"][0]["changes"][0]["value"]
    value["contacts"][0]["wa_id"] = sender
    value["messages"][0].update(
        {"id": wamid, "from": sender, "text": {"body": body}, "timestamp": str(BASE_TIME + offset)}
    )
    return payload


MESSAGES = [
    ("wamid.S-JA", "明日の会議は10時からです", 1, "819012345678"),
    ("wamid.S-JA2", "会議の資料を送ります", 2, "819012345678"),
    ("wamid.S-PHRASE", "The board meeting is moved to Friday", 3, "16505551234"),
    ("wamid.S-APART", "Meeting notes from the board, as promised", 4, "16505551234"),
    ("wamid.S-OTHER", "Your parcel has shipped", 5, "447700900123"),
    *[
        (f"wamid.S-PAGE{i}", f"pagination check number {i}", 10 + i, "447700900123")
        for i in range(7)
    ],
]


@pytest.fixture(scope="module")
def archive(server: Server) -> Server:
    """The server with the messages above and an echoed image, all projected."""
    for wamid, body, offset, sender in MESSAGES:
        assert (
            server.post_webhook(json.dumps(_text(wamid, body, offset, sender)).encode()).status_code
            == 200
        )
    echo = fixture("smb_message_echo_image")  # caption 会議室の地図です, to 819012345678
    assert server.post_webhook(json.dumps(echo).encode()).status_code == 200
    echo_id = echo["entry"][0]["changes"][0]["value"]["message_echoes"][0]["id"]
    for wamid in [m[0] for m in MESSAGES] + [echo_id]:
        server.records_of(wamid)
    return server


def _search(server: Server, headers: dict[str, str] | None = None, **body: Any) -> Any:
    response = server.client.post("/api/v1/search", json=body, headers=headers or server.officer)
    assert response.status_code == 200, response.text
    return response.json()


def _wamids(result: Any) -> list[str]:
    return [r["wamid"] for r in result["results"]]


def test_japanese_term_finds_text_and_caption(archive: Server) -> None:
    found = _search(archive, query="会議")
    assert "wamid.S-JA" in _wamids(found)
    assert "wamid.S-JA2" in _wamids(found)
    captions = [r for r in found["results"] if r["type"] == "image"]
    assert captions
    assert "会議" in captions[0]["snippet"]
    assert [m["mime_type"] for m in captions[0]["media"]] == ["image/jpeg"]
    assert all("会議" in r["snippet"] for r in found["results"])


def test_and_or_and_phrases(archive: Server) -> None:
    assert _wamids(_search(archive, query="会議 10時")) == ["wamid.S-JA"]
    both = _search(archive, query="board meeting")
    assert {"wamid.S-PHRASE", "wamid.S-APART"} <= set(_wamids(both))
    assert _wamids(_search(archive, query='"board meeting"')) == ["wamid.S-PHRASE"]
    either = _wamids(_search(archive, query="parcel OR 資料"))
    assert set(either) == {"wamid.S-OTHER", "wamid.S-JA2"}
    assert _wamids(_search(archive, query="nothing-matches-this")) == []


def test_filters(archive: Server) -> None:
    japanese = _search(archive, query="会議", contact="+81 90-1234-5678")
    assert len(japanese["results"]) == 3
    assert _wamids(_search(archive, query="会議", contact="+16505551234")) == []
    outbound = _search(archive, query="会議", direction="outbound")
    assert [r["source"] for r in outbound["results"]] == ["business_app"]
    assert _search(archive, query="会議", source="business_app")["results"] == outbound["results"]
    assert [r["type"] for r in _search(archive, query="会議", has_media=True)["results"]] == [
        "image"
    ]
    assert len(_search(archive, query="会議", type="text")["results"]) == 2
    since = "2025-11-21T04:40:02Z"  # BASE_TIME + 2 s
    window = _search(archive, query="会議", type="text", since=since)
    assert _wamids(window) == ["wamid.S-JA2"]
    other = _search(archive, query="会議", account_id="acc_not_yours")
    assert other["results"] == []


def _all_pages(archive: Server, query: str) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        body: dict[str, Any] = {"query": query, "limit": 3}
        if cursor:
            body["cursor"] = cursor
        page = _search(archive, **body)
        seen += _wamids(page)
        cursor = page["next_cursor"]
        if not cursor:
            break
    return seen


def test_pagination_in_time_order(archive: Server) -> None:
    pages = [f"wamid.S-PAGE{i}" for i in range(7)]
    assert _all_pages(archive, "pagination") == pages
    # OR groups are merged in time order across pages.
    assert _all_pages(archive, "number OR parcel OR 資料") == [
        "wamid.S-JA2",
        "wamid.S-OTHER",
        *pages,
    ]


def test_filters_alone_list_a_contacts_messages_over_dates(archive: Server) -> None:
    # BASE_TIME + 10 s to + 13 s: the first three pagination messages.
    window = {"since": "2025-11-21T04:40:10Z", "until": "2025-11-21T04:40:13Z"}
    found = _search(archive, contact="+44 7700 900123", **window)
    assert _wamids(found) == ["wamid.S-PAGE0", "wamid.S-PAGE1", "wamid.S-PAGE2"]
    assert found["results"][0]["snippet"] == "pagination check number 0"
    assert all(r["kind"] != "status" for r in _search(archive, limit=200)["results"])
    first = _search(archive, query="  ", contact="+44 7700 900123", limit=2)
    rest = _search(archive, contact="+44 7700 900123", cursor=first["next_cursor"])
    assert _wamids(first) + _wamids(rest) == ["wamid.S-OTHER"] + [
        f"wamid.S-PAGE{i}" for i in range(7)
    ]


def test_on_hold_filter_follows_the_vaults_legal_hold(archive: Server) -> None:
    held = archive.records_of("wamid.S-JA2")[0]["id"]

    async def hold() -> None:
        services = await open_services(load_settings(archive.env))
        try:
            async with services.sessions() as session, session.begin():
                record = await session.get(Record, held)
                assert record is not None
                sealed = await session.get(SealedObject, record.object_id)
                assert sealed is not None
                await services.vault.set_legal_hold(session, sealed, True)
        finally:
            await services.close()

    asyncio.run(hold())
    assert _wamids(_search(archive, query="会議", on_hold=True)) == ["wamid.S-JA2"]
    assert "wamid.S-JA2" not in _wamids(_search(archive, query="会議", on_hold=False))
    assert "wamid.S-JA" in _wamids(_search(archive, query="会議", on_hold=False))


def test_flagged_filter_follows_the_lexicon(archive: Server) -> None:
    assert _search(archive, flagged=True)["results"] == []  # an empty lexicon flags nothing
    ids = {}
    for term in ("parcel", "board meeting", "資料"):
        added = archive.client.post("/api/v1/lexicon", json={"term": term}, headers=archive.officer)
        assert added.status_code == 201, added.text
        ids[term] = added.json()["id"]
    # "board meeting" is a phrase: the message with the words apart is not flagged.
    flagged = _wamids(_search(archive, flagged=True))
    assert flagged == ["wamid.S-JA2", "wamid.S-PHRASE", "wamid.S-OTHER"]
    assert _wamids(_search(archive, query="会議", flagged=True)) == ["wamid.S-JA2"]
    clean = _wamids(_search(archive, query="会議", flagged=False))
    assert "wamid.S-JA" in clean
    assert "wamid.S-JA2" not in clean
    assert "wamid.S-APART" in _wamids(_search(archive, query="board", flagged=False))

    removed = archive.client.delete(f"/api/v1/lexicon/{ids['parcel']}", headers=archive.officer)
    assert removed.status_code == 204, removed.text
    assert "wamid.S-OTHER" not in _wamids(_search(archive, flagged=True))


def test_delivery_filters_find_failures_by_state_and_meta_error_code(archive: Server) -> None:
    receipts_conversation(archive)
    refused = _search(archive, delivery="failed", error_code=OPTED_OUT)["results"]
    assert [(r["wamid"], r["kind"], r["sender"]) for r in refused] == [
        ("wamid.R2", "echo", "business")
    ]
    # A failure is findable by its code alone, and a status for a message this
    # archive never captured is found as a status of its own.
    orphan = _search(archive, error_code=131047)["results"]
    assert [(r["wamid"], r["kind"]) for r in orphan] == [("wamid.R9", "status")]
    assert _wamids(_search(archive, delivery="failed")) == ["wamid.R2", "wamid.R9"]
    assert _wamids(_search(archive, delivery="read")) == ["wamid.R1"]
    assert _wamids(_search(archive, error_code=131026)) == []
    # With words, the text and the delivery must both match.
    assert _wamids(_search(archive, query="sale", delivery="failed")) == ["wamid.R2"]
    assert _wamids(_search(archive, query="shipped", delivery="failed")) == []


def test_hits_say_who_wrote_each_message(archive: Server) -> None:
    receipts_conversation(archive)
    hits = _search(archive, query="hello there")["results"]
    assert [(r["wamid"], r["sender"]) for r in hits] == [("wamid.R0", RECEIVER_NAME)]
    board = _search(archive, query='"board meeting"')["results"]
    assert [r["sender"] for r in board] == ["Sheena Nelson"]  # the fixture's profile name
    shipped = _search(archive, query="order shipped")["results"]
    assert [r["sender"] for r in shipped] == ["business"]


def test_bad_delivery_filters_get_clear_errors(archive: Server) -> None:
    for body, named in (
        ({"delivery": "bounced"}, "delivery"),
        ({"error_code": -1}, "error_code"),
        ({"error_code": 2**31}, "error_code"),
    ):
        response = archive.client.post("/api/v1/search", json=body, headers=archive.officer)
        assert response.status_code == 400, (body, response.text)
        assert named in response.text


def test_bad_queries_get_clear_errors(archive: Server) -> None:
    post = archive.client.post
    for body in (
        {"query": "!!!"},
        {"query": "x", "flagged": "yes"},
        {"query": "x", "cursor": "@@"},
        {"query": "x", "limit": 0},
        {"nope": 1},
    ):
        response = post("/api/v1/search", json=body, headers=archive.officer)
        assert response.status_code == 400, (body, response.text)
    assert post("/api/v1/search", json={"query": "会議"}).status_code == 401


@pytest.fixture(scope="module")
def outsiders(archive: Server) -> dict[str, dict[str, str]]:
    """A compliance officer of another account only, and an auditor."""
    other_account = archive.add_account(
        phone_number_id="999888777666555", display_phone_number="+15550100222"
    )

    async def make() -> dict[str, dict[str, str]]:
        services = await open_services(load_settings(archive.env))
        try:
            made = {}
            for name, role, account, scopes in (
                ("elsewhere", Role.COMPLIANCE_OFFICER, other_account, [Permission.ARCHIVE_READ]),
                ("searchaudit", Role.AUDITOR, None, list(ROLE_PERMISSIONS[Role.AUDITOR])),
            ):
                secret = await archive.seed(
                    services, name, [(role, account)], scopes=frozenset(scopes)
                )
                made[name] = {"Authorization": f"Bearer {secret}"}
            return made
        finally:
            await services.close()

    return asyncio.run(make())


def test_scope_limits_results_to_granted_accounts(
    archive: Server, outsiders: dict[str, dict[str, str]]
) -> None:
    assert _search(archive, outsiders["elsewhere"], query="会議")["results"] == []
    assert (
        _search(archive, outsiders["elsewhere"], query="会議", account_id=archive.account_id)[
            "results"
        ]
        == []
    )


def test_every_search_is_audited_with_its_terms_sealed(
    archive: Server, outsiders: dict[str, dict[str, str]]
) -> None:
    _search(archive, query='"board meeting" 金曜日')
    events = archive.client.get(
        "/api/v1/audit",
        params={"action": "archive.search", "limit": 1000},
        headers=outsiders["searchaudit"],
    ).json()["events"]
    assert events
    assert all(e["has_details"] for e in events)
    assert all("board meeting" not in json.dumps(e, ensure_ascii=False) for e in events)
    assert all("会議" not in json.dumps(e, ensure_ascii=False) for e in events)
    latest = copy.deepcopy(events[-1])
    assert latest["role"] == "compliance_officer"
