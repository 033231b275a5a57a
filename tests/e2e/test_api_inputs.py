"""What the OpenAPI description says about inputs is what the server does: values
it allows are accepted, values it refuses are a 400 ``Error`` naming the field, and
a refusal changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.routes import HTTPRoute

from api.app import create_app
from api.http.auth import AUTHENTICATED, PUBLIC, permission_of
from api.settings import load_settings
from tests.e2e.server import APP_SECRET, VERIFY_TOKEN, Server

APP = create_app(load_settings({"STRONGROOM_DATA_DIR": "/nonexistent"}))
DESCRIPTION = APP.openapi_schema.to_schema()
ERROR = {"$ref": "#/components/schemas/Error"}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in DESCRIPTION["paths"].items()
        for method, operation in item.items()
    ]


def _permission(method: str, path: str) -> str | None:
    for route in APP.routes:
        if isinstance(route, HTTPRoute) and route.path_format == path:
            return permission_of(route.route_handler_map[method][0])
    raise AssertionError(f"{method} {path} is not a route")


def test_every_error_answer_is_documented_as_an_error_object() -> None:
    assert DESCRIPTION["components"]["schemas"]["Error"]["required"] == ["error"]
    assert len(_operations()) > 20
    for method, path, operation in _operations():
        responses = operation["responses"]
        where = f"{method} {path}"
        errors = {status for status in responses if status.startswith(("4", "5"))}
        for status in errors - {"503"}:  # /readyz says which check failed instead
            assert responses[status]["content"]["application/json"]["schema"] == ERROR, where
        permission = _permission(method, path)
        protected = permission != PUBLIC
        assert ("401" in errors) == protected, where
        assert ("security" in operation) == protected, where
        refusable = protected and (permission != AUTHENTICATED or method != "GET")
        assert ("403" in errors) == refusable, where
        if "requestBody" in operation:
            assert {"400", "413"} <= errors, where
        if "{" in path:
            assert {"400", "404"} <= errors, where


def test_the_schema_viewers_are_not_api_operations() -> None:
    assert not [path for path in DESCRIPTION["paths"] if path.startswith("/schema")]


def test_the_audit_export_describes_its_signature_header() -> None:
    ok = DESCRIPTION["paths"]["/api/v1/audit/export"]["get"]["responses"]["200"]
    assert ok["headers"]["x-strongroom-signature"]["required"] is True


def _account(**fields: str) -> dict[str, str]:
    return {
        "phone_number_id": "106540352242923",
        "display_phone_number": "15550783882",
        "app_secret": APP_SECRET,
        "verify_token": VERIFY_TOKEN,
    } | fields


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"app_secret": ""}, "app_secret"),
        ({"verify_token": "short"}, "verify_token"),
        ({"phone_number_id": "not-digits"}, "phone_number_id"),
    ],
    ids=["empty-app-secret", "short-verify-token", "phone-number-id"],
)
def test_an_account_the_description_refuses_is_a_400_naming_the_field(
    server: Server, fields: dict[str, str], named: str
) -> None:
    spec = DESCRIPTION["components"]["schemas"]["AccountIn"]["properties"][named]
    assert "minLength" in spec or "pattern" in spec  # the description says it
    before = server.client.get("/api/v1/accounts", headers=server.admin).json()
    refused = server.client.post("/api/v1/accounts", json=_account(**fields), headers=server.admin)
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert named in body["error"]
    assert body["problems"][0]["field"] == named
    assert body["problems"][0]["source"] == "body"
    assert server.client.get("/api/v1/accounts", headers=server.admin).json() == before


def test_a_body_with_an_unknown_field_is_a_400_naming_it(server: Server) -> None:
    refused = server.client.post(
        "/api/v1/accounts", json=_account(colour="red"), headers=server.admin
    )
    assert refused.status_code == 400, refused.text
    assert refused.json() == {
        "error": "Validation failed for POST /api/v1/accounts: "
        "Object contains unknown field `colour`",
        "problems": [{"reason": "Object contains unknown field `colour`", "source": "body"}],
    }


def test_approvals_accept_exactly_the_statuses_the_description_lists(server: Server) -> None:
    (status,) = [
        p
        for p in DESCRIPTION["paths"]["/api/v1/approvals"]["get"]["parameters"]
        if p["name"] == "status"
    ]
    assert status["schema"]["const"] == "pending"  # a one-value enum
    listed = server.client.get("/api/v1/approvals?status=pending", headers=server.admin)
    assert listed.status_code == 200, listed.text
    refused = server.client.get("/api/v1/approvals?status=0", headers=server.admin)
    assert refused.status_code == 400
    assert refused.json()["problems"] == [
        {"reason": "Invalid enum value '0'", "field": "status", "source": "query"}
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/messages/{}",
        "/api/v1/media/{}",
    ],
)
@pytest.mark.parametrize("row_id", [0, 2**63, 10**30])
def test_an_id_outside_the_databases_range_is_a_400_not_a_crash(
    server: Server, path: str, row_id: int
) -> None:
    response = server.get(path.format(row_id))
    assert response.status_code == 400, response.text
    assert response.json()["problems"][0]["source"] == "path"


def test_the_largest_id_is_looked_up(server: Server) -> None:
    assert server.get(f"/api/v1/messages/{2**63 - 1}").status_code == 404
    deleted = server.client.delete(f"/api/v1/lexicon/{2**63 - 1}", headers=server.officer)
    assert deleted.status_code == 404


def test_a_grant_on_an_unknown_account_is_a_404(server: Server) -> None:
    user = server.client.post(
        "/api/v1/users",
        json={"username": "inputs-grantee", "password": "inputs-password-long-enough"},
        headers=server.admin,
    )
    assert user.status_code == 201, user.text
    granted = server.client.post(
        f"/api/v1/users/{user.json()['id']}/grants",
        json={"role": "agent", "account_id": "acc_does_not_exist"},
        headers=server.admin,
    )
    assert granted.status_code == 404, granted.text
    assert granted.json() == {"error": "no such account"}
