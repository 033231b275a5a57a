"""The consent ledger over HTTP: record an entry, read or export a contact's.

An entry is recorded for one business number (``account_id``) on which the
caller holds ``consent.record``; a contact's entries are read within the
accounts on which the caller holds ``consent.read``. Another account is
answered 404, as if it did not exist. Every read is in the audit trail before
any evidence is decrypted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody, PathParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_404_NOT_FOUND, HTTP_409_CONFLICT

from api.http.audit import actor_of
from api.http.auth import needs
from api.http.deps import ConsentDep
from api.http.openapi import errors
from archiver.identity.services import Permission, Principal
from policy.consent import MAX_EVIDENCE_CHARS, Accounts, ConsentView
from policy.models import ConsentEntry

Caller = Request[Principal, Any, Any]
ContactId = Annotated[str, PathParameter(pattern=r"^[A-Za-z0-9_-]{1,40}$")]


class ConsentIn(msgspec.Struct, forbid_unknown_fields=True):
    """One entry: the contact by ``phone`` (international; found or created) or by
    ``contact_id``, never both."""

    account_id: str
    category: str
    action: str
    method: str
    evidence: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EVIDENCE_CHARS)]
    occurred_at: datetime
    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=40)] | None = None
    contact_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,40}$")] | None = None


class RecordedOut(msgspec.Struct):
    id: int
    contact_id: str
    account_id: str | None
    category: str
    action: str
    method: str
    recorded_by: str
    occurred_at: datetime
    recorded_at: datetime
    source_record_id: int | None


class ConsentOut(msgspec.Struct):
    """An entry with its evidence (``null`` once the contact was erased)."""

    id: int
    contact_id: str
    account_id: str | None
    category: str
    action: str
    method: str
    how: str
    recorded_by: str
    occurred_at: datetime
    recorded_at: datetime
    source_record_id: int | None
    evidence: str | None


class ExportOut(msgspec.Struct):
    """A contact's entries, as a file."""

    contact_id: str
    entries: list[ConsentOut]


def _recorded(row: ConsentEntry) -> RecordedOut:
    return RecordedOut(
        row.id,
        row.contact_id,
        row.account_id,
        row.category,
        row.action,
        row.method,
        row.recorded_by,
        row.occurred_at,
        row.recorded_at,
        row.source_record_id,
    )


def _out(view: ConsentView) -> ConsentOut:
    return ConsentOut(
        view.id,
        view.contact_id,
        view.account_id,
        view.category,
        view.action,
        view.method,
        view.how,
        view.recorded_by,
        view.occurred_at,
        view.recorded_at,
        view.source_record_id,
        view.evidence,
    )


def _readable(request: Caller, account_id: str | None) -> Accounts:
    """The accounts whose entries the caller reads (narrowed to ``account_id``)."""
    if account_id is None:
        return request.user.accounts_for(Permission.CONSENT_READ)
    if not request.user.allows(Permission.CONSENT_READ, account_id):
        raise NotFoundException("no such account")
    return {account_id}


class ConsentController(Controller):
    """Who opted in to or out of which category, when, how and on what evidence."""

    path = "/api/v1/consent"
    tags = ["consent"]  # noqa: RUF012  (Litestar reads this class attribute)

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        opt=needs(Permission.CONSENT_RECORD),
        responses=errors(HTTP_404_NOT_FOUND, HTTP_409_CONFLICT),
    )
    async def record(
        self, request: Caller, data: JSONBody[ConsentIn], consent: ConsentDep
    ) -> RecordedOut:
        """Record an opt-in or an opt-out (``category``: marketing, utility,
        authentication or service; ``method``: web_form, chat_keyword, crm_import
        or agent_attestation, ...)."""
        if not request.user.allows(Permission.CONSENT_RECORD, data.account_id):
            raise NotFoundException("no such account")
        row = await consent.record(
            actor_of(request, Permission.CONSENT_RECORD),
            data.account_id,
            category=data.category,
            action=data.action,
            method=data.method,
            evidence=data.evidence,
            occurred_at=data.occurred_at,
            phone=data.phone,
            contact_id=data.contact_id,
        )
        return _recorded(row)

    @get("/{contact_id:str}", opt=needs(Permission.CONSENT_READ))
    async def entries(
        self,
        request: Caller,
        contact_id: FromPath[ContactId],
        consent: ConsentDep,
        account_id: FromQuery[str | None] = None,
    ) -> list[ConsentOut]:
        """The contact's entries within the caller's accounts, oldest first."""
        accounts = _readable(request, account_id)
        actor = actor_of(request, Permission.CONSENT_READ)
        return [_out(view) for view in await consent.entries(actor, accounts, contact_id)]

    @get("/{contact_id:str}/export", opt=needs(Permission.CONSENT_READ))
    async def export(
        self,
        request: Caller,
        contact_id: FromPath[ContactId],
        consent: ConsentDep,
        account_id: FromQuery[str | None] = None,
    ) -> Response[ExportOut]:
        """The contact's entries as a JSON file to download (for a subject access
        request or a regulator)."""
        accounts = _readable(request, account_id)
        actor = actor_of(request, Permission.CONSENT_READ)
        entries = await consent.export(actor, accounts, contact_id)
        body = ExportOut(contact_id, msgspec.convert(entries, list[ConsentOut]))
        return Response(
            body,
            headers={"content-disposition": f'attachment; filename="consent-{contact_id}.json"'},
        )
