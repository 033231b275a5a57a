"""The OpenAPI description: one error body, and the errors each route can answer.

Every error is an :class:`Error`. The statuses every route shares are declared
here, from the route itself, so that no handler repeats them: 400 when it takes
parameters or a body, 413 when it reads a body, 401 unless it is public, 403 when
it needs a permission or changes something, 404 when its path names something,
and 500 everywhere (an internal error, logged, answered ``{"error": "internal
error"}``). A handler declares only what is its own (``responses=errors(409)``), with
:func:`errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import time
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.constants import RESERVED_KWARGS
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, OpenAPIType, Schema, SecurityScheme
from litestar.plugins import OpenAPISchemaPlugin
from litestar.routes import HTTPRoute

from api.http.auth import AUTHENTICATED, PUBLIC, SAFE_METHODS, SESSION_COOKIE, permission_of


class Problem(msgspec.Struct, omit_defaults=True):
    """One thing wrong with a request: a field (and where it was sent), or a line of
    an imported file (its number and first 80 characters; neither for a problem of
    the whole file)."""

    reason: str
    field: str | None = None
    source: str | None = None
    line: int | None = None
    text: str | None = None


class Error(msgspec.Struct, omit_defaults=True):
    """Every error answer: what went wrong, and item by item when there are several."""

    error: str
    problems: list[Problem] | None = None


_MEANING = {
    400: "The request is malformed or a value is invalid; nothing changed.",
    401: "No valid API token or signed-in session.",
    403: "The caller lacks the permission (or the CSRF token) this needs.",
    404: "No such resource, or one outside the caller's accounts.",
    409: "The change collides with the current state; nothing changed.",
    413: "The body is larger than this route accepts.",
    422: "The content cannot be read; nothing changed.",
    500: "An internal error; it is logged and the answer says nothing more.",
}

DESCRIPTION = """\
Strongroom's archive, audit and administration API.

Every error is an `Error` object, `{"error": "…"}`, with `problems` when a request
has several things wrong. A path that is not listed here answers 404, and a method
a path does not list answers 405 with an `Allow` header. WhatsApp's webhook,
`/webhooks/whatsapp`, is not described: it is Meta's to call.
"""

SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Error responses with the :class:`Error` body, for a handler's ``responses``."""
    return {
        status: ResponseSpec(Error, description=_MEANING[status], generate_examples=False)
        for status in statuses
    }


_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _type(schema: Mapping[str, Any]) -> str:
    """A schema in a few words: its component's name, or its type."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " or ".join(_type(each) for each in schema[key])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return f"{kind} ({schema['format']})" if "format" in schema else str(kind)


def _contents(content: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    return [(media, _type(body.get("schema", {}))) for media, body in (content or {}).items()]


def reference(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the API reference page shows of an OpenAPI document, operation by operation."""
    operations = []
    for path, item in spec.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            body = operation.get("requestBody") or {}
            operations.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "anchor": operation.get("operationId") or f"{method}-{path}",
                    "summary": operation.get("summary", ""),
                    "description": operation.get("description", ""),
                    "parameters": [
                        {
                            "name": p.get("name"),
                            "in": p.get("in"),
                            "required": p.get("required", False),
                            "type": _type(p.get("schema", {})),
                            "description": p.get("description", ""),
                        }
                        for p in [*item.get("parameters", []), *operation.get("parameters", [])]
                    ],
                    "body": _contents(body.get("content")),
                    "responses": [
                        (status, answer.get("description", ""), _contents(answer.get("content")))
                        for status, answer in operation.get("responses", {}).items()
                    ],
                    "security": [name for rule in operation.get("security", []) for name in rule],
                }
            )
    components = spec.get("components", {})
    return {
        "info": spec.get("info", {}),
        "operations": operations,
        "security_schemes": components.get("securitySchemes", {}),
        "schemas": [
            {
                "name": name,
                "description": schema.get("description", ""),
                "fields": [
                    (field, field in schema.get("required", []), _type(value))
                    for field, value in schema.get("properties", {}).items()
                ],
            }
            for name, schema in components.get("schemas", {}).items()
        ],
    }


class ReferencePlugin(OpenAPIRenderPlugin):
    """The API reference at ``/schema``: HTML rendered here, with no script, so it
    needs nothing from another origin and the console's Content-Security-Policy
    holds (the viewers litestar ships load their scripts from CDNs)."""

    def __init__(self) -> None:
        super().__init__(path="/", favicon="", style="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The page for ``openapi_schema``."""
        engine = request.app.template_engine
        assert engine is not None  # the app configures its templates
        page: str = engine.get_template("schema.html").render(**reference(openapi_schema))
        return page.encode("utf-8")


def openapi_config(**kwargs: object) -> OpenAPIConfig:
    """The application's OpenAPI configuration: its security schemes, the reference
    page at the root, and the document as ``openapi.json`` and ``openapi.yaml``."""
    return OpenAPIConfig(
        title="Strongroom",
        version="0.1.0",
        description=DESCRIPTION,
        render_plugins=[ReferencePlugin(), JsonRenderPlugin(), YamlRenderPlugin()],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http", scheme="bearer", description="An API token, `sr_…`."
                ),
                "session": SecurityScheme(
                    type="apiKey",
                    name=SESSION_COOKIE,
                    security_scheme_in="cookie",
                    description="The console's session (unsafe methods need `X-CSRF-Token`).",
                ),
            }
        ),
        **kwargs,  # type: ignore[arg-type]  # the caller's remaining OpenAPIConfig fields
    )


def _shared_statuses(route: HTTPRoute, handler: HTTPRouteHandler) -> list[int]:
    parameters = handler.parsed_fn_signature.parameters
    dependencies = handler.resolve_dependencies()
    inputs = [
        name
        for name in parameters
        if name == "data" or (name not in RESERVED_KWARGS and name not in dependencies)
    ]
    statuses = [400] if inputs else []
    if "data" in parameters:
        statuses.append(413)
    permission = permission_of(handler)
    if permission != PUBLIC:
        statuses.append(401)
        # Any signed-in caller may use an AUTHENTICATED route; only a cookie's missing
        # CSRF token refuses it, and only for a method that changes something.
        if permission != AUTHENTICATED or handler.http_methods - SAFE_METHODS:
            statuses.append(403)
    if route.path_parameters:
        statuses.append(404)
    statuses.append(500)
    return statuses


def document_errors(app: Litestar) -> None:
    """Declare on every documented route the errors it shares with the others, and
    its security; what a handler declared itself is kept."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            own: Mapping[int, ResponseSpec] = handler.responses or {}
            handler.responses = errors(*_shared_statuses(route, handler)) | dict(own)
            if permission_of(handler) != PUBLIC:
                handler.security = SECURITY


class TimeOfDaySchema(OpenAPISchemaPlugin):
    """A time of day (a send policy's quiet hours) is a ``time`` string, "08:00:00";
    Litestar would describe it as a ``duration``, which its own answers then break."""

    @staticmethod
    def is_plugin_supported_type(value: Any) -> bool:
        return value is time

    def to_openapi_schema(self, field_definition: Any, schema_creator: Any) -> Schema:
        # No "format": JSON Schema's "time" needs a UTC offset, which a local time lacks.
        return Schema(
            type=OpenAPIType.STRING,
            pattern=r"^[0-2][0-9]:[0-5][0-9]:[0-5][0-9]$",
            description="A local time of day, HH:MM:SS.",
        )
