"""The console's pages over real HTTP: search, conversation, media, audit, users."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.server import (
    PASSWORD,
    Authenticator,
    Server,
    business_echo,
    customer_message,
    status_update,
)
from tests.e2e.test_conversation import OPTED_OUT, RECEIVER, RECEIVER_NAME, receipts_conversation

CUSTOMER = "819012345678"
BASE = 1763700000
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def _message(wamid: str, offset: int, **fields: Any) -> dict[str, Any]:
    return customer_message(
        CUSTOMER, wamid, BASE + offset, template="message_text_japanese", **fields
    )


def _echo(wamid: str, offset: int, body: str) -> dict[str, Any]:
    return business_echo(CUSTOMER, wamid, BASE + offset, body)


def _status(wamid: str, offset: int, status: str) -> dict[str, Any]:
    return status_update(CUSTOMER, wamid, BASE + offset, status)


ORIGINAL = "明日の会議は10時からです"
EDITED = "明日の会議は11時からに変更です"
REPLY = "承知しました。会議室を予約します。"
DELETED = "間違えて送りました"


def japanese_conversation(server: Server) -> str:
    """Post a Japanese chat (an edit, a reply, a reaction, a revoke, receipts) through
    signed webhooks; return the contact id once it is fully projected."""
    payloads = [
        _message("wamid.J1", 1, text={"body": ORIGINAL}),
        _echo("wamid.J2", 2, REPLY),
        _message(
            "wamid.J3",
            3,
            type="edit",
            edit={
                "original_message_id": "wamid.J1",
                "message": {"type": "text", "text": {"body": EDITED}},
            },
        ),
        _message("wamid.J4", 4, text={"body": "ありがとうございます"}, context={"id": "wamid.J2"}),
        _message(
            "wamid.J5", 5, type="reaction", reaction={"message_id": "wamid.J2", "emoji": "👍"}
        ),
        _message("wamid.J6", 6, text={"body": DELETED}),
        _message("wamid.J7", 7, type="revoke", revoke={"original_message_id": "wamid.J6"}),
        _status("wamid.J2", 8, "sent"),
        _status("wamid.J2", 9, "delivered"),
        _status("wamid.J2", 10, "read"),
    ]
    for payload in payloads:
        assert server.post_webhook(json.dumps(payload).encode()).status_code == 200
    for wamid in ("wamid.J3", "wamid.J5", "wamid.J7"):
        server.records_of(wamid)
    contact: str = server.get("/api/v1/contacts", phone="+" + CUSTOMER).json()["contact_id"]

    def complete() -> bool:
        chat = server.get(f"/api/v1/conversations/{contact}").json()
        read = [m for m in chat["messages"] if "read" in m["receipts"]]
        return len(read) == 1 and any(len(m["versions"]) == 2 for m in chat["messages"])

    server.wait_for(complete)
    return contact


def form_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def sign_in(client: httpx.Client, username: str) -> None:
    """Password, then TOTP (enrolling on first use), through the console's forms."""
    page = client.get("/login")
    step = client.post(
        "/login",
        data={"username": username, "password": PASSWORD, "csrf_token": form_token(page.text)},
    )
    assert step.headers.get("location") == "/login/mfa", step.text
    mfa = client.get("/login/mfa")
    if mfa.headers.get("location") == "/":
        return  # roles that need no second factor
    found = re.search(r'id="totp-secret" class="secret">([A-Z2-7]+)<', mfa.text)
    assert found, "each console test signs in a user for the first time"
    # A first sign-in: no step of this secret has been used yet.
    code = Authenticator(found.group(1)).code()
    done = client.post("/login/mfa", data={"code": code, "csrf_token": form_token(mfa.text)})
    assert done.headers.get("location") == "/", done.text


@pytest.fixture(scope="module")
def contact(server: Server) -> str:
    return japanese_conversation(server)


Console = Callable[..., httpx.Client]


@pytest.fixture(scope="module")
def console(server: Server) -> Iterator[Console]:
    """``console(username, *roles)``: a signed-in client that asks for HTML, as a browser
    does; one per user for the module, since sign-in is rate limited per address."""
    made: dict[str, httpx.Client] = {}

    def get(username: str, *roles: str) -> httpx.Client:
        if username not in made:
            if roles:
                server.create_user(username, *roles)
            made[username] = httpx.Client(base_url=server.url, timeout=10, headers=BROWSER)
            sign_in(made[username], username)
        return made[username]

    yield get
    for client in made.values():
        client.close()


PAGES = ["/search", "/conversations/ct_x", "/media/1/view", "/audit", "/admin/users"]


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_visitors_are_sent_to_sign_in(server: Server, path: str) -> None:
    page = server.client.get(path, headers=BROWSER)
    assert (page.status_code, page.headers.get("location")) == (303, "/login")
    # Scripts and API clients keep the API's JSON answer.
    assert server.client.get(path).json() == {"error": "sign in or present a valid API token"}


def test_search_finds_japanese_and_opens_the_conversation(
    server: Server, contact: str, console: Console
) -> None:
    client = console("console-reader", "compliance_officer")
    assert client.get("/").text.count('href="/search"') == 1  # the nav offers what it may do
    empty = client.get("/search")
    assert empty.status_code == 200
    assert 'name="q"' in empty.text
    assert "Results" not in empty.text

    found = client.get("/search", params={"q": "会議"})
    assert found.status_code == 200
    assert found.headers["content-type"].startswith("text/html; charset=utf-8")
    assert ORIGINAL in found.text
    assert REPLY in found.text
    assert f'href="/conversations/{contact}#m' in found.text
    assert "Business App" in found.text

    outbound = client.get("/search", params={"q": "会議", "direction": "outbound"})
    assert REPLY in outbound.text
    assert ORIGINAL not in outbound.text
    later = client.get("/search", params={"q": "会議", "since": "2030-01-01"})
    assert "Nothing matches" in later.text
    wrong = client.get("/search", params={"q": "会議", "since": "yesterday"})
    assert wrong.status_code == 400
    assert "is not a date" in wrong.text
    assert client.get("/search", params={"q": "x", "cursor": "%%%"}).status_code == 400

    chat = client.get(f"/conversations/{contact}")
    assert chat.status_code == 200
    text = chat.text
    history = text.split("<summary>edited</summary>")[1].split("</details>")[0]
    assert history.index(ORIGINAL) < history.index(EDITED)  # every version, the original first
    assert text.index(EDITED) < text.index("<summary>edited</summary>")  # the bubble: the latest
    assert "This message was deleted." in text
    assert DELETED in text.split("This message was deleted.")[1]  # kept in the disclosure
    assert re.search(r'receipt-read">read <time datetime="[^"]+">[\d-]+ \d\d:\d\d<', text)
    assert "👍" in text
    assert 'class="msg out"' in text
    assert 'class="msg in"' in text
    assert 'class="quote"' in text

    audit = server.client.get(
        "/api/v1/audit/", params={"action": "archive.*", "limit": 1000}, headers=server.admin
    )
    # The admin cannot read the audit trail; the console's reads are checked below.
    assert audit.status_code == 403


def test_search_pages_with_a_cursor(server: Server, contact: str, console: Console) -> None:
    for n in range(27):
        body = _message(f"wamid.P{n}", 100 + n, text={"body": f"議事録 {n:02d}"})
        assert server.post_webhook(json.dumps(body).encode()).status_code == 200
    server.records_of("wamid.P26")
    client = console("console-reader", "compliance_officer")
    first = client.get("/search", params={"q": "議事録"})
    assert "議事録 00" in first.text
    assert "議事録 26" not in first.text
    more = re.search(r'class="more" href="([^"]+)"', first.text)
    assert more, first.text
    second = client.get(more.group(1).replace("&amp;", "&"))
    assert second.status_code == 200
    assert "議事録 26" in second.text
    assert "議事録 00" not in second.text
    assert 'class="more"' not in second.text

    # Filters alone list the contact's messages in time order.
    alone = client.get("/search", params={"contact": "+" + CUSTOMER, "type": "text"})
    assert alone.status_code == 200
    shown = re.findall(r"議事録 (\d\d)", alone.text)
    assert shown
    assert shown == sorted(shown)


def test_conversation_and_search_show_deliveries_and_the_customer(
    server: Server, console: Console
) -> None:
    contact = receipts_conversation(server)
    client = console("console-reader", "compliance_officer")
    chat = client.get(f"/conversations/{contact}").text
    assert f'<span class="customer-name">{RECEIVER_NAME}</span>' in chat
    assert f"+{RECEIVER}" in chat
    assert 'class="delivery delivery-read"' in chat
    assert 'class="delivery delivery-failed"' in chat
    refused = chat.split('class="delivery delivery-failed"')[1].split("</p>")[0]
    assert f"{OPTED_OUT} Unable to deliver the message." in refused
    orphan = chat.split('class="msg out unmatched-status"')[1].split("</li>")[0]
    assert "Status for a message not in this archive" in orphan
    assert "131047 Re-engagement message" in orphan
    assert chat.index("Spring sale") < chat.index("unmatched-status")  # at its time

    found = client.get("/search", params={"delivery": "failed", "error_code": str(OPTED_OUT)})
    assert found.status_code == 200
    assert "Spring sale: 20% off." in found.text
    assert '<span class="sender">business</span>' in found.text
    assert "Re-engagement" not in found.text
    orphan_hit = client.get("/search", params={"error_code": "131047"}).text
    assert "status for a message not in this archive: failed 131047" in orphan_hit
    named = client.get("/search", params={"q": "hello there"}).text
    assert f'<span class="sender">{RECEIVER_NAME}</span>' in named
    bad = client.get("/search", params={"error_code": "opted-out"})
    assert bad.status_code == 400
    assert "is not an error code" in bad.text
    assert client.get("/search", params={"delivery": "bounced"}).status_code == 400


def test_refusals_are_html_pages(server: Server, contact: str, console: Console) -> None:
    client = console("console-regulator", "regulator")
    for path in ("/search", f"/conversations/{contact}", "/audit", "/admin/users"):
        page = client.get(path)
        assert page.status_code == 403, path
        assert page.headers["content-type"].startswith("text/html")
        assert "You do not have access to this page" in page.text
    assert 'href="/search"' not in client.get("/").text

    reader = console("console-reader", "compliance_officer")
    missing = reader.get("/conversations/ct_does_not_exist")
    assert missing.status_code == 404
    assert "Not found" in missing.text
    assert reader.get("/media/999999/view").status_code == 404


def test_media_viewer_shows_an_imported_image(server: Server, console: Console) -> None:
    import io
    import zipfile

    photo = b"\x89PNG\r\n\x1a\n console image"
    chat = "13/03/2024, 10:00 - +44 7700 900125: IMG-20240312-WA0002.jpg (file attached)\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("WhatsApp Chat with Aiko.txt", chat)
        archive.writestr("IMG-20240312-WA0002.jpg", photo)
    imported = server.client.post(
        "/api/v1/imports/chat-export",
        files={"file": ("chat.zip", buffer.getvalue())},
        data={"account_id": server.account_id, "contact": "+447700900125"},
        headers=server.officer,
    )
    assert imported.status_code == 201, imported.text
    contact = imported.json()["contact_id"]
    media = server.get(f"/api/v1/conversations/{contact}").json()["messages"][0]["media"][0]
    client = console("console-reader", "compliance_officer")
    chat_page = client.get(f"/conversations/{contact}")
    assert f'href="/media/{media["id"]}/view"' in chat_page.text
    assert "Import" in chat_page.text
    viewer = client.get(f"/media/{media['id']}/view")
    assert viewer.status_code == 200
    assert f'href="/api/v1/media/{media["id"]}" download' in viewer.text
    assert "Download" in viewer.text
    assert client.get(f"/api/v1/media/{media['id']}").content == photo  # the cookie suffices


def test_audit_page_filters_and_pages(server: Server, contact: str, console: Console) -> None:
    searcher = console("console-reader", "compliance_officer")
    assert searcher.get("/search", params={"q": "会議"}).status_code == 200
    client = console("console-auditor", "auditor")
    searches = client.get("/audit", params={"action": "archive.search"})
    assert searches.status_code == 200
    assert "archive.search" in searches.text
    assert "<td>console-reader</td>" in searches.text  # the searcher's username
    assert "http.GET" not in searches.text
    denied = client.get("/audit", params={"outcome": "denied"})
    assert "http.GET" in denied.text or "No events match" in denied.text
    assert 'outcome-ok"' not in denied.text
    assert client.get("/audit", params={"since": "not-a-date"}).status_code == 400
    first = client.get("/audit")
    more = re.search(r'class="more" href="([^"]+)"', first.text)
    assert more, "there are more than 50 events by now"
    seqs = [int(s) for s in re.findall(r'<td class="mono">(\d+)</td>', first.text)]
    second = client.get(more.group(1).replace("&amp;", "&"))
    later = [int(s) for s in re.findall(r'<td class="mono">(\d+)</td>', second.text)]
    assert later
    assert min(later) > max(seqs)


def test_user_administration_with_maker_checker(server: Server, console: Console) -> None:
    admin = console("e2e-admin")
    page = admin.get("/admin/users")
    assert page.status_code == 200
    assert "e2e-officer" in page.text
    csrf = form_token(page.text)
    refused = admin.post("/admin/users", data={"username": "console-new", "password": PASSWORD})
    assert refused.status_code == 403  # no CSRF token
    made = admin.post(
        "/admin/users",
        data={"username": "console-new", "password": PASSWORD, "csrf_token": csrf},
    )
    assert (made.status_code, made.headers.get("location")) == (303, "/admin/users?done=created")
    again = admin.post(
        "/admin/users",
        data={"username": "console-new", "password": PASSWORD, "csrf_token": csrf},
    )
    assert again.status_code == 409
    short = admin.post(
        "/admin/users", data={"username": "console-short", "password": "x", "csrf_token": csrf}
    )
    assert short.status_code == 400

    listed = admin.get("/admin/users").text
    user_id = re.search(
        r'action="/admin/users/([^"/]+)/grants"[^>]*>\s*<input[^>]*>\s*'
        r'<label for="role-[^"]+" class="sr-only">Role for console-new<',
        listed,
    )
    assert user_id, listed
    grants = f"/admin/users/{user_id.group(1)}/grants"
    plain = admin.post(grants, data={"role": "regulator", "account_id": "", "csrf_token": csrf})
    assert plain.headers.get("location") == "/admin/users?done=granted"
    officer = admin.post(
        grants,
        data={"role": "compliance_officer", "account_id": server.account_id, "csrf_token": csrf},
    )
    assert officer.headers.get("location") == "/admin/users?done=requested"
    pending = admin.get(officer.headers["location"]).text
    assert "an approval was opened" in pending
    assert "You made this request" in pending
    approval = re.search(r"<strong>#(\d+)</strong> grant:", pending)
    assert approval
    decision = f"/admin/approvals/{approval.group(1)}/decision"
    own = admin.post(decision, data={"decision": "approve", "csrf_token": csrf})
    assert own.status_code == 403
    assert "someone other than its maker" in own.text

    checker = console("console-admin2", "admin")
    checker_page = checker.get("/admin/users").text
    assert f'action="{decision}"' in checker_page
    approved = checker.post(
        decision, data={"decision": "approve", "csrf_token": form_token(checker_page)}
    )
    assert approved.headers.get("location") == "/admin/users?done=approved"
    after = checker.get("/admin/users").text
    assert f"compliance_officer · {server.account_id}" in after
    assert f'action="{decision}"' not in after


def test_the_import_form_takes_a_date_order_and_lists_every_problem(
    server: Server, console: Console
) -> None:
    # Sign-in is rate limited per address: the module's reader also imports.
    client = console("console-reader", "compliance_officer")
    granted = server.cli("users", "grant", "console-reader", "records_manager")
    assert granted.returncode == 0, granted.stderr
    if granted.stdout.startswith("approval "):
        decided = server.client.post(
            f"/api/v1/approvals/{granted.stdout.split()[1]}/decision",
            json={"approve": True},
            headers=server.admin,
        )
        assert decided.status_code == 200, decided.text
    form = client.get("/import")
    assert form.status_code == 200
    assert 'name="date_order"' in form.text
    assert f'<option value="{server.account_id}"' in form.text
    fields = {
        "csrf_token": form_token(form.text),
        "account_id": server.account_id,
        "contact": "+447700900701",
        "timezone": "Europe/London",
    }
    # Every day is 12 or less: refused, naming the line, until the order is given.
    export = ("chat.txt", b"03/04/2024, 10:00 - Ana: a\n05/04/2024, 10:00 - Ana: b\n")
    refused = client.post("/import", data=fields, files={"file": export})
    assert refused.status_code == 422, refused.text
    assert "Nothing was imported" in refused.text
    assert "<td>1</td><td><code>03/04/2024, 10:00 - Ana: a</code></td>" in refused.text
    assert "day and month order cannot be told" in refused.text
    assert server.get("/api/v1/contacts", phone="+447700900701").status_code == 404

    done = client.post("/import", data=fields | {"date_order": "mdy"}, files={"file": export})
    assert done.status_code == 200, done.text
    assert "Imported 2 of 2 messages" in done.text
    assert "Dates read as mdy, as given by the importer." in done.text
    assert "csrf_token" in done.text
    no_token = client.post("/import", data=fields | {"csrf_token": "x"}, files={"file": export})
    assert no_token.status_code == 403
