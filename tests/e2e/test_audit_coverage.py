"""AUDIT-COVERAGE: every change is audited with the change (issue 16).

Every state-changing route the app registers (a POST, PUT, PATCH or DELETE, in the
HTTP API and the console) and every state-changing CLI command leaves a domain
audit event for its change: not the per-request ``http.<METHOD> <route>`` nor the
per-command ``cli.<command>`` event, but one that names its actor (id and
username; the operator ``cli`` for the CLI), the target it changed and outcome
``ok``; and the change it records is really there, read back through the API or
the CLI. A refused change leaves an event with outcome ``denied`` and its reason,
and changes nothing.

``ROUTES`` and ``COMMANDS`` hold, for each route and each command, the case that
exercises it or the reason it is exempt. A route or command the app or the CLI
has and the tables lack fails ``test_every_change_has_a_case_or_an_exemption``,
naming it: a change added later needs its audit case.

The cases share one server on SQLite (sign-in is rate limited per address and
each server costs seconds) and run in the tables' order: the console's sign-in
first, the root key's rotation last (the server restarts on the new key).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from litestar import Litestar, patch
from litestar.routes import ASGIRoute, HTTPRoute

from api.app import create_app
from api.cli.main import main
from api.cli.operator import CLI
from api.settings import load_settings
from tests.e2e.conftest import running_server
from tests.e2e.server import PASSWORD, Authenticator, Server, customer_message, fixed_wamid
from tests.e2e.test_console import BROWSER, form_token, sign_in

CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RouteKey = tuple[str, str]
CommandKey = tuple[str, ...]
Event = dict[str, Any]


# --- What the app and the CLI have ------------------------------------------------


def changing_routes(app: Litestar) -> list[RouteKey]:
    """(method, path template) of every state-changing method of every route."""
    found: set[RouteKey] = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                found |= {(m, route.path) for m in handler.http_methods & CHANGING}
        elif isinstance(route, ASGIRoute):  # raw ASGI: its methods are declared in opt
            methods = route.route_handler.opt.get("methods")
            assert methods, f"{route.path} declares no methods"
            found |= {(m, route.path) for m in set(methods) & CHANGING}
    return sorted(found)


def leaf_commands(group: click.Group, prefix: CommandKey = ()) -> list[CommandKey]:
    """The path of every command under ``group`` that is not itself a group."""
    found: list[CommandKey] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += leaf_commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return sorted(found)


def _app() -> Litestar:
    return create_app(load_settings({"STRONGROOM_DATA_DIR": "/nonexistent"}))


@dataclass(frozen=True)
class Exempt:
    """Not audited as a change of its own, and why."""

    reason: str


def check_coverage(found: Iterable[Any], table: Mapping[Any, object], what: str) -> None:
    """Fail naming each of ``found`` that ``table`` lacks, and each entry of ``table``
    that is no longer found (a stale case would test nothing)."""
    missing = sorted(set(found) - set(table))
    stale = sorted(set(table) - set(found))
    problems = [f"no audit case or exemption for {what} {_name(k)}" for k in missing]
    problems += [f"the table names {what} {_name(k)}, which no longer exists" for k in stale]
    if problems:
        raise AssertionError("; ".join(problems))


def _name(key: tuple[str, ...]) -> str:
    return " ".join(key)


# --- The world the cases share ----------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server on SQLite for the module (the conftest's runs on PostgreSQL too)."""
    # Loopback is its trusted proxy, so that each console session the cases sign in
    # comes from an address of its own (sign-in is limited per address).
    settings = {"STRONGROOM_TRUSTED_PROXIES": "127.0.0.1"}
    with running_server(tmp_path_factory.mktemp("coverage"), "sqlite", settings) as srv:
        yield srv


@dataclass
class World:
    """The server, the people acting on it, and reading the trail back."""

    server: Server
    tmp: Path
    auditor: dict[str, str]
    checker: dict[str, str]  # a second admin's token: the checker of maker-checker
    admin_console: httpx.Client  # e2e-admin, signed in (TOTP), also a records manager
    checker_console: httpx.Client
    state: dict[str, Any] = field(default_factory=dict)  # what one case leaves another
    _serial: int = 0

    def unique(self, stem: str) -> str:
        self._serial += 1
        return f"{stem}{self._serial}"

    def phone(self) -> str:
        self._serial += 1
        return f"+4477009{self._serial:05d}"

    def users(self) -> dict[str, Event]:
        response = self.server.client.get("/api/v1/users", headers=self.server.admin)
        assert response.status_code == 200, response.text
        return {u["username"]: u for u in response.json()}

    def user_id(self, username: str) -> str:
        user_id: str = self.users()[username]["id"]
        return user_id

    def new_user(self, stem: str) -> tuple[str, str]:
        """A user made over the API (setup, not the case); (username, id)."""
        username = self.unique(stem)
        made = self.server.client.post(
            "/api/v1/users",
            json={"username": username, "password": PASSWORD},
            headers=self.server.admin,
        )
        assert made.status_code == 201, made.text
        return username, made.json()["id"]

    def csrf(self, client: httpx.Client) -> str:
        return form_token(client.get("/admin/users").text)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.server.cli(*args, **env)

    def mark(self) -> int:
        """The seq of the last event in the trail now."""
        events = self.since(self.state.get("mark", 0))
        self.state["mark"] = events[-1]["seq"] if events else self.state.get("mark", 0)
        mark: int = self.state["mark"]
        return mark

    def since(self, mark: int) -> list[Event]:
        """Every event after ``mark``, read as an auditor through the API."""
        out: list[Event] = []
        after: int | None = mark
        while after is not None:
            response = self.server.client.get(
                "/api/v1/audit", params={"after": after, "limit": 1000}, headers=self.auditor
            )
            assert response.status_code == 200, response.text
            page = response.json()
            out += page["events"]
            after = page["next_after"]
        return out

    def change(
        self,
        mark: int,
        target: str,
        *,
        actor: str | None,
        actor_name: str | None,
        outcome: str = "ok",
        action: str | None = None,
    ) -> Event:
        """The domain event after ``mark`` whose target matches the pattern ``target``,
        with ``outcome`` (and ``action``, when given: a target others move on too),
        made by ``actor`` (a user id, ``:token`` allowed) named ``actor_name``;
        ``None`` for either leaves it unchecked."""
        events = self.since(mark)
        domain = [e for e in events if not e["action"].startswith(("http.", "cli."))]
        matching = [
            e
            for e in domain
            if e["outcome"] == outcome
            and re.search(target, e["target"] or "", re.IGNORECASE)
            and action in (None, e["action"])
        ]
        seen = [(e["action"], e["target"], e["outcome"]) for e in events]
        assert matching, (
            f"no domain audit event with outcome {outcome!r} and a target matching "
            f"{target!r}; the events after seq {mark} are {seen}"
        )
        event = matching[-1]
        if actor is not None:
            assert event["actor"] in (actor, f"{actor}:token"), event
        if actor_name is not None:
            assert event.get("actor_name") == actor_name, event
        if outcome == "denied":
            assert event["reason"], event
        return event


def _approve(server: Server, approval: str, checker: dict[str, str]) -> None:
    decided = server.client.post(
        f"/api/v1/approvals/{approval}/decision", json={"approve": True}, headers=checker
    )
    assert decided.status_code == 200, decided.text


@pytest.fixture(scope="module")
def world(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server.create_user("cov-auditor", "auditor")
    auditor = server.token("cov-auditor", "audit.read")
    server.create_user("cov-checker", "admin")
    checker = server.token("cov-checker", "users.manage", "grants.approve")
    # The console's import form needs an importer: the admin becomes one too.
    granted = server.cli("users", "grant", "e2e-admin", "records_manager")
    assert granted.returncode == 0, granted.stderr
    if granted.stdout.startswith("approval "):
        _approve(server, granted.stdout.split()[1], checker)
    consoles = []
    for username in ("e2e-admin", "cov-checker"):
        client = httpx.Client(base_url=server.url, timeout=10, headers=BROWSER)
        sign_in(client, username)
        consoles.append(client)
    made = World(server, tmp_path_factory.mktemp("files"), auditor, checker, *consoles)
    try:
        yield made
    finally:
        # The consoles signed in here and those the cases signed in (in its state).
        for client in [*consoles, *made.state.values()]:
            if isinstance(client, httpx.Client):
                client.close()


# --- Patterns for the targets a change names --------------------------------------


def _id(value: str) -> str:
    return re.escape(value) + r"(?![\w-])"


def _numbered(kinds: str, number: int | str) -> str:
    """A numbered thing, e.g. ``approval:12`` or ``lexicon term 12``."""
    return rf"(?:{kinds})\W{{0,8}}(?:id\W{{0,3}})?{number}(?!\d)"


def _approval(number: int | str) -> str:
    return _numbered("approval", number)


def _term(number: int | str) -> str:
    return _numbered("lexicon|term", number)


# --- The console's sign-in --------------------------------------------------------

SIGN_IN_USER = "cov-signin"


def _signin_user(w: World) -> str:
    if "signin_id" not in w.state:
        # A role that needs the second factor (one without any is signed in at once).
        w.server.create_user(SIGN_IN_USER, "supervisor")
        w.state["signin_id"] = w.user_id(SIGN_IN_USER)
    signin_id: str = w.state["signin_id"]
    return signin_id


def _password(client: httpx.Client, username: str, password: str) -> httpx.Response:
    page = client.get("/login")
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": form_token(page.text)},
    )


def login_case(w: World) -> None:
    user_id = _signin_user(w)
    who = f"{_id(user_id)}|{_id(SIGN_IN_USER)}"
    with httpx.Client(base_url=w.server.url, timeout=10, headers=BROWSER) as client:
        mark = w.mark()
        wrong = _password(client, SIGN_IN_USER, "not-the-password-at-all")
        assert wrong.status_code == 401, wrong.text
        w.change(mark, who, actor=None, actor_name=None, outcome="denied")
        assert client.get("/login/mfa").headers.get("location") == "/login"  # no session

        mark = w.mark()
        right = _password(client, SIGN_IN_USER, PASSWORD)
        assert right.headers.get("location") == "/login/mfa", right.text
        w.change(mark, who, actor=user_id, actor_name=SIGN_IN_USER)
        # The half-signed-in session is there: it is asked for its second factor.
        assert client.get("/login/mfa").status_code == 200


def mfa_case(w: World) -> None:
    user_id = _signin_user(w)
    who = f"{_id(user_id)}|{_id(SIGN_IN_USER)}"
    client = httpx.Client(base_url=w.server.url, timeout=10, headers=BROWSER)
    w.state["signin_client"] = client
    assert _password(client, SIGN_IN_USER, PASSWORD).headers.get("location") == "/login/mfa"
    page = client.get("/login/mfa")
    found = re.search(r'id="totp-secret" class="secret">([A-Z2-7]+)<', page.text)
    assert found, "the sign-in user enrols here, on first use"
    csrf = form_token(page.text)

    mark = w.mark()
    wrong = client.post("/login/mfa", data={"code": "000000", "csrf_token": csrf})
    assert wrong.status_code == 401
    w.change(mark, who, actor=user_id, actor_name=SIGN_IN_USER, outcome="denied")
    assert client.get("/api/v1/tokens").status_code == 401  # not signed in

    mark = w.mark()
    code = Authenticator(found.group(1)).code()
    done = client.post("/login/mfa", data={"code": code, "csrf_token": csrf})
    assert done.headers.get("location") == "/", done.text
    w.change(mark, who, actor=user_id, actor_name=SIGN_IN_USER)
    assert client.get("/api/v1/tokens").status_code == 200  # signed in
    assert w.users()[SIGN_IN_USER]["mfa_enrolled"]


def logout_case(w: World) -> None:
    user_id = _signin_user(w)
    client: httpx.Client | None = w.state.get("signin_client")
    assert client is not None, "the second-factor case signs the user in first"
    csrf = form_token(client.get("/").text)
    mark = w.mark()
    out = client.post("/logout", data={"csrf_token": csrf})
    assert out.status_code == 303
    w.change(mark, f"{_id(user_id)}|{_id(SIGN_IN_USER)}", actor=user_id, actor_name=SIGN_IN_USER)
    client.cookies.clear()
    client.close()


# --- The HTTP API -----------------------------------------------------------------


def _admin_id(w: World) -> str:
    return w.user_id("e2e-admin")


def add_account_case(w: World) -> None:
    number = f"1065{w.unique('')}0099"
    body = {
        "phone_number_id": number,
        "display_phone_number": "15550000" + number[-3:],
        "app_secret": "coverage-secret",
        "verify_token": "coverage-verify-token",
    }
    mark = w.mark()
    made = w.server.client.post("/api/v1/accounts", json=body, headers=w.server.admin)
    assert made.status_code == 201, made.text
    account_id = made.json()["id"]
    w.change(mark, _id(account_id), actor=_admin_id(w), actor_name="e2e-admin")
    listed = w.server.client.get("/api/v1/accounts", headers=w.server.admin).json()
    assert account_id in {a["id"] for a in listed}

    mark = w.mark()
    again = w.server.client.post("/api/v1/accounts", json=body, headers=w.server.admin)
    assert again.status_code == 409, again.text
    w.change(mark, _id(number), actor=_admin_id(w), actor_name="e2e-admin", outcome="denied")
    listed = w.server.client.get("/api/v1/accounts", headers=w.server.admin).json()
    assert [a["phone_number_id"] for a in listed].count(number) == 1


CHAT = b"13/03/2024, 10:00 - Ana: hello from the export\n14/03/2024, 11:00 - Ana: again\n"


def _contact(w: World, phone: str) -> str:
    found = w.server.get("/api/v1/contacts", phone=phone)
    assert found.status_code == 200, found.text
    contact: str = found.json()["contact_id"]
    return contact


def api_import_case(w: World) -> None:
    phone = w.phone()
    mark = w.mark()
    imported = w.server.client.post(
        "/api/v1/imports/chat-export",
        files={"file": ("chat.txt", CHAT)},
        data={"account_id": w.server.account_id, "contact": phone},
        headers=w.server.officer,
    )
    assert imported.status_code == 201, imported.text
    contact = imported.json()["contact_id"]
    officer = w.user_id("e2e-officer")
    w.change(mark, _id(contact), actor=officer, actor_name="e2e-officer")
    assert _contact(w, phone) == contact
    chat = w.server.get(f"/api/v1/conversations/{contact}").json()
    assert len(chat["messages"]) == 2


def api_create_user_case(w: World) -> None:
    username = w.unique("cov-made")
    body = {"username": username, "password": PASSWORD}
    mark = w.mark()
    made = w.server.client.post("/api/v1/users", json=body, headers=w.server.admin)
    assert made.status_code == 201, made.text
    user_id = made.json()["id"]
    w.change(mark, _id(user_id), actor=_admin_id(w), actor_name="e2e-admin")
    assert w.users()[username]["id"] == user_id

    mark = w.mark()
    again = w.server.client.post("/api/v1/users", json=body, headers=w.server.admin)
    assert again.status_code == 409, again.text
    w.change(mark, _id(username), actor=_admin_id(w), actor_name="e2e-admin", outcome="denied")
    assert [u for u in w.users() if u == username] == [username]


def _roles(w: World, username: str) -> set[tuple[str, str | None]]:
    return {(g["role"], g["account_id"]) for g in w.users()[username]["grants"]}


def api_grant_case(w: World) -> None:
    username, user_id = w.new_user("cov-grantee")
    grants = f"/api/v1/users/{user_id}/grants"
    mark = w.mark()
    agent = w.server.client.post(grants, json={"role": "regulator"}, headers=w.server.admin)
    assert agent.status_code == 201, agent.text
    event = w.change(mark, _id(user_id), actor=_admin_id(w), actor_name="e2e-admin")
    assert "regulator" in event["target"] + (event["scope"] or "")
    assert ("regulator", None) in _roles(w, username)

    # A sensitive role is a request: the event names the approval it opened, and
    # nothing is granted yet.
    mark = w.mark()
    asked = w.server.client.post(
        grants, json={"role": "compliance_officer"}, headers=w.server.admin
    )
    assert asked.status_code == 202, asked.text
    w.change(mark, _approval(asked.json()["id"]), actor=_admin_id(w), actor_name="e2e-admin")
    assert "compliance_officer" not in {role for role, _ in _roles(w, username)}
    pending = w.server.client.get("/api/v1/approvals", headers=w.checker).json()
    assert asked.json()["id"] in {a["id"] for a in pending}


def api_revoke_case(w: World) -> None:
    username, user_id = w.new_user("cov-revokee")
    granted = w.server.client.post(
        f"/api/v1/users/{user_id}/grants", json={"role": "regulator"}, headers=w.server.admin
    )
    assert granted.status_code == 201, granted.text
    mark = w.mark()
    revoked = w.server.client.post(
        f"/api/v1/users/{user_id}/grants/revoke", json={"role": "regulator"}, headers=w.server.admin
    )
    assert revoked.json() == {"revoked": 1}, revoked.text
    w.change(mark, _id(user_id), actor=_admin_id(w), actor_name="e2e-admin")
    assert _roles(w, username) == set()


def api_reset_mfa_case(w: World) -> None:
    user_id = _signin_user(w)
    assert w.users()[SIGN_IN_USER]["mfa_enrolled"], "the second-factor case enrols the user"
    mark = w.mark()
    reset = w.server.client.post(f"/api/v1/users/{user_id}/reset-mfa", headers=w.server.admin)
    assert reset.status_code == 200, reset.text
    w.change(mark, _id(user_id), actor=_admin_id(w), actor_name="e2e-admin")
    assert not w.users()[SIGN_IN_USER]["mfa_enrolled"]


def _request_grant(w: World, role: str = "compliance_officer") -> tuple[str, int]:
    """A user and an approval the admin (the maker) opened for their ``role``."""
    username, user_id = w.new_user("cov-approvee")
    asked = w.server.client.post(
        f"/api/v1/users/{user_id}/grants", json={"role": role}, headers=w.server.admin
    )
    assert asked.status_code == 202, asked.text
    return username, int(asked.json()["id"])


def api_decide_case(w: World) -> None:
    username, approval = _request_grant(w)
    decision = f"/api/v1/approvals/{approval}/decision"
    mark = w.mark()
    own = w.server.client.post(decision, json={"approve": True}, headers=w.server.admin)
    assert own.status_code == 403, own.text
    w.change(
        mark, _approval(approval), actor=_admin_id(w), actor_name="e2e-admin", outcome="denied"
    )
    assert "compliance_officer" not in {role for role, _ in _roles(w, username)}

    mark = w.mark()
    approved = w.server.client.post(decision, json={"approve": True}, headers=w.checker)
    assert approved.status_code == 200, approved.text
    w.change(mark, _approval(approval), actor=w.user_id("cov-checker"), actor_name="cov-checker")
    assert ("compliance_officer", None) in _roles(w, username)


def _session_token(w: World, name: str) -> dict[str, Any]:
    made = w.admin_console.post(
        "/api/v1/tokens",
        json={"name": name, "scopes": ["accounts.read"], "days": 1},
        headers={"X-CSRF-Token": w.csrf(w.admin_console)},
    )
    assert made.status_code == 201, made.text
    token: dict[str, Any] = made.json()
    return token


def _my_tokens(w: World) -> dict[str, Event]:
    return {t["id"]: t for t in w.admin_console.get("/api/v1/tokens").json()}


def api_create_token_case(w: World) -> None:
    mark = w.mark()
    token = _session_token(w, w.unique("cov-token"))
    w.change(mark, _id(token["id"]), actor=_admin_id(w), actor_name="e2e-admin")
    assert not _my_tokens(w)[token["id"]]["revoked"]
    bearer = {"Authorization": f"Bearer {token['token']}"}
    assert w.server.client.get("/api/v1/accounts", headers=bearer).status_code == 200


def api_revoke_token_case(w: World) -> None:
    token = _session_token(w, w.unique("cov-token"))
    revoke = f"/api/v1/tokens/{token['id']}/revoke"
    headers = {"X-CSRF-Token": w.csrf(w.admin_console)}
    mark = w.mark()
    revoked = w.admin_console.post(revoke, headers=headers)
    assert revoked.status_code == 200, revoked.text
    w.change(mark, _id(token["id"]), actor=_admin_id(w), actor_name="e2e-admin")
    assert _my_tokens(w)[token["id"]]["revoked"]
    bearer = {"Authorization": f"Bearer {token['token']}"}
    assert w.server.client.get("/api/v1/accounts", headers=bearer).status_code == 401

    mark = w.mark()
    again = w.admin_console.post(revoke, headers=headers)
    assert 400 <= again.status_code < 500, (again.status_code, again.text)
    w.change(mark, _id(token["id"]), actor=_admin_id(w), actor_name="e2e-admin", outcome="denied")
    assert _my_tokens(w)[token["id"]]["revoked"]


def _lexicon(w: World, *, removed: bool = False) -> dict[int, Event]:
    params = {"removed": "true"} if removed else {}
    listed = w.server.client.get("/api/v1/lexicon", params=params, headers=w.server.officer)
    assert listed.status_code == 200, listed.text
    return {t["id"]: t for t in listed.json()}


def _add_term(w: World, term: str) -> httpx.Response:
    return w.server.client.post(
        "/api/v1/lexicon", json={"term": term, "action": "hold"}, headers=w.server.officer
    )


def api_add_term_case(w: World) -> None:
    term = w.unique("coverage term ")
    officer = w.user_id("e2e-officer")
    mark = w.mark()
    added = _add_term(w, term)
    assert added.status_code == 201, added.text
    term_id = added.json()["id"]
    w.change(mark, _term(term_id), actor=officer, actor_name="e2e-officer")
    assert _lexicon(w)[term_id]["term"] == term

    before = _lexicon(w, removed=True)
    mark = w.mark()
    again = _add_term(w, term.upper())
    assert again.status_code == 409, again.text
    w.change(mark, _term(term_id), actor=officer, actor_name="e2e-officer", outcome="denied")
    assert _lexicon(w, removed=True) == before


def api_remove_term_case(w: World) -> None:
    added = _add_term(w, w.unique("coverage removal "))
    assert added.status_code == 201, added.text
    term_id = added.json()["id"]
    officer = w.user_id("e2e-officer")
    mark = w.mark()
    removed = w.server.client.delete(f"/api/v1/lexicon/{term_id}", headers=w.server.officer)
    assert removed.status_code == 204, removed.text
    w.change(mark, _term(term_id), actor=officer, actor_name="e2e-officer")
    assert term_id not in _lexicon(w)
    assert _lexicon(w, removed=True)[term_id]["removed_at"] is not None

    history = _lexicon(w, removed=True)
    mark = w.mark()
    again = w.server.client.delete(f"/api/v1/lexicon/{term_id}", headers=w.server.officer)
    assert again.status_code == 409, again.text
    w.change(mark, _term(term_id), actor=officer, actor_name="e2e-officer", outcome="denied")
    assert _lexicon(w, removed=True) == history


# --- The console's administration -------------------------------------------------


def console_create_user_case(w: World) -> None:
    username = w.unique("cov-console")
    form = {"username": username, "password": PASSWORD, "csrf_token": w.csrf(w.admin_console)}
    mark = w.mark()
    made = w.admin_console.post("/admin/users", data=form)
    assert made.headers.get("location") == "/admin/users?done=created", made.text
    user_id = w.user_id(username)
    w.change(mark, _id(user_id), actor=_admin_id(w), actor_name="e2e-admin")

    mark = w.mark()
    again = w.admin_console.post("/admin/users", data=form)
    assert again.status_code == 409
    w.change(mark, _id(username), actor=_admin_id(w), actor_name="e2e-admin", outcome="denied")
    assert [u for u in w.users() if u == username] == [username]


def console_grant_case(w: World) -> None:
    username, user_id = w.new_user("cov-console-grantee")
    form = {"role": "regulator", "account_id": "", "csrf_token": w.csrf(w.admin_console)}
    mark = w.mark()
    granted = w.admin_console.post(f"/admin/users/{user_id}/grants", data=form)
    assert granted.headers.get("location") == "/admin/users?done=granted", granted.text
    w.change(mark, _id(user_id), actor=_admin_id(w), actor_name="e2e-admin")
    assert ("regulator", None) in _roles(w, username)


def console_decide_case(w: World) -> None:
    username, approval = _request_grant(w)
    decision = f"/admin/approvals/{approval}/decision"
    mark = w.mark()
    own = w.admin_console.post(
        decision, data={"decision": "approve", "csrf_token": w.csrf(w.admin_console)}
    )
    assert own.status_code == 403
    w.change(
        mark, _approval(approval), actor=_admin_id(w), actor_name="e2e-admin", outcome="denied"
    )
    assert "compliance_officer" not in {role for role, _ in _roles(w, username)}

    mark = w.mark()
    approved = w.checker_console.post(
        decision, data={"decision": "approve", "csrf_token": w.csrf(w.checker_console)}
    )
    assert approved.headers.get("location") == "/admin/users?done=approved", approved.text
    w.change(mark, _approval(approval), actor=w.user_id("cov-checker"), actor_name="cov-checker")
    assert ("compliance_officer", None) in _roles(w, username)


def console_import_case(w: World) -> None:
    phone = w.phone()
    fields = {
        "csrf_token": form_token(w.admin_console.get("/import").text),
        "account_id": w.server.account_id,
        "contact": phone,
        "timezone": "UTC",
    }
    mark = w.mark()
    done = w.admin_console.post("/import", data=fields, files={"file": ("chat.txt", CHAT)})
    assert done.status_code == 200, done.text
    assert "Imported 2 of 2 messages" in done.text
    contact = _contact(w, phone)
    w.change(mark, _id(contact), actor=_admin_id(w), actor_name="e2e-admin")
    assert len(w.server.get(f"/api/v1/conversations/{contact}").json()["messages"]) == 2


# --- The CLI ----------------------------------------------------------------------


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _refused(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1, result.stdout + result.stderr


def _cli_change(w: World, mark: int, target: str, outcome: str = "ok") -> Event:
    return w.change(mark, target, actor="cli", actor_name=CLI.name, outcome=outcome)


def _cli_user(w: World, stem: str) -> tuple[str, str]:
    username = w.unique(stem)
    out = _ok(w.cli("users", "create", username, "--password-env", "E2E_PW", E2E_PW=PASSWORD))
    return username, out.split()[-1]


def cli_accounts_add_case(w: World) -> None:
    number = f"1077{w.unique('')}0088"
    args = ("accounts", "add", "--phone-number-id", number, "--display-phone-number")
    args += ("+15550100" + number[-3:], "--app-secret", "s3cret", "--verify-token", "verify-me")
    mark = w.mark()
    account_id = _ok(w.cli(*args)).strip()
    _cli_change(w, mark, _id(account_id))
    assert account_id in _ok(w.cli("accounts", "list"))

    mark = w.mark()
    _refused(w.cli(*args))
    _cli_change(w, mark, _id(number), "denied")
    assert _ok(w.cli("accounts", "list")).count(f"phone_number_id={number} ") == 1


def cli_import_case(w: World) -> None:
    phone = w.phone()
    export = w.tmp / f"{w.unique('chat')}.txt"
    export.write_bytes(CHAT)
    mark = w.mark()
    out = _ok(
        w.cli("import", "chat-export", str(export), "--account", w.server.account_id,
              "--contact", phone)
    )  # fmt: skip
    assert "imported 2 of 2 messages" in out
    contact = _contact(w, phone)
    assert f"for contact {contact}" in out
    _cli_change(w, mark, _id(contact))
    assert len(w.server.get(f"/api/v1/conversations/{contact}").json()["messages"]) == 2


def cli_users_create_case(w: World) -> None:
    username = w.unique("cov-cli")
    create = ("users", "create", username, "--password-env", "E2E_PW")
    mark = w.mark()
    user_id = _ok(w.cli(*create, E2E_PW=PASSWORD)).split()[-1]
    _cli_change(w, mark, _id(user_id))
    assert w.users()[username]["id"] == user_id

    mark = w.mark()
    _refused(w.cli(*create, E2E_PW=PASSWORD))
    _cli_change(w, mark, _id(username), "denied")
    assert [u for u in w.users() if u == username] == [username]


def cli_users_grant_case(w: World) -> None:
    username, user_id = _cli_user(w, "cov-cli-grantee")
    mark = w.mark()
    _ok(w.cli("users", "grant", username, "regulator"))
    _cli_change(w, mark, _id(user_id))
    assert ("regulator", None) in _roles(w, username)

    mark = w.mark()
    asked = _ok(w.cli("users", "grant", username, "auditor"))
    assert asked.startswith("approval "), asked
    _cli_change(w, mark, _approval(asked.split()[1]))
    assert "auditor" not in {role for role, _ in _roles(w, username)}


def cli_users_revoke_case(w: World) -> None:
    username, user_id = _cli_user(w, "cov-cli-revokee")
    _ok(w.cli("users", "grant", username, "regulator"))
    mark = w.mark()
    _ok(w.cli("users", "revoke", username, "regulator"))
    _cli_change(w, mark, _id(user_id))
    assert _roles(w, username) == set()


def cli_users_reset_mfa_case(w: World) -> None:
    # The checker enrolled when the module's consoles signed in.
    assert w.users()["cov-checker"]["mfa_enrolled"]
    mark = w.mark()
    _ok(w.cli("users", "reset-mfa", "cov-checker"))
    _cli_change(w, mark, _id(w.user_id("cov-checker")))
    assert not w.users()["cov-checker"]["mfa_enrolled"]


def _cli_tokens(w: World, username: str) -> dict[str, str]:
    lines = _ok(w.cli("tokens", "list", username)).splitlines()
    return {line.split()[0]: line for line in lines}


def _cli_holder(w: World) -> str:
    """A user who holds accounts.read (a supervisor, approved by the checker)."""
    username, _ = _cli_user(w, "cov-cli-holder")
    asked = _ok(w.cli("users", "grant", username, "supervisor"))
    assert asked.startswith("approval "), asked
    _approve(w.server, asked.split()[1], w.checker)
    return username


def cli_tokens_create_case(w: World) -> None:
    username = _cli_holder(w)
    before = set(_cli_tokens(w, username))
    mark = w.mark()
    secret = _ok(w.cli("tokens", "create", username, "--scope", "accounts.read")).strip()
    [token_id] = set(_cli_tokens(w, username)) - before
    _cli_change(w, mark, _id(token_id))
    bearer = {"Authorization": f"Bearer {secret}"}
    assert w.server.client.get("/api/v1/accounts", headers=bearer).status_code == 200


def cli_tokens_revoke_case(w: World) -> None:
    username = _cli_holder(w)
    secret = _ok(w.cli("tokens", "create", username, "--scope", "accounts.read")).strip()
    [token_id] = _cli_tokens(w, username)
    mark = w.mark()
    _ok(w.cli("tokens", "revoke", token_id))
    _cli_change(w, mark, _id(token_id))
    assert _cli_tokens(w, username)[token_id].split("  ")[-2] == "revoked"
    bearer = {"Authorization": f"Bearer {secret}"}
    assert w.server.client.get("/api/v1/accounts", headers=bearer).status_code == 401

    mark = w.mark()
    _refused(w.cli("tokens", "revoke", token_id))
    _cli_change(w, mark, _id(token_id), "denied")
    assert "revoked" in _cli_tokens(w, username)[token_id]


def cli_lexicon_add_case(w: World) -> None:
    term = w.unique("cli coverage term ")
    mark = w.mark()
    out = _ok(w.cli("lexicon", "add", term, "--action", "block"))
    term_id = int(out.split()[2].rstrip(":"))
    _cli_change(w, mark, _term(term_id))
    assert _lexicon(w)[term_id]["term"] == term

    before = _lexicon(w, removed=True)
    mark = w.mark()
    _refused(w.cli("lexicon", "add", term.title()))
    _cli_change(w, mark, _term(term_id), "denied")
    assert _lexicon(w, removed=True) == before


def cli_lexicon_remove_case(w: World) -> None:
    out = _ok(w.cli("lexicon", "add", w.unique("cli coverage removal ")))
    term_id = int(out.split()[2].rstrip(":"))
    mark = w.mark()
    _ok(w.cli("lexicon", "remove", str(term_id)))
    _cli_change(w, mark, _term(term_id))
    assert _lexicon(w, removed=True)[term_id]["removed_at"] is not None

    history = _lexicon(w, removed=True)
    mark = w.mark()
    _refused(w.cli("lexicon", "remove", str(term_id)))
    _cli_change(w, mark, _term(term_id), "denied")
    assert _lexicon(w, removed=True) == history


def cli_keys_rotate_case(w: World) -> None:
    mark = w.mark()
    out = _ok(w.cli("keys", "rotate"))
    new_id = out.split("root key ")[1].split()[0]
    # The running server still holds the old root key: it starts again on the new one.
    w.server.stop()
    w.server.start()
    _cli_change(w, mark, _id(new_id))
    assert f"root key: {new_id}" in _ok(w.cli("keys", "status"))


# --- The outbound pipeline: outbox, send policy, templates, consent -----------------


def _person(w: World, stem: str, role: str, *scopes: str) -> tuple[str, dict[str, str]]:
    """A user holding ``role`` on all accounts, with a token of ``scopes`` (cached)."""
    key = f"person:{stem}"
    if key not in w.state:
        w.server.create_user(stem, role)
        w.state[key] = (w.user_id(stem), w.server.token(stem, *scopes))
    person: tuple[str, dict[str, str]] = w.state[key]
    return person


def _agent(w: World) -> tuple[str, dict[str, str]]:
    return _person(w, "cov-agent", "agent", "outbox.send")


def _supervisor(w: World) -> tuple[str, dict[str, str]]:
    return _person(w, "cov-super", "supervisor", "outbox.send", "outbox.approve")


def _checker_officer(w: World) -> tuple[str, dict[str, str]]:
    """A second compliance officer: the checker of templates the first one makes."""
    return _person(w, "cov-officer2", "compliance_officer", "templates.read", "templates.approve")


def _open_window(w: World) -> str:
    """A customer whose real signed inbound message opened the service window."""
    if "window_phone" not in w.state:
        phone = w.phone()
        wa_id = phone.lstrip("+")
        wamid = fixed_wamid(wa_id, 1)
        body = json.dumps(customer_message(wa_id, wamid, int(time.time()))).encode()
        assert w.server.post_webhook(body).status_code == 200
        w.server.records_of(wamid)  # projected: the window is open
        w.state["window_phone"] = phone
    opened: str = w.state["window_phone"]
    return opened


def _hold_term(w: World) -> str:
    if "hold_term" not in w.state:
        term = w.unique("covhold")
        assert _add_term(w, term).status_code == 201  # a hold term
        w.state["hold_term"] = term
    held: str = w.state["hold_term"]
    return held


def _send(w: World, headers: dict[str, str], text: str, key: str) -> httpx.Response:
    body = {
        "account_id": w.server.account_id,
        "to": _open_window(w),
        "content": {"kind": "text", "text": text},
        "idempotency_key": key,
    }
    return w.server.client.post("/api/v1/outbox", json=body, headers=headers)


def _held(w: World, headers: dict[str, str]) -> str:
    """An item held by the lexicon's hold term, sent with ``headers``."""
    sent = _send(w, headers, f"about the {_hold_term(w)} offer", w.unique("cov-held-"))
    assert sent.status_code == 201, sent.text
    assert sent.json()["state"] == "held", sent.json()
    item_id: str = sent.json()["id"]
    return item_id


def _item(w: World, item_id: str, headers: dict[str, str]) -> Event:
    got = w.server.client.get(f"/api/v1/outbox/{item_id}", headers=headers)
    assert got.status_code == 200, got.text
    item: Event = got.json()
    return item


def _outbox_target(item_id: str) -> str:
    return _numbered("outbox", item_id)


def api_outbox_send_case(w: World) -> None:
    agent_id, agent = _agent(w)
    key = w.unique("cov-send-")
    mark = w.mark()
    sent = _send(w, agent, "your parcel is on its way", key)
    assert sent.status_code == 201, sent.text
    item_id = sent.json()["id"]
    # The dispatcher moves the item on as "system": the submission is the agent's.
    w.change(
        mark, _outbox_target(item_id), actor=agent_id, actor_name="cov-agent",
        action="outbox.submit",
    )  # fmt: skip
    assert _item(w, item_id, agent)["content"]["text"] == "your parcel is on its way"

    def mine() -> list[str]:  # the ids: the dispatcher moves the items' states on
        return [i["id"] for i in w.server.client.get("/api/v1/outbox", headers=agent).json()]

    before = mine()
    mark = w.mark()
    again = _send(w, agent, "another message under the same key", key)
    assert again.status_code == 409, again.text
    w.change(
        mark, _id(w.server.account_id), actor=agent_id, actor_name="cov-agent", outcome="denied"
    )
    assert mine() == before
    assert _item(w, item_id, agent)["content"]["text"] == "your parcel is on its way"


def api_outbox_cancel_case(w: World) -> None:
    agent_id, agent = _agent(w)
    item_id = _held(w, agent)
    cancel = f"/api/v1/outbox/{item_id}/cancel"
    mark = w.mark()
    done = w.server.client.post(cancel, headers=agent)
    assert done.status_code == 200, done.text
    w.change(mark, _outbox_target(item_id), actor=agent_id, actor_name="cov-agent")
    assert _item(w, item_id, agent)["state"] == "cancelled"

    mark = w.mark()
    again = w.server.client.post(cancel, headers=agent)
    assert again.status_code == 409, again.text
    w.change(
        mark, _outbox_target(item_id), actor=agent_id, actor_name="cov-agent", outcome="denied"
    )
    item = _item(w, item_id, agent)
    assert item["state"] == "cancelled"
    assert [e["to_state"] for e in item["events"]].count("cancelled") == 1


def api_outbox_approve_case(w: World) -> None:
    super_id, supervisor = _supervisor(w)
    # Nobody approves their own item: the supervisor's own held one is refused.
    own = _held(w, supervisor)
    mark = w.mark()
    refused = w.server.client.post(
        f"/api/v1/outbox/{own}/approve", json={"comment": "mine"}, headers=supervisor
    )
    assert refused.status_code == 409, refused.text
    w.change(mark, _outbox_target(own), actor=super_id, actor_name="cov-super", outcome="denied")
    assert _item(w, own, supervisor)["state"] == "held"
    assert _item(w, own, supervisor)["approved_by"] is None

    _, agent = _agent(w)
    item_id = _held(w, agent)
    mark = w.mark()
    approved = w.server.client.post(
        f"/api/v1/outbox/{item_id}/approve", json={"comment": "checked"}, headers=supervisor
    )
    assert approved.status_code == 200, approved.text
    # The dispatcher may move the approved item on at once, as "system".
    w.change(
        mark, _outbox_target(item_id), actor=super_id, actor_name="cov-super",
        action="outbox.approved",
    )  # fmt: skip
    item = _item(w, item_id, supervisor)
    assert item["approved_by"] == super_id
    assert "approved" in [e["to_state"] for e in item["events"]]


def api_outbox_reject_case(w: World) -> None:
    super_id, supervisor = _supervisor(w)
    _, agent = _agent(w)
    item_id = _held(w, agent)
    reject = f"/api/v1/outbox/{item_id}/reject"
    mark = w.mark()
    bare = w.server.client.post(reject, json={"comment": " "}, headers=supervisor)
    assert bare.status_code == 400, bare.text
    w.change(
        mark, _outbox_target(item_id), actor=super_id, actor_name="cov-super", outcome="denied"
    )
    assert _item(w, item_id, supervisor)["state"] == "held"

    mark = w.mark()
    rejected = w.server.client.post(reject, json={"comment": "off message"}, headers=supervisor)
    assert rejected.status_code == 200, rejected.text
    w.change(mark, _outbox_target(item_id), actor=super_id, actor_name="cov-super")
    assert _item(w, item_id, supervisor)["state"] == "rejected"


def _console_of(w: World, username: str) -> httpx.Client:
    """A console session of ``username`` (signed in once, with TOTP where needed)."""
    key = f"console:{username}"
    if key not in w.state:
        # From an address of its own: sign-in is limited per address, and the
        # module's other sessions use up the limit of the default one.
        forwarded = f"198.51.100.{40 + sum(k.startswith('console:') for k in w.state)}"
        headers = {**BROWSER, "X-Forwarded-For": forwarded}
        client = httpx.Client(base_url=w.server.url, timeout=10, headers=headers)
        sign_in(client, username)
        w.state[key] = client
    console: httpx.Client = w.state[key]
    return console


def console_compose_case(w: World) -> None:
    agent_id, _ = _agent(w)
    console = _console_of(w, "cov-agent")
    form = {
        "csrf_token": w.csrf(console),
        "account_id": w.server.account_id,
        "to": _open_window(w),
        "kind": "text",
        "text": "your order is ready for collection",
        "idempotency_key": w.unique("cov-compose-"),
        "action": "send",
    }
    mark = w.mark()
    sent = console.post("/compose", data=form)
    assert sent.status_code == 303, sent.text
    item_id = sent.headers["location"].rsplit("/", 1)[1]
    w.change(
        mark, _outbox_target(item_id), actor=agent_id, actor_name="cov-agent",
        action="outbox.submit",
    )  # fmt: skip
    before = [i["id"] for i in w.server.client.get("/api/v1/outbox", headers=_agent(w)[1]).json()]

    mark = w.mark()
    bad = dict(form, to="not a number", idempotency_key=w.unique("cov-compose-"))
    refused = console.post("/compose", data=bad)
    assert refused.status_code == 400, refused.text
    w.change(
        mark, _id(w.server.account_id), actor=agent_id, actor_name="cov-agent", outcome="denied"
    )
    after = [i["id"] for i in w.server.client.get("/api/v1/outbox", headers=_agent(w)[1]).json()]
    assert after == before


def console_review_case(w: World) -> None:
    super_id, supervisor = _supervisor(w)
    console = _console_of(w, "cov-super")
    _, agent = _agent(w)
    item_id = _held(w, agent)
    review = f"/review/{item_id}"
    mark = w.mark()
    bare = console.post(
        review, data={"decision": "approve", "comment": " ", "csrf_token": w.csrf(console)}
    )
    assert bare.status_code == 400, bare.text
    w.change(
        mark, _outbox_target(item_id), actor=super_id, actor_name="cov-super", outcome="denied"
    )
    assert _item(w, item_id, supervisor)["state"] == "held"

    mark = w.mark()
    approved = console.post(
        review, data={"decision": "approve", "comment": "checked", "csrf_token": w.csrf(console)}
    )
    assert approved.headers.get("location") == "/review?done=approved", approved.text
    w.change(
        mark, _outbox_target(item_id), actor=super_id, actor_name="cov-super",
        action="outbox.approved",
    )  # fmt: skip
    assert _item(w, item_id, supervisor)["approved_by"] == super_id


def _policy(w: World, account_id: str) -> Event:
    got = w.server.client.get(f"/api/v1/policy/{account_id}", headers=w.server.officer)
    assert got.status_code == 200, got.text
    policy: Event = got.json()
    return policy


def api_policy_case(w: World) -> None:
    account = w.server.account_id
    officer = w.user_id("e2e-officer")
    put = f"/api/v1/policy/{account}"
    mark = w.mark()
    done = w.server.client.put(put, json={"marketing_cap": 3}, headers=w.server.officer)
    assert done.status_code == 200, done.text
    w.change(mark, _numbered("policy", re.escape(account)), actor=officer, actor_name="e2e-officer")
    assert _policy(w, account)["settings"]["marketing_cap"] == 3

    before = _policy(w, account)
    mark = w.mark()
    bad = w.server.client.put(put, json={"messages_per_second": 5000}, headers=w.server.officer)
    assert bad.status_code == 400, bad.text
    w.change(
        mark,
        _numbered("policy", re.escape(account)),
        actor=officer,
        actor_name="e2e-officer",
        outcome="denied",
    )
    assert _policy(w, account) == before


TEMPLATE_BODY = {
    "components": [{"type": "BODY", "text": "Your order {{1}} has shipped"}],
    "parameters": [{"name": "1", "type": "text"}],
}


def _waba_account(w: World) -> str:
    """A business number with a WhatsApp Business Account id (templates need one)."""
    if "waba_account" not in w.state:
        number = f"1088{w.unique('')}0077"
        body = {
            "phone_number_id": number,
            "display_phone_number": "15550200" + number[-3:],
            "app_secret": "coverage-secret",
            "verify_token": "coverage-verify-token",
            "waba_id": f"9{number}",
        }
        made = w.server.client.post("/api/v1/accounts", json=body, headers=w.server.admin)
        assert made.status_code == 201, made.text
        w.state["waba_account"] = made.json()["id"]
    account: str = w.state["waba_account"]
    return account


def _new_template(w: World, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {
        "account_id": _waba_account(w),
        "name": w.unique("cov_template_"),
        "language": "en_US",
        "category": "utility",
    } | TEMPLATE_BODY
    return w.server.client.post("/api/v1/templates", json=body, headers=headers or w.server.officer)


def _template(w: World, template_id: int) -> Event:
    got = w.server.client.get(f"/api/v1/templates/{template_id}", headers=w.server.officer)
    assert got.status_code == 200, got.text
    template: Event = got.json()
    return template


def _template_target(template_id: int | str) -> str:
    return _numbered("template", template_id)


def _submitted(w: World) -> int:
    made = _new_template(w)
    assert made.status_code == 201, made.text
    template_id: int = made.json()["id"]
    submitted = w.server.client.post(
        f"/api/v1/templates/{template_id}/submit", headers=w.server.officer
    )
    assert submitted.status_code == 200, submitted.text
    return template_id


def api_template_create_case(w: World) -> None:
    officer = w.user_id("e2e-officer")
    mark = w.mark()
    made = _new_template(w)
    assert made.status_code == 201, made.text
    template = made.json()
    w.change(mark, _template_target(template["id"]), actor=officer, actor_name="e2e-officer")
    assert _template(w, template["id"])["status"] == "draft"

    listed = w.server.client.get("/api/v1/templates", headers=w.server.officer).json()
    again = {k: template[k] for k in ("name", "language", "category")} | TEMPLATE_BODY
    mark = w.mark()
    dup = w.server.client.post(
        "/api/v1/templates",
        json=again | {"account_id": _waba_account(w)},
        headers=w.server.officer,
    )
    assert dup.status_code == 409, dup.text
    w.change(mark, _id(_waba_account(w)), actor=officer, actor_name="e2e-officer", outcome="denied")
    assert w.server.client.get("/api/v1/templates", headers=w.server.officer).json() == listed


def api_template_update_case(w: World) -> None:
    officer = w.user_id("e2e-officer")
    made = _new_template(w)
    template_id = made.json()["id"]
    path = f"/api/v1/templates/{template_id}"
    change = {
        "components": [{"type": "BODY", "text": "Order {{1}} arrives {{2}}"}],
        "parameters": [{"name": "1", "type": "text"}, {"name": "2", "type": "date"}],
    }
    mark = w.mark()
    done = w.server.client.patch(path, json=change, headers=w.server.officer)
    assert done.status_code == 200, done.text
    w.change(mark, _template_target(template_id), actor=officer, actor_name="e2e-officer")
    assert _template(w, template_id)["components"] == change["components"]

    before = _template(w, template_id)
    mark = w.mark()
    bad = w.server.client.patch(
        path, json={"parameters": [{"name": "3", "type": "text"}]}, headers=w.server.officer
    )
    assert bad.status_code == 400, bad.text
    w.change(
        mark,
        _template_target(template_id),
        actor=officer,
        actor_name="e2e-officer",
        outcome="denied",
    )
    assert _template(w, template_id) == before


def api_template_submit_case(w: World) -> None:
    officer = w.user_id("e2e-officer")
    template_id = _new_template(w).json()["id"]
    submit = f"/api/v1/templates/{template_id}/submit"
    mark = w.mark()
    done = w.server.client.post(submit, headers=w.server.officer)
    assert done.status_code == 200, done.text
    w.change(mark, _template_target(template_id), actor=officer, actor_name="e2e-officer")
    assert _template(w, template_id)["status"] == "submitted"

    before = _template(w, template_id)
    mark = w.mark()
    again = w.server.client.post(submit, headers=w.server.officer)
    assert again.status_code == 409, again.text
    w.change(
        mark,
        _template_target(template_id),
        actor=officer,
        actor_name="e2e-officer",
        outcome="denied",
    )
    assert _template(w, template_id) == before


def api_template_approve_case(w: World) -> None:
    officer = w.user_id("e2e-officer")
    checker_id, checker = _checker_officer(w)
    template_id = _submitted(w)
    approve = f"/api/v1/templates/{template_id}/approve"
    # The maker is not the checker.
    mark = w.mark()
    own = w.server.client.post(approve, json={"comment": "fine"}, headers=w.server.officer)
    assert own.status_code == 403, own.text
    w.change(
        mark,
        _template_target(template_id),
        actor=officer,
        actor_name="e2e-officer",
        outcome="denied",
    )
    assert _template(w, template_id)["status"] == "submitted"

    mark = w.mark()
    done = w.server.client.post(approve, json={"comment": "fine"}, headers=checker)
    assert done.status_code == 200, done.text
    w.change(mark, _template_target(template_id), actor=checker_id, actor_name="cov-officer2")
    template = _template(w, template_id)
    assert (template["status"], template["decided_by"]) == ("approved", checker_id)


def api_template_reject_case(w: World) -> None:
    checker_id, checker = _checker_officer(w)
    template_id = _submitted(w)
    reject = f"/api/v1/templates/{template_id}/reject"
    mark = w.mark()
    bare = w.server.client.post(reject, json={}, headers=checker)
    assert bare.status_code == 400, bare.text
    w.change(
        mark,
        _template_target(template_id),
        actor=checker_id,
        actor_name="cov-officer2",
        outcome="denied",
    )
    assert _template(w, template_id)["status"] == "submitted"

    mark = w.mark()
    done = w.server.client.post(reject, json={"comment": "wrong tone"}, headers=checker)
    assert done.status_code == 200, done.text
    w.change(mark, _template_target(template_id), actor=checker_id, actor_name="cov-officer2")
    template = _template(w, template_id)
    assert (template["status"], template["decision_comment"]) == ("rejected", "wrong tone")


def _consent(w: World, contact: str) -> list[Event]:
    got = w.server.client.get(f"/api/v1/consent/{contact}", headers=w.server.officer)
    assert got.status_code == 200, got.text
    entries: list[Event] = got.json()
    return entries


CONSENT = {
    "category": "marketing",
    "action": "opt_in",
    "method": "web_form",
    "evidence": "signed the newsletter form",
    "occurred_at": "2026-11-03T10:00:00+00:00",
}


def api_consent_record_case(w: World) -> None:
    officer = w.user_id("e2e-officer")
    body = CONSENT | {"account_id": w.server.account_id, "phone": w.phone()}
    mark = w.mark()
    done = w.server.client.post("/api/v1/consent", json=body, headers=w.server.officer)
    assert done.status_code == 201, done.text
    contact = done.json()["contact_id"]
    w.change(mark, _id(contact), actor=officer, actor_name="e2e-officer")
    [entry] = _consent(w, contact)
    assert (entry["action"], entry["evidence"]) == ("opt_in", "signed the newsletter form")

    bad = CONSENT | {"account_id": w.server.account_id, "contact_id": contact, "method": "fax"}
    mark = w.mark()
    refused = w.server.client.post("/api/v1/consent", json=bad, headers=w.server.officer)
    assert refused.status_code == 400, refused.text
    w.change(mark, _id(contact), actor=officer, actor_name="e2e-officer", outcome="denied")
    assert _consent(w, contact) == [entry]


def cli_outbox_send_case(w: World) -> None:
    _agent(w)
    key = w.unique("cov-cli-send-")
    send = ("outbox", "send", w.server.account_id, _open_window(w), "--sender", "cov-agent")
    mark = w.mark()
    out = _ok(w.cli(*send, "--text", "sent from the command line", "--key", key))
    item_id = out.split()[0]
    w.change(
        mark, _outbox_target(item_id), actor="cli", actor_name=CLI.name, action="outbox.submit"
    )
    assert _ok(w.cli("outbox", "show", item_id)).startswith(item_id)

    listed = _ok(w.cli("outbox", "list"))
    mark = w.mark()
    _refused(w.cli(*send, "--text", "another text under that key", "--key", key))
    _cli_change(w, mark, _id(w.server.account_id), "denied")
    assert _ok(w.cli("outbox", "list")) == listed


def _cli_template(w: World, *maker: str) -> int:
    content = w.tmp / f"{w.unique('template')}.json"
    content.write_text(json.dumps(TEMPLATE_BODY))
    out = _ok(
        w.cli("templates", "create", _waba_account(w), w.unique("cov_cli_template_"),
              "--language", "en", "--category", "utility", "--file", str(content), *maker)
    )  # fmt: skip
    return int(out.split()[1])


def cli_templates_create_case(w: World) -> None:
    content = w.tmp / f"{w.unique('template')}.json"
    content.write_text(json.dumps(TEMPLATE_BODY))
    name = w.unique("cov_cli_template_")
    create = ("templates", "create", _waba_account(w), name, "--language", "en")
    create += ("--category", "marketing", "--file", str(content))
    mark = w.mark()
    template_id = int(_ok(w.cli(*create)).split()[1])
    _cli_change(w, mark, _template_target(template_id))
    assert _template(w, template_id)["name"] == name

    listed = _ok(w.cli("templates", "list"))
    mark = w.mark()
    _refused(w.cli(*create))
    _cli_change(w, mark, _id(_waba_account(w)), "denied")
    assert _ok(w.cli("templates", "list")) == listed


def cli_templates_submit_case(w: World) -> None:
    template_id = _cli_template(w)
    mark = w.mark()
    _ok(w.cli("templates", "submit", str(template_id)))
    _cli_change(w, mark, _template_target(template_id))
    assert _template(w, template_id)["status"] == "submitted"

    before = _template(w, template_id)
    mark = w.mark()
    _refused(w.cli("templates", "submit", str(template_id)))
    _cli_change(w, mark, _template_target(template_id), "denied")
    assert _template(w, template_id) == before


def cli_templates_approve_case(w: World) -> None:
    checker_id, _ = _checker_officer(w)
    # The checker's own template: made and submitted as them, refused as their approval.
    own = _cli_template(w, "--as", "e2e-officer")
    _ok(w.cli("templates", "submit", str(own), "--as", "e2e-officer"))
    officer = w.user_id("e2e-officer")
    mark = w.mark()
    _refused(w.cli("templates", "approve", str(own), "--as", "e2e-officer"))
    w.change(mark, _template_target(own), actor=officer, actor_name="e2e-officer", outcome="denied")
    assert _template(w, own)["status"] == "submitted"

    mark = w.mark()
    _ok(w.cli("templates", "approve", str(own), "--as", "cov-officer2", "--comment", "ok"))
    w.change(mark, _template_target(own), actor=checker_id, actor_name="cov-officer2")
    assert _template(w, own)["decided_by"] == checker_id


def cli_templates_reject_case(w: World) -> None:
    checker_id, _ = _checker_officer(w)
    template_id = _cli_template(w)
    reject = ("templates", "reject", str(template_id), "--as", "cov-officer2")
    mark = w.mark()
    _refused(w.cli(*reject, "--comment", "not submitted yet"))  # a draft
    w.change(
        mark,
        _template_target(template_id),
        actor=checker_id,
        actor_name="cov-officer2",
        outcome="denied",
    )
    assert _template(w, template_id)["status"] == "draft"

    _ok(w.cli("templates", "submit", str(template_id)))
    mark = w.mark()
    _ok(w.cli(*reject, "--comment", "too long"))
    w.change(mark, _template_target(template_id), actor=checker_id, actor_name="cov-officer2")
    assert _template(w, template_id)["status"] == "rejected"


def cli_consent_record_case(w: World) -> None:
    record = ("consent", "record", w.server.account_id, "--category", "utility")
    record += ("--action", "opt_in", "--method", "agent_attestation", "--evidence", "said yes")
    record += ("--occurred-at", "2026-11-04T09:00:00+00:00")
    mark = w.mark()
    out = _ok(w.cli(*record, "--phone", w.phone()))
    contact = out.split()[3]
    _cli_change(w, mark, _id(contact))
    assert [e["category"] for e in _consent(w, contact)] == ["utility"]

    mark = w.mark()
    _refused(w.cli(*record, "--contact", "ct_nobody"))
    _cli_change(w, mark, _id("ct_nobody"), "denied")
    assert _consent(w, "ct_nobody") == []


# --- The tables -------------------------------------------------------------------

Case = Callable[[World], None]
READ_ONLY = Exempt("reads only: it changes nothing")

ROUTES: dict[RouteKey, Case | Exempt] = {
    # The console's sign-in first: its rate limit counts from the module's start.
    ("POST", "/login"): login_case,
    ("POST", "/login/mfa"): mfa_case,
    ("POST", "/logout"): logout_case,
    ("POST", "/api/v1/accounts"): add_account_case,
    ("POST", "/api/v1/imports/chat-export"): api_import_case,
    ("POST", "/api/v1/users"): api_create_user_case,
    ("POST", "/api/v1/users/{user_id:str}/grants"): api_grant_case,
    ("POST", "/api/v1/users/{user_id:str}/grants/revoke"): api_revoke_case,
    ("POST", "/api/v1/users/{user_id:str}/reset-mfa"): api_reset_mfa_case,
    ("POST", "/api/v1/approvals/{approval_id:int}/decision"): api_decide_case,
    ("POST", "/api/v1/tokens"): api_create_token_case,
    ("POST", "/api/v1/tokens/{token_id:str}/revoke"): api_revoke_token_case,
    ("POST", "/api/v1/lexicon"): api_add_term_case,
    ("DELETE", "/api/v1/lexicon/{term_id:int}"): api_remove_term_case,
    ("POST", "/admin/users"): console_create_user_case,
    ("POST", "/admin/users/{user_id:str}/grants"): console_grant_case,
    ("POST", "/admin/approvals/{approval_id:int}/decision"): console_decide_case,
    ("POST", "/compose"): console_compose_case,
    ("POST", "/review/{item_id:str}"): console_review_case,
    ("POST", "/import"): console_import_case,
    ("POST", "/api/v1/outbox"): api_outbox_send_case,
    ("POST", "/api/v1/outbox/{item_id:str}/cancel"): api_outbox_cancel_case,
    ("POST", "/api/v1/outbox/{item_id:str}/approve"): api_outbox_approve_case,
    ("POST", "/api/v1/outbox/{item_id:str}/reject"): api_outbox_reject_case,
    ("POST", "/api/v1/outbox/preview"): Exempt(
        "the decision a message would get: nothing is queued, sealed or changed"
    ),
    ("PUT", "/api/v1/policy/{account_id:str}"): api_policy_case,
    ("POST", "/api/v1/templates"): api_template_create_case,
    ("PATCH", "/api/v1/templates/{template_id:int}"): api_template_update_case,
    ("POST", "/api/v1/templates/{template_id:int}/submit"): api_template_submit_case,
    ("POST", "/api/v1/templates/{template_id:int}/approve"): api_template_approve_case,
    ("POST", "/api/v1/templates/{template_id:int}/reject"): api_template_reject_case,
    ("POST", "/api/v1/consent"): api_consent_record_case,
    ("POST", "/api/v1/search"): Exempt(
        "a query in a POST body: it reads only, and is audited as archive.search"
    ),
    ("POST", "/webhooks/whatsapp"): Exempt(
        "captured data, not a change anyone asks for: its record of truth is the capture "
        "journal, and projecting it is audited as a job (job.project_journal)"
    ),
}

COMMANDS: dict[CommandKey, Case | Exempt] = {
    ("accounts", "add"): cli_accounts_add_case,
    ("accounts", "list"): READ_ONLY,
    ("import", "chat-export"): cli_import_case,
    ("import", "check"): READ_ONLY,
    ("users", "create"): cli_users_create_case,
    ("users", "grant"): cli_users_grant_case,
    ("users", "revoke"): cli_users_revoke_case,
    ("users", "reset-mfa"): cli_users_reset_mfa_case,
    ("users", "list"): READ_ONLY,
    ("tokens", "create"): cli_tokens_create_case,
    ("tokens", "list"): READ_ONLY,
    ("tokens", "revoke"): cli_tokens_revoke_case,
    ("lexicon", "add"): cli_lexicon_add_case,
    ("lexicon", "list"): READ_ONLY,
    ("lexicon", "remove"): cli_lexicon_remove_case,
    ("outbox", "send"): cli_outbox_send_case,
    ("outbox", "list"): READ_ONLY,
    ("outbox", "show"): READ_ONLY,
    ("templates", "create"): cli_templates_create_case,
    ("templates", "submit"): cli_templates_submit_case,
    ("templates", "approve"): cli_templates_approve_case,
    ("templates", "reject"): cli_templates_reject_case,
    ("templates", "list"): READ_ONLY,
    ("templates", "show"): READ_ONLY,
    ("consent", "record"): cli_consent_record_case,
    ("consent", "list"): Exempt("reads only; the read is audited as consent.read"),
    ("consent", "export"): Exempt("reads only; the read is audited as consent.export"),
    ("keys", "status"): READ_ONLY,
    ("vault", "verify"): READ_ONLY,
    ("audit", "verify"): READ_ONLY,
    ("audit", "export"): Exempt("reads the trail into a file outside the archive"),
    ("audit", "public-key"): READ_ONLY,
    ("keys", "init"): Exempt(
        "writes a new root key file and never overwrites one: no archive changes, and "
        "before the archive exists there is no trail to record into"
    ),
    ("serve",): Exempt("runs the server: each request it answers is audited by its route"),
    ("worker",): Exempt("runs the scheduled jobs, each audited as a job.* event"),
    ("migrate",): Exempt(
        "changes the schema, not the archive's content; the database keeps the revision"
    ),
    ("demo",): Exempt(
        "drives the sandbox through the HTTP API, whose routes audit each change it makes"
    ),
    # Last: the server restarts on the new root key.
    ("keys", "rotate"): cli_keys_rotate_case,
}


def _cases() -> list[Any]:
    routes = [pytest.param(case, id=_name(key)) for key, case in ROUTES.items() if callable(case)]
    commands = [
        pytest.param(case, id="cli " + _name(key))
        for key, case in COMMANDS.items()
        if callable(case)
    ]
    return routes + commands


# --- The tests --------------------------------------------------------------------


def test_every_change_has_a_case_or_an_exemption() -> None:
    routes = changing_routes(_app())
    assert len(routes) > 15  # the route table really was read
    check_coverage(routes, ROUTES, "route")
    commands = leaf_commands(main)
    assert len(commands) > 20  # and the command tree
    check_coverage(commands, COMMANDS, "command")
    assert all(e.reason for e in [*ROUTES.values(), *COMMANDS.values()] if isinstance(e, Exempt))


@patch("/api/v1/fake-change", opt={"permission": "authenticated"})
async def _fake_change() -> None:
    """A route added without an audit case."""


def test_the_meta_check_names_a_route_or_command_it_lacks() -> None:
    app = _app()
    app.register(_fake_change)
    with pytest.raises(AssertionError, match=r"no audit case or exemption for route PATCH "):
        check_coverage(changing_routes(app), ROUTES, "route")
    with pytest.raises(AssertionError, match=r"for route PATCH /api/v1/fake-change$"):
        check_coverage(changing_routes(app), ROUTES, "route")

    nested = click.Group("fake", commands={"change": click.Command("change")})
    grown = click.Group("strongroom", commands={**main.commands, "fake": nested})
    with pytest.raises(
        AssertionError, match=r"^no audit case or exemption for command fake change$"
    ):
        check_coverage(leaf_commands(grown), COMMANDS, "command")

    gone = {k: v for k, v in ROUTES.items() if k != ("POST", "/logout")} | {
        ("PUT", "/api/v1/gone"): READ_ONLY
    }
    with pytest.raises(AssertionError) as caught:
        check_coverage(changing_routes(_app()), gone, "route")
    assert str(caught.value).startswith(
        "no audit case or exemption for route POST /logout; "
        "the table names route PUT /api/v1/gone, which no longer exists"
    )


@pytest.mark.parametrize("case", _cases())
def test_every_change_is_audited_with_the_change(case: Case, world: World) -> None:
    case(world)
