"""The compliance lexicon through a real server and the real CLI: officers add, list
and remove terms; bad input and duplicates change nothing; other roles are refused;
every change is in the audit trail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server
from tests.e2e.test_auth import _password_step

LEXICON = "/api/v1/lexicon"


@pytest.fixture(scope="module")
def auditor(server: Server) -> dict[str, str]:
    server.create_user("lex-auditor", "auditor")
    return server.token("lex-auditor", "audit.read")


def _terms(server: Server, *, removed: bool = False) -> list[dict[str, Any]]:
    params = {"removed": "true"} if removed else {}
    response = server.client.get(LEXICON, params=params, headers=server.officer)
    assert response.status_code == 200, response.text
    terms: list[dict[str, Any]] = response.json()
    return terms


def _events(server: Server, auditor: dict[str, str], action: str) -> list[dict[str, Any]]:
    response = server.client.get("/api/v1/audit", params={"action": action}, headers=auditor)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def _add(server: Server, term: str, action: str = "flag") -> dict[str, Any]:
    response = server.client.post(
        LEXICON, json={"term": term, "action": action}, headers=server.officer
    )
    assert response.status_code == 201, response.text
    added: dict[str, Any] = response.json()
    return added


def test_officer_adds_lists_and_removes_keeping_history(
    server: Server, auditor: dict[str, str]
) -> None:
    added = _add(server, "  Guarantee ", "hold")
    assert added["term"] == "Guarantee"
    assert added["normalized"] == "guarantee"
    assert added["action"] == "hold"
    assert added["added_by"].endswith(":token")
    assert added["removed_at"] is None
    default = server.client.post(LEXICON, json={"term": "risk-free"}, headers=server.officer)
    assert default.status_code == 201, default.text
    assert default.json()["action"] == "flag"
    active = {t["id"]: t for t in _terms(server)}
    assert {added["id"], default.json()["id"]} <= set(active)

    removed = server.client.delete(f"{LEXICON}/{added['id']}", headers=server.officer)
    assert removed.status_code == 204, removed.text
    assert added["id"] not in {t["id"] for t in _terms(server)}
    history = {t["id"]: t for t in _terms(server, removed=True)}
    assert history[added["id"]]["removed_by"] == added["added_by"]
    assert history[added["id"]]["removed_at"] is not None
    assert history[added["id"]]["term"] == "Guarantee"

    again = server.client.delete(f"{LEXICON}/{added['id']}", headers=server.officer)
    assert again.status_code == 409
    assert "already removed" in again.json()["error"]
    missing = server.client.delete(f"{LEXICON}/999999", headers=server.officer)
    assert missing.status_code == 404
    assert "no lexicon term 999999" in missing.json()["error"]

    # A removed term can be added again: a new row, the old one stays.
    readded = _add(server, "guarantee", "block")
    assert readded["id"] != added["id"]
    history = {t["id"]: t for t in _terms(server, removed=True)}
    assert history[added["id"]]["removed_at"] is not None
    assert history[readded["id"]]["removed_at"] is None

    # Every change was recorded before it was answered, with the officer's role.
    adds = {e["target"]: e for e in _events(server, auditor, "lexicon.add")}
    for term in (added, default.json(), readded):
        event = adds[f"lexicon:{term['id']} action:{term['action']}"]
        assert event["role"] == "compliance_officer"
        assert event["actor"] == term["added_by"]
        assert event["has_details"]  # the term itself, sealed inside the event
    removes = [e["target"] for e in _events(server, auditor, "lexicon.remove")]
    assert f"lexicon:{added['id']} action:hold" in removes


def test_a_duplicate_is_refused_and_changes_nothing(server: Server) -> None:
    first = _add(server, "off the record", "block")
    before = _terms(server, removed=True)
    for same in ("off the record", "Off-The-Record!", "OFF THE RECORD"):
        response = server.client.post(
            LEXICON, json={"term": same, "action": "flag"}, headers=server.officer
        )
        assert response.status_code == 409, response.text
        assert response.json()["error"] == (
            f"{same!r} is already in the lexicon as term {first['id']} ('off the record', block)"
        )
    assert _terms(server, removed=True) == before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"term": ""}, "the term is empty"),
        ({"term": "   "}, "the term is empty"),
        ({"term": "?!… —"}, "no searchable words"),
        ({"term": "x" * 201}, "longer than 200 characters"),
        ({"term": "a\u0000b"}, "control characters"),
        ({"term": "fine", "action": "delete"}, "unknown action 'delete'"),
        ({"term": "fine", "action": "BLOCK"}, "unknown action 'BLOCK'"),
        ({}, "Validation failed"),
        ({"term": 5}, "Validation failed"),
        ({"term": "fine", "colour": "red"}, "Validation failed"),
    ],
    ids=[
        "empty",
        "whitespace",
        "punctuation",
        "too-long",
        "nul",
        "unknown-action",
        "action-case",
        "missing",
        "not-text",
        "unknown-field",
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    server: Server, body: dict[str, Any], message: str
) -> None:
    before = _terms(server, removed=True)
    response = server.client.post(LEXICON, json=body, headers=server.officer)
    assert response.status_code == 400, response.text
    assert message in response.text
    assert _terms(server, removed=True) == before


@pytest.mark.parametrize(
    ("name", "role", "scoped", "scopes"),
    [
        ("lex-regulator", "regulator", False, ()),  # no permission at all: signs in instead
        ("lex-admin", "admin", False, ("accounts.read",)),
        # On one account only: lexicon.manage counts only on all accounts.
        ("lex-officer-one", "compliance_officer", True, ("archive.read",)),
    ],
)
def test_other_roles_are_refused(
    server: Server,
    clients: Callable[..., httpx.Client],
    name: str,
    role: str,
    scoped: bool,
    scopes: tuple[str, ...],
) -> None:
    server.create_user(name, role, account=server.account_id if scoped else None)
    # No token can carry the permission, since the user lacks it.
    refused = server.cli("tokens", "create", name, "--scope", "lexicon.manage")
    assert refused.returncode == 1
    assert f"{name} lacks lexicon.manage" in refused.stderr
    if scopes:
        client, headers = server.client, server.token(name, *scopes)
    else:
        client, headers = clients(), {}
        assert _password_step(client, name).headers["location"] == "/login/mfa"
        assert client.get("/login/mfa").headers["location"] == "/"  # no second factor needed
    term = _add(server, f"refused-{role}")
    before = _terms(server, removed=True)
    for method, path, body in (
        ("GET", LEXICON, None),
        ("POST", LEXICON, {"term": "sneaky"}),
        ("DELETE", f"{LEXICON}/{term['id']}", None),
    ):
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 403, (method, response.text)
        assert response.json()["error"] == "this needs lexicon.manage"
    assert _terms(server, removed=True) == before


def test_cli_manages_the_same_lexicon(server: Server, auditor: dict[str, str]) -> None:
    added = server.cli("lexicon", "add", "インサイダー", "--action", "block")
    assert added.returncode == 0, added.stderr
    term_id = int(added.stdout.split()[2].rstrip(":"))
    assert added.stdout.strip() == f"added term {term_id}: インサイダー (block)"
    over_http = {t["id"]: t for t in _terms(server)}[term_id]
    assert (over_http["added_by"], over_http["action"]) == ("cli", "block")

    listed = server.cli("lexicon", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(
        line.startswith(f"{term_id}  block  インサイダー  added ")
        for line in listed.stdout.splitlines()
    )

    # Katakana and hiragana are one term to the blind index, so this is a duplicate.
    duplicate = server.cli("lexicon", "add", "いんさいだー")
    assert duplicate.returncode == 1
    assert f"already in the lexicon as term {term_id}" in duplicate.stderr
    bad = server.cli("lexicon", "add", "...")
    assert bad.returncode == 1
    assert "no searchable words" in bad.stderr
    unknown = server.cli("lexicon", "add", "fine", "--action", "delete")
    assert unknown.returncode == 2
    assert "'delete' is not one of" in unknown.stderr

    removed = server.cli("lexicon", "remove", str(term_id))
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == f"term {term_id} removed"
    assert server.cli("lexicon", "remove", str(term_id)).returncode == 1
    assert f"{term_id}  block" not in server.cli("lexicon", "list").stdout
    everything = server.cli("lexicon", "list", "--all").stdout.splitlines()
    line = next(line for line in everything if line.startswith(f"{term_id}  "))
    assert line.endswith(" by cli")
    assert " removed " in line

    assert f"lexicon:{term_id} action:block" in {
        e["target"] for e in _events(server, auditor, "lexicon.add") if e["actor"] == "cli"
    }
    assert f"lexicon:{term_id} action:block" in {
        e["target"] for e in _events(server, auditor, "lexicon.remove") if e["actor"] == "cli"
    }
    outcomes = [e["outcome"] for e in _events(server, auditor, "cli.lexicon.add")]
    assert "ok" in outcomes
    assert "failed" in outcomes  # the refused duplicate and the term with no words
