"""The console's outbound pages over real HTTP: compose and check, send once, the
sender's items, the hold queue's maker-checker, the consent ledger and the
templates, and who may open each."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.e2e.conftest import running_server
from tests.e2e.outbox_world import (
    HOLD_TERM,
    IN_WINDOW,
    OPTED_IN,
    OPTED_OUT,
    WABA_ID,
    Seeded,
    seed_outbox,
)
from tests.e2e.server import Server
from tests.e2e.test_console import BROWSER, form_token, sign_in

Console = Callable[..., httpx.Client]


@pytest.fixture(scope="module")
def server(database_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running server whose account has a WhatsApp Business Account (for templates)."""
    with running_server(tmp_path_factory.mktemp("server"), database_name, waba_id=WABA_ID) as srv:
        yield srv


@pytest.fixture(scope="module")
def world(server: Server) -> Seeded:
    return seed_outbox(server)


@pytest.fixture(scope="module")
def console(server: Server) -> Iterator[Console]:
    """``console(username, role)``: a signed-in client of a user with ``role`` on the
    server's account (no role: an existing user); one per user, sign-in is rate limited."""
    made: dict[str, httpx.Client] = {}

    def get(username: str, role: str | None = None) -> httpx.Client:
        if username not in made:
            if role:
                server.create_user(username, role, account=server.account_id)
            made[username] = httpx.Client(base_url=server.url, timeout=10, headers=BROWSER)
            sign_in(made[username], username)
        return made[username]

    yield get
    for client in made.values():
        client.close()


def _fields(page: str, server: Server, **extra: str) -> dict[str, str]:
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page)
    assert key, page
    return {
        "csrf_token": form_token(page),
        "idempotency_key": key.group(1),
        "account_id": server.account_id,
    } | extra


def _template(world: Seeded, name: str) -> dict[str, str]:
    return {"kind": "template", "template_id": str(world.promo), f"var_{world.promo}_1": name}


def _text(page: str) -> str:
    """The page's text, tags and entities stripped, spaces collapsed."""
    plain = re.sub(r"<[^>]+>", " ", page).replace("&#39;", "'").replace("&amp;", "&")
    return " ".join(plain.split())


def test_compose_checks_then_sends_once(server: Server, world: Seeded, console: Console) -> None:
    agent = console("ob-agent", "agent")
    home = agent.get("/").text
    assert 'href="/compose"' in home
    assert 'href="/outbox"' in home
    assert 'href="/review"' not in home
    assert 'href="/consent"' not in home
    form = agent.get("/compose")
    assert form.status_code == 200
    assert "spring_promo" in form.text
    assert f'name="var_{world.promo}_1"' in form.text

    blocked = agent.post(
        "/compose",
        data=_fields(form.text, server, to="+" + OPTED_OUT, action="check")
        | _template(world, "Ana"),
    )
    assert blocked.status_code == 200, blocked.text
    assert (
        f"blocked: the customer opted out of marketing on {world.opted_out_on} "
        "by replying with a stop word (STOP)"
    ) in _text(blocked.text)
    closed = agent.post(
        "/compose",
        data=_fields(form.text, server, to="+447700900899", kind="text", text="Hi", action="check"),
    )
    assert "blocked: the customer has never opened a service window" in _text(closed.text)
    allowed = agent.post(
        "/compose",
        data=_fields(
            form.text, server, to="+" + IN_WINDOW, kind="text", text="Your order", action="check"
        ),
    )
    assert 'class="badge outcome-allow">allow<' in allowed.text
    assert "No rule objected." in allowed.text
    assert agent.get("/outbox").text.count('href="/outbox/') == 0  # a check queues nothing
    unchosen = agent.post(
        "/compose",
        data=_fields(form.text, server, to="+" + OPTED_IN, kind="template", action="check"),
    )
    assert unchosen.status_code == 400
    assert "Not checked: choose a template." in unchosen.text

    send = _fields(form.text, server, to="+" + OPTED_IN, action="send") | _template(world, "Ben")
    sent = agent.post("/compose", data=send)
    assert sent.status_code == 303, sent.text
    again = agent.post("/compose", data=send)  # a double submit: the same item
    assert again.headers["location"] == sent.headers["location"]
    listed = agent.get("/outbox").text
    assert listed.count('href="/outbox/') == 1
    assert "outcome-allow" in listed
    item = agent.get(sent.headers["location"])
    assert item.status_code == 200
    text = _text(item.text)
    assert "Template spring_promo (en_GB)" in text
    assert "Ben" in text
    assert "new → queued" in text
    assert "queued → decided" in text
    changed = agent.post("/compose", data=send | {f"var_{world.promo}_1": "Cy"})
    assert changed.status_code == 409
    assert "used for a different message" in changed.text


def test_a_held_message_needs_another_supervisor(
    server: Server, world: Seeded, console: Console
) -> None:
    maker = console("ob-supervisor", "supervisor")
    form = maker.get("/compose").text
    body = f"Hello, these are {HOLD_TERM} for you"
    sent = maker.post(
        "/compose",
        data=_fields(form, server, to="+" + IN_WINDOW, kind="text", text=body, action="send"),
    )
    assert sent.status_code == 303, sent.text
    item_id = sent.headers["location"].rsplit("/", 1)[1]
    item = _text(maker.get(sent.headers["location"]).text)
    assert "Outbox item held" in item
    assert re.search(r"held: the text holds lexicon term \d+, which holds a message", item), item

    queue = maker.get("/review")
    assert queue.status_code == 200
    assert f'id="i{item_id}"' in queue.text
    assert body in queue.text
    assert "another supervisor must decide it" in queue.text
    own = maker.post(
        f"/review/{item_id}",
        data={"decision": "approve", "comment": "fine", "csrf_token": form_token(queue.text)},
    )
    assert own.status_code == 409
    assert "nobody may approve or reject their own item" in own.text

    checker = console("ob-checker", "supervisor")
    page = checker.get("/review").text
    token = form_token(page)
    blank = checker.post(
        f"/review/{item_id}", data={"decision": "approve", "comment": " ", "csrf_token": token}
    )
    assert blank.status_code == 400
    assert "a review needs a comment of 1 to 1000 characters" in blank.text
    done = checker.post(
        f"/review/{item_id}",
        data={"decision": "approve", "comment": "Checked with legal", "csrf_token": token},
    )
    assert (done.status_code, done.headers.get("location")) == (303, "/review?done=approved")
    assert f'id="i{item_id}"' not in checker.get("/review").text
    moves = _text(checker.get(f"/outbox/{item_id}").text)
    assert "held → approved" in moves
    assert "Checked with legal" in moves


def test_consent_ledger_and_templates_for_compliance(
    server: Server, world: Seeded, console: Console
) -> None:
    officer = console("e2e-officer")
    home = officer.get("/").text
    assert 'href="/consent"' in home
    assert 'href="/templates"' in home
    assert 'href="/compose"' not in home
    ledger = officer.get("/consent", params={"phone": "+" + OPTED_OUT})
    assert ledger.status_code == 200
    text = _text(ledger.text)
    assert "marketing opted out by replying with a stop word (STOP)" in text
    assert "The customer replied STOP" in text
    assert world.opted_out_on in text
    web = _text(officer.get("/consent", params={"phone": "+" + OPTED_IN}).text)
    assert "opted in by web form Newsletter form, ticked box" in web
    unknown = officer.get("/consent", params={"phone": "+447700900000"})
    assert unknown.status_code == 404
    assert "No contact has that number." in unknown.text
    templates = _text(officer.get("/templates").text)
    assert "spring_promo en_GB marketing approved APPROVED GREEN" in templates

    contact = server.get("/api/v1/contacts", phone="+" + IN_WINDOW).json()["contact_id"]
    chat = officer.get(f"/conversations/{contact}").text
    assert f'href="/consent/{contact}"' in chat
    assert 'href="/compose' not in chat  # an officer does not send
    supervisor = console("ob-supervisor", "supervisor")
    assert f'href="/compose?to=%2B{IN_WINDOW}"' in supervisor.get(f"/conversations/{contact}").text
    prefilled = supervisor.get("/compose", params={"to": "+" + IN_WINDOW}).text
    assert f'name="to" value="+{IN_WINDOW}"' in prefilled


def test_each_page_needs_its_permission_and_each_form_its_token(
    server: Server, world: Seeded, console: Console
) -> None:
    for path in ("/compose", "/outbox", "/review", "/consent", "/templates"):
        anonymous = server.client.get(path, headers=BROWSER)
        assert (anonymous.status_code, anonymous.headers.get("location")) == (303, "/login")
    agent = console("ob-agent", "agent")
    for path in ("/review", "/consent", f"/consent/{'ct_x'}"):
        refused = agent.get(path)
        assert refused.status_code == 403, path
        assert "You do not have access to this page" in refused.text
    assert agent.get("/templates").status_code == 200  # agents read the wording they send
    officer = console("e2e-officer")
    for path in ("/compose", "/outbox", "/review"):
        assert officer.get(path).status_code == 403, path

    # Another sender's item is not there for an agent; the supervisor's own is.
    theirs = console("ob-supervisor", "supervisor").get("/outbox").text
    item = re.search(r'href="/outbox/([0-9a-f]{32})"', theirs)
    assert item, theirs
    assert agent.get(f"/outbox/{item.group(1)}").status_code == 404
    review = agent.post(
        f"/review/{item.group(1)}",
        data={"decision": "approve", "comment": "x", "csrf_token": form_token(agent.get("/").text)},
    )
    assert review.status_code == 403

    form = agent.get("/compose").text
    fields = _fields(form, server, to="+" + IN_WINDOW, kind="text", text="tokenless", action="send")
    assert agent.post("/compose", data=fields | {"csrf_token": "wrong"}).status_code == 403
    del fields["csrf_token"]
    assert agent.post("/compose", data=fields).status_code == 403
    assert "tokenless" not in agent.get("/outbox").text
    checker = console("ob-checker", "supervisor")
    no_token = checker.post(f"/review/{item.group(1)}", data={"decision": "reject", "comment": "x"})
    assert no_token.status_code == 403
