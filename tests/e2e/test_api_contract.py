"""The API against its own OpenAPI description: schemathesis drives a real server
with cases generated from the description it serves, as nobody, as an admin and as
a compliance officer (who also imports), and fails on any 5xx or any answer the
description does not allow (status, body, content type, headers).

- Generated ids rarely name a row, so each generated case (not the coverage
  phase's boundary cases) whose path has an id is sent again with the id of a
  seeded row: the routes answer real bodies too.
- The coverage phase's boundary and malformed values are sent where the
  principal holds the route's permission; elsewhere the guard refuses before any
  value is read, which the generated cases check.
- No route is excluded. The only ones that could end the run's own session
  revoke the caller's token (``POST /api/v1/tokens/{token_id}/revoke``) or its
  grants (``POST /api/v1/users/{user_id}/grants/revoke``), and only given the
  run's own ids, which are never generated or filled in (the seeded user is a
  bystander). Console routes (sign-in, sign-out) are not in the description.
- The run is bounded: a few generated cases per operation, and once
  ``BUDGET_SECONDS`` of wall-clock time have passed since the server was started,
  the remaining operations are skipped (and reported as skipped).
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from litestar.routes import HTTPRoute
from litestar.serialization import encode_json
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from api.app import create_app
from api.http.auth import AUTHENTICATED, PUBLIC, permission_of
from api.settings import load_settings
from archiver.identity.services import ROLE_PERMISSIONS, Role
from tests.e2e.conftest import running_server
from tests.e2e.server import Server, customer_message, status_update

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,  # 405 with Allow, for the coverage phase's undescribed methods
]
# The whole module's wall-clock budget, the server's start and seeding included.
BUDGET_SECONDS = 120
CUSTOMER = "447700900321"
# What each signed-in principal's token may do (as Server.bootstrap_users makes them).
SCOPES = {
    "admin": ROLE_PERMISSIONS[Role.ADMIN],
    "officer": ROLE_PERMISSIONS[Role.COMPLIANCE_OFFICER] | ROLE_PERMISSIONS[Role.RECORDS_MANAGER],
}

APP = create_app(load_settings({"STRONGROOM_DATA_DIR": "/nonexistent"}))
# The tests are generated from the application's own description, at collection
# (schemathesis' fixture-based loading needs pytest's removed ``Node._nodeid``);
# test_the_server_serves_this_description holds the server to serving it.
# As JSON, the way the server serves it: a default such as a send policy's quiet
# hours is a Python object (a time) until it is encoded.
DESCRIPTION = json.loads(encode_json(APP.openapi_schema.to_schema()))
PERMISSIONS = {
    (method, route.path_format): permission_of(handler)
    for route in APP.routes
    if isinstance(route, HTTPRoute)
    for method, (handler, _) in route.route_handler_map.items()
}
signed_in_schema = schemathesis.openapi.from_dict(DESCRIPTION)
# Nobody's requests are all refused before any value is read: generated cases only.
anonymous_schema = schemathesis.openapi.from_dict(
    DESCRIPTION,
    config=schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": False}}}),
)


class Seeded:
    """The server, the ids of rows seeded in it by path parameter name, and the
    run's wall-clock deadline."""

    def __init__(self, server: Server, ids: dict[str, str], deadline: float) -> None:
        self.server = server
        self.ids = ids
        self.deadline = deadline

    def check(self, case: Any, headers: dict[str, str]) -> None:
        """Send ``case`` and run the checks; again with seeded ids in its path."""
        if time.monotonic() > self.deadline:
            pytest.skip(f"past the contract run's budget of {BUDGET_SECONDS} s")
        case.call_and_validate(base_url=self.server.url, headers=headers, checks=CHECKS)
        path = case.path_parameters or {}
        known = {name: self.ids[name] for name in path if name in self.ids}
        if known and not _is_coverage(case):
            case.path_parameters = path | known
            case.call_and_validate(base_url=self.server.url, headers=headers, checks=CHECKS)


def _is_coverage(case: Any) -> bool:
    return case.meta is not None and case.meta.phase.name.value == "coverage"


def _body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def _seed(server: Server) -> dict[str, str]:
    """Messages and a delivery status, an imported chat with a photo, a lexicon
    term, and a pending approval for a bystander user."""
    for n, text in enumerate(["Can we meet on Friday?", "Please call me back"], start=1):
        message = customer_message(CUSTOMER, f"wamid.CT{n}", 1763710000 + n, text={"body": text})
        assert server.post_webhook(_body(message)).status_code == 200
    status = status_update(CUSTOMER, "wamid.CTOUT", 1763710009, "delivered")
    assert server.post_webhook(_body(status)).status_code == 200
    record = server.records_of("wamid.CT1")[0]

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        chat = "13/03/2024, 10:00 - +44 7700 900322: IMG-20240312-WA0001.jpg (file attached)\n"
        archive.writestr("WhatsApp Chat with Sam.txt", chat)
        archive.writestr("IMG-20240312-WA0001.jpg", b"\x89PNG\r\n\x1a\n contract test image")
    imported = server.client.post(
        "/api/v1/imports/chat-export",
        files={"file": ("chat.zip", buffer.getvalue())},
        data={"account_id": server.account_id, "contact": "+447700900322"},
        headers=server.officer,
    )
    assert imported.status_code == 201, imported.text
    contact = imported.json()["contact_id"]
    chat_view = server.get(f"/api/v1/conversations/{contact}").json()
    media = chat_view["messages"][0]["media"][0]["id"]

    term = server.client.post(
        "/api/v1/lexicon", json={"term": "off the record"}, headers=server.officer
    )
    assert term.status_code == 201, term.text
    user = server.client.post(
        "/api/v1/users",
        json={"username": "contract-bystander", "password": "contract-password-long-enough"},
        headers=server.admin,
    )
    assert user.status_code == 201, user.text
    approval = server.client.post(
        f"/api/v1/users/{user.json()['id']}/grants", json={"role": "auditor"}, headers=server.admin
    )
    assert approval.status_code == 202, approval.text
    return {
        "account_id": server.account_id,
        "record_id": str(record["id"]),
        "contact_id": contact,
        "media_id": str(media),
        "term_id": str(term.json()["id"]),
        "user_id": user.json()["id"],
        "approval_id": str(approval.json()["id"]),
    }


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    deadline = time.monotonic() + BUDGET_SECONDS
    with running_server(Path(tmp_path_factory.mktemp("contract")), "sqlite") as server:
        yield Seeded(server, _seed(server), deadline)


@pytest.fixture(params=["admin", "officer"])
def signed_in(request: pytest.FixtureRequest, seeded: Seeded) -> str:
    """The name of a signed-in principal."""
    name: str = request.param
    return name


def test_the_server_serves_this_description(seeded: Seeded) -> None:
    served = seeded.server.client.get("/schema/openapi.json")
    assert served.status_code == 200
    assert served.json() == DESCRIPTION


@pytest.mark.usefixtures("signed_in")
@signed_in_schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_signed_in_answers_match_the_description(case: Any, signed_in: str, seeded: Seeded) -> None:
    permission = PERMISSIONS[(case.operation.method.upper(), case.operation.path)]
    permitted = permission in (PUBLIC, AUTHENTICATED) or permission in SCOPES[signed_in]
    if _is_coverage(case) and not permitted:
        return
    seeded.check(case, getattr(seeded.server, signed_in))


@anonymous_schema.parametrize()
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
def test_anonymous_answers_match_the_description(case: Any, seeded: Seeded) -> None:
    seeded.check(case, {})
