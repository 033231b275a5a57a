"""The compliance lexicon over HTTP (compliance officers)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.params import FromQuery, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT, HTTP_409_CONFLICT

from api.http.audit import actor_of
from api.http.auth import needs
from api.http.deps import LexiconDep, RowId
from api.http.openapi import errors
from archiver.identity.services import Permission, Principal
from policy.models import LexiconTerm

Caller = Request[Principal, Any, Any]


class TermIn(msgspec.Struct, forbid_unknown_fields=True):
    term: str
    action: str = "flag"


class TermOut(msgspec.Struct):
    id: int
    term: str
    normalized: str
    action: str
    added_by: str
    added_at: datetime
    removed_by: str | None
    removed_at: datetime | None


def _term(row: LexiconTerm) -> TermOut:
    return TermOut(
        row.id,
        row.term,
        row.normalized,
        row.action,
        row.added_by,
        row.added_at,
        row.removed_by,
        row.removed_at,
    )


class LexiconController(Controller):
    """Sensitive terms: the archive search flags them, the outbox holds or blocks them."""

    path = "/api/v1/lexicon"
    tags = ["lexicon"]  # noqa: RUF012  (Litestar reads this class attribute)

    @get("/", opt=needs(Permission.LEXICON_MANAGE))
    async def list_terms(
        self, lexicon: LexiconDep, removed: FromQuery[bool] = False
    ) -> list[TermOut]:
        """The active terms; with ``removed=true``, removed ones too."""
        return [_term(row) for row in await lexicon.rows(removed=removed)]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        opt=needs(Permission.LEXICON_MANAGE),
        responses=errors(HTTP_409_CONFLICT),
    )
    async def add_term(
        self, request: Caller, data: JSONBody[TermIn], lexicon: LexiconDep
    ) -> TermOut:
        """Add a term with its action: ``flag`` (default), ``hold`` or ``block``."""
        actor = actor_of(request, Permission.LEXICON_MANAGE)
        return _term(await lexicon.add(actor, data.term, data.action))

    @delete(
        "/{term_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        opt=needs(Permission.LEXICON_MANAGE),
        responses=errors(HTTP_409_CONFLICT),
    )
    async def remove_term(self, request: Caller, term_id: RowId, lexicon: LexiconDep) -> None:
        """Remove a term; its row stays, with who removed it and when."""
        await lexicon.remove(actor_of(request, Permission.LEXICON_MANAGE), term_id)
