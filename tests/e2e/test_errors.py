"""Errors over HTTP, against the real application in litestar's test client (so that
a service can be made to fail as a bug would), on SQLite and PostgreSQL: a domain
error answers its status from ``api.errors.STATUS`` with the ``{"error": …}`` body,
an unexpected exception (a bare ``ValueError`` included) a logged 500 whose log
names its type and no personal data, and the OpenAPI description documents that
body for every error answer."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.bootstrap import migrate_database
from api.observability.logging import configure_logging
from api.settings import load_settings
from tests.e2e.conftest import server_env
from tests.e2e.server import APP_SECRET, DISPLAY_NUMBER, PHONE_NUMBER_ID, VERIFY_TOKEN, Server

ACCOUNT = {
    "phone_number_id": PHONE_NUMBER_ID,
    "display_phone_number": DISPLAY_NUMBER,
    "app_secret": APP_SECRET,
    "verify_token": VERIFY_TOKEN,
}
# A phone number in a bug's message: it must reach neither the client nor the log.
NUMBER = "447700900765"


class App:
    """The application in a test client, an admin's token, and its captured log."""

    def __init__(self, client: TestClient[Any], admin: dict[str, str], log: io.StringIO) -> None:
        self.client = client
        self.admin = admin
        self.log = log

    def post_account(self, **fields: str) -> Any:
        return self.client.post("/api/v1/accounts", json=ACCOUNT | fields, headers=self.admin)

    def logged(self, event: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.getvalue().splitlines() if line]
        return [line for line in lines if line.get("event") == event]


@pytest.fixture(scope="module")
def app(database_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    data = tmp_path_factory.mktemp("errors") / "data"
    env = server_env(data, database_name)
    migrate_database(load_settings(env))  # creates the archive, as `strongroom serve` does
    # Then as deployed (production mode): no embedded worker beside the server.
    settings = dataclasses.replace(load_settings(env), mode="production")
    admin = Server(env, data, data.parent / "log")
    admin.bootstrap_users()
    log = io.StringIO()
    configure_logging(stream=log)
    try:
        with TestClient(create_app(settings)) as client:
            yield App(client, admin.admin, log)
    finally:
        admin.client.close()
        configure_logging()


def test_invalid_input_from_a_service_is_a_400_naming_the_problem(app: App) -> None:
    answer = app.post_account(app_secret="   ")
    assert answer.status_code == 400
    assert answer.json() == {"error": "app secret must not be empty"}


def test_a_domain_conflict_is_a_409_with_the_error_body(app: App) -> None:
    assert app.post_account(phone_number_id="1099").status_code == 201
    again = app.post_account(phone_number_id="1099")
    assert again.status_code == 409
    assert set(again.json()) == {"error"}
    assert "1099" in again.json()["error"]


@pytest.mark.parametrize("bug", [ValueError, KeyError, RuntimeError])
def test_a_bug_is_a_logged_500_never_a_400(
    app: App, bug: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise bug(f"a bug while handling +{NUMBER}")

    monkeypatch.setattr(app.client.app.state.services.accounts, "register", broken)
    before = len(app.logged("unhandled error"))

    answer = app.post_account()

    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error"}
    logged = app.logged("unhandled error")[before:]
    assert [entry["error"] for entry in logged] == [bug.__name__]
    assert logged[0]["level"] == "error"
    assert NUMBER not in app.log.getvalue()


def test_every_error_answer_is_documented_with_the_error_body(app: App) -> None:
    spec = app.client.get("/schema/openapi.json").json()
    error = {"$ref": "#/components/schemas/Error"}
    documented = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            statuses = operation["responses"]
            assert "500" in statuses, f"{method} {path} does not document its 500"
            for status, answer in statuses.items():
                # /readyz answers 503 with its checks, for load balancers: not an error body.
                if status[0] not in "45" or (path, status) == ("/readyz", "503"):
                    continue
                schemas = [body["schema"] for body in answer.get("content", {}).values()]
                assert schemas == [error], f"{method} {path} {status}: {schemas}"
                documented += 1
    assert documented > 50
    properties = spec["components"]["schemas"]["Error"]["properties"]
    assert set(properties) == {"error", "problems"}
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]


def test_the_description_names_the_error_body_not_litestars(app: App) -> None:
    text = app.client.get("/schema/openapi.json").text
    assert "status_code" not in text
    assert '{"error": "…"}' in json.loads(text)["info"]["description"]
