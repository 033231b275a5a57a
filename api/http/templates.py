"""The template registry over HTTP: drafts, submissions and their approvals.

Templates belong to a WhatsApp Business Account; a caller reaches those of the
accounts (business numbers) on which they hold the route's permission, and any
other is answered 404, as if it did not exist. The maker-checker rule is the
registry's: approving or rejecting one's own template is a 403.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, patch, post
from litestar.exceptions import NotFoundException
from litestar.params import FromQuery, JSONBody
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
)

from api.http.audit import actor_of
from api.http.auth import needs
from api.http.deps import RowId, TemplatesDep
from api.http.openapi import errors
from archiver.identity.services import Permission, Principal
from policy.models import MessageTemplate

Caller = Request[Principal, Any, Any]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Language = Annotated[str, msgspec.Meta(min_length=2, max_length=20)]
Category = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
Comment = Annotated[str, msgspec.Meta(max_length=1000)]


class ParameterIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    type: str = "text"


class TemplateIn(msgspec.Struct, forbid_unknown_fields=True):
    """A new draft: ``components`` as Meta's API takes them, ``parameters`` naming
    each placeholder once (``{{1}}``… or ``{{order_id}}``…) with its type."""

    account_id: str
    name: Name
    language: Language
    category: Category
    components: list[dict[str, Any]]
    parameters: list[ParameterIn] = msgspec.field(default_factory=list)


class TemplateChangeIn(msgspec.Struct, forbid_unknown_fields=True):
    """What changes in a draft (or a rejected template, which becomes a draft again);
    a field left out stays as it is."""

    components: list[dict[str, Any]] | None = None
    parameters: list[ParameterIn] | None = None
    category: Category | None = None


class DecisionIn(msgspec.Struct, forbid_unknown_fields=True):
    """The checker's comment (a rejection needs one)."""

    comment: Comment = ""


class TemplateOut(msgspec.Struct):
    id: int
    waba_id: str
    name: str
    language: str
    category: str
    components: list[dict[str, Any]]
    parameters: list[dict[str, str]]
    status: str
    meta_status: str | None
    quality: str | None
    created_by: str
    submitted_by: str | None
    decided_by: str | None
    decision_comment: str | None
    created_at: datetime
    updated_at: datetime


def _out(row: MessageTemplate) -> TemplateOut:
    return TemplateOut(
        id=row.id,
        waba_id=row.waba_id,
        name=row.name,
        language=row.language,
        category=row.category,
        components=json.loads(row.components),
        parameters=json.loads(row.parameters),
        status=row.status,
        meta_status=row.meta_status,
        quality=row.quality,
        created_by=row.created_by,
        submitted_by=row.submitted_by,
        decided_by=row.decided_by,
        decision_comment=row.decision_comment,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _params(parameters: list[ParameterIn] | None) -> list[dict[str, str]] | None:
    if parameters is None:
        return None
    return [{"name": p.name, "type": p.type} for p in parameters]


class TemplatesController(Controller):
    """Message templates of each WhatsApp Business Account, maker and checker apart."""

    path = "/api/v1/templates"
    tags = ["templates"]  # noqa: RUF012  (Litestar reads this class attribute)

    @get("/", opt=needs(Permission.TEMPLATES_READ), responses=errors(HTTP_404_NOT_FOUND))
    async def list_templates(
        self, request: Caller, templates: TemplatesDep, account_id: FromQuery[str | None] = None
    ) -> list[TemplateOut]:
        """The templates of the caller's accounts (of ``account_id`` alone), by name."""
        if account_id is not None and not request.user.allows(
            Permission.TEMPLATES_READ, account_id
        ):
            raise NotFoundException("no such account")
        accounts = request.user.accounts_for(Permission.TEMPLATES_READ)
        return [_out(row) for row in await templates.list_for(accounts, account_id)]

    @get("/{template_id:int}", opt=needs(Permission.TEMPLATES_READ))
    async def get_template(
        self, request: Caller, template_id: RowId, templates: TemplatesDep
    ) -> TemplateOut:
        """One template with both of its statuses."""
        accounts = request.user.accounts_for(Permission.TEMPLATES_READ)
        return _out(await templates.get(accounts, template_id))

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        opt=needs(Permission.TEMPLATES_MANAGE),
        responses=errors(HTTP_404_NOT_FOUND, HTTP_409_CONFLICT),
    )
    async def create(
        self, request: Caller, data: JSONBody[TemplateIn], templates: TemplatesDep
    ) -> TemplateOut:
        """A draft template of the account's WhatsApp Business Account."""
        if not request.user.allows(Permission.TEMPLATES_MANAGE, data.account_id):
            raise NotFoundException("no such account")
        row = await templates.create(
            actor_of(request, Permission.TEMPLATES_MANAGE),
            request.user.accounts_for(Permission.TEMPLATES_MANAGE),
            data.account_id,
            name=data.name,
            language=data.language,
            category=data.category,
            components=data.components,
            parameters=_params(data.parameters),
        )
        return _out(row)

    @patch(
        "/{template_id:int}",
        opt=needs(Permission.TEMPLATES_MANAGE),
        responses=errors(HTTP_409_CONFLICT),
    )
    async def update(
        self,
        request: Caller,
        template_id: RowId,
        data: JSONBody[TemplateChangeIn],
        templates: TemplatesDep,
    ) -> TemplateOut:
        """Edit a draft or a rejected template (which becomes a draft again)."""
        row = await templates.update(
            actor_of(request, Permission.TEMPLATES_MANAGE),
            request.user.accounts_for(Permission.TEMPLATES_MANAGE),
            template_id,
            components=data.components,
            parameters=_params(data.parameters),
            category=data.category,
        )
        return _out(row)

    @post(
        "/{template_id:int}/submit",
        status_code=HTTP_200_OK,
        opt=needs(Permission.TEMPLATES_MANAGE),
        responses=errors(HTTP_409_CONFLICT),
    )
    async def submit(
        self, request: Caller, template_id: RowId, templates: TemplatesDep
    ) -> TemplateOut:
        """Submit a draft for a checker's approval."""
        row = await templates.submit(
            actor_of(request, Permission.TEMPLATES_MANAGE),
            request.user.accounts_for(Permission.TEMPLATES_MANAGE),
            template_id,
        )
        return _out(row)

    @post(
        "/{template_id:int}/approve",
        status_code=HTTP_200_OK,
        opt=needs(Permission.TEMPLATES_APPROVE),
        responses=errors(HTTP_403_FORBIDDEN, HTTP_409_CONFLICT),
    )
    async def approve(
        self,
        request: Caller,
        template_id: RowId,
        data: JSONBody[DecisionIn],
        templates: TemplatesDep,
    ) -> TemplateOut:
        """Approve a submitted template (not one the caller made or submitted)."""
        row = await templates.approve(
            actor_of(request, Permission.TEMPLATES_APPROVE),
            request.user.accounts_for(Permission.TEMPLATES_APPROVE),
            template_id,
            data.comment,
        )
        return _out(row)

    @post(
        "/{template_id:int}/reject",
        status_code=HTTP_200_OK,
        opt=needs(Permission.TEMPLATES_APPROVE),
        responses=errors(HTTP_403_FORBIDDEN, HTTP_409_CONFLICT),
    )
    async def reject(
        self,
        request: Caller,
        template_id: RowId,
        data: JSONBody[DecisionIn],
        templates: TemplatesDep,
    ) -> TemplateOut:
        """Reject a submitted template, with a comment saying why."""
        row = await templates.reject(
            actor_of(request, Permission.TEMPLATES_APPROVE),
            request.user.accounts_for(Permission.TEMPLATES_APPROVE),
            template_id,
            data.comment,
        )
        return _out(row)
