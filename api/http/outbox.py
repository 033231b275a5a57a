"""The outbox over HTTP: agents send through it, supervisors review its holds.

An agent (``outbox.send``) sees and cancels their own items; a supervisor
(``outbox.approve`` on the item's account) sees every item of that account,
approves or rejects held ones (never their own) and may cancel any.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody, PathParameter, QueryParameter
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
)

from api.http.audit import actor_of
from api.http.auth import needs
from api.http.deps import OutboxDep
from api.http.openapi import errors
from archiver.identity.services import Permission, Principal
from policy.decision import Decision
from policy.errors import ItemNotFound
from policy.outbox import ItemView, MessageContent, Outbox, SendRequest

Caller = Request[Principal, Any, Any]
ItemId = Annotated[str, PathParameter(pattern=r"^[0-9a-f]{32}$")]


class ReasonOut(msgspec.Struct):
    code: str
    rule: str
    effect: str
    message: str
    params: dict[str, Any]
    until: str | None


class DecisionOut(msgspec.Struct):
    """A policy decision: ``allow``, ``defer``, ``hold`` or ``block``, with every reason."""

    outcome: str
    reasons: list[ReasonOut]
    snapshot_version: str
    decided_at: str
    defer_until: str | None


class EventOut(msgspec.Struct):
    from_state: str | None
    to_state: str
    actor: str
    at: datetime
    note: str | None


class ItemOut(msgspec.Struct):
    id: str
    account_id: str
    source: str
    sender_id: str
    contact_id: str
    kind: str
    category: str
    template_id: int | None
    state: str
    decision: DecisionOut | None
    created_at: datetime
    updated_at: datetime
    send_at: datetime | None
    expires_at: datetime | None
    due_at: datetime | None
    sent_at: datetime | None
    approved_by: str | None
    record_id: int | None
    error_code: int | None
    error_title: str | None
    events: list[EventOut]
    to: str | None = None
    content: MessageContent | None = None


class ReviewIn(msgspec.Struct, forbid_unknown_fields=True):
    comment: str


def item_out(view: ItemView) -> ItemOut:
    """The API shape of an item."""
    return ItemOut(
        id=view.id,
        account_id=view.account_id,
        source=view.source,
        sender_id=view.sender_id,
        contact_id=view.contact_id,
        kind=view.kind,
        category=view.category,
        template_id=view.template_id,
        state=view.state,
        decision=msgspec.convert(view.decision, DecisionOut) if view.decision else None,
        created_at=view.created_at,
        updated_at=view.updated_at,
        send_at=view.send_at,
        expires_at=view.expires_at,
        due_at=view.due_at,
        sent_at=view.sent_at,
        approved_by=view.approved_by,
        record_id=view.record_id,
        error_code=view.error_code,
        error_title=view.error_title,
        events=[EventOut(e.from_state, e.to_state, e.actor, e.at, e.note) for e in view.events],
        to=view.to,
        content=view.content,
    )


def decision_out(decision: Decision) -> DecisionOut:
    """The API shape of a decision."""
    return msgspec.convert(decision.as_dict(), DecisionOut)


def _sending_from(request: Caller, account_id: str) -> None:
    """Refuse, as if it did not exist, a number the caller may not send from."""
    if not request.user.allows(Permission.OUTBOX_SEND, account_id):
        raise NotFoundException("no such account")


async def visible_item(principal: Principal, outbox: Outbox, item_id: str) -> ItemView:
    """The item, with its content, when ``principal`` sent it or supervises its
    account; else refused as if it did not exist."""
    try:
        account_id = await outbox.account_of(item_id)
        view = await outbox.get({account_id}, item_id, content=True)
    except ItemNotFound:
        raise NotFoundException("no such outbox item") from None
    if view.sender_id != principal.user_id and not principal.allows(
        Permission.OUTBOX_APPROVE, account_id
    ):
        raise NotFoundException("no such outbox item")
    return view


async def supervised(principal: Principal, outbox: Outbox, item_id: str) -> None:
    """Refuse, as if it did not exist, an item of an account ``principal`` does not
    supervise (``outbox.approve``)."""
    try:
        account_id = await outbox.account_of(item_id)
    except ItemNotFound:
        raise NotFoundException("no such outbox item") from None
    if not principal.allows(Permission.OUTBOX_APPROVE, account_id):
        raise NotFoundException("no such outbox item")


class OutboxController(Controller):
    """Outbound messages, each decided by the send policy before it leaves."""

    path = "/api/v1/outbox"
    tags = ["outbox"]  # noqa: RUF012  (Litestar reads this class attribute)

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        opt=needs(Permission.OUTBOX_SEND),
        responses=errors(HTTP_404_NOT_FOUND, HTTP_409_CONFLICT),
    )
    async def send(
        self, request: Caller, data: JSONBody[SendRequest], outbox: OutboxDep
    ) -> ItemOut:
        """Queue a message and decide it at once; the same ``idempotency_key`` again
        returns the item it made (409 when the message differs)."""
        _sending_from(request, data.account_id)
        actor = actor_of(request, Permission.OUTBOX_SEND)
        return item_out(await outbox.submit(actor, request.user.user_id, data))

    @post(
        "/preview",
        status_code=HTTP_200_OK,
        opt=needs(Permission.OUTBOX_SEND),
        responses=errors(HTTP_404_NOT_FOUND),
    )
    async def preview(
        self, request: Caller, data: JSONBody[SendRequest], outbox: OutboxDep
    ) -> DecisionOut:
        """The decision a message would get now, with its reasons; nothing is queued."""
        _sending_from(request, data.account_id)
        actor = actor_of(request, Permission.OUTBOX_SEND)
        return decision_out(await outbox.preview(actor, request.user.user_id, data))

    @get("/", opt=needs(Permission.OUTBOX_SEND))
    async def list_items(
        self,
        request: Caller,
        outbox: OutboxDep,
        account_id: FromQuery[str | None] = None,
        item_state: Annotated[str | None, QueryParameter(name="state")] = None,
        contact_id: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> list[ItemOut]:
        """The caller's own items, newest first, filtered; ``before`` is the last id
        of the previous page."""
        views = await outbox.list(
            request.user.accounts_for(Permission.OUTBOX_SEND),
            account_id=account_id,
            state=item_state,
            sender_id=request.user.user_id,
            contact_id=contact_id,
            before=before,
            limit=limit,
        )
        return [item_out(v) for v in views]

    @get("/review", opt=needs(Permission.OUTBOX_APPROVE))
    async def review_queue(
        self,
        request: Caller,
        outbox: OutboxDep,
        account_id: FromQuery[str | None] = None,
        item_state: Annotated[str, QueryParameter(name="state")] = "held",
        before: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> list[ItemOut]:
        """Items of the accounts the caller supervises (held ones by default)."""
        views = await outbox.list(
            request.user.accounts_for(Permission.OUTBOX_APPROVE),
            account_id=account_id,
            state=item_state,
            before=before,
            limit=limit,
        )
        return [item_out(v) for v in views]

    @get("/{item_id:str}", opt=needs(Permission.OUTBOX_SEND))
    async def get_item(
        self, request: Caller, item_id: FromPath[ItemId], outbox: OutboxDep
    ) -> ItemOut:
        """One item with its content, its decision and every move it made."""
        return item_out(await visible_item(request.user, outbox, item_id))

    @post(
        "/{item_id:str}/cancel",
        status_code=HTTP_200_OK,
        opt=needs(Permission.OUTBOX_SEND),
        responses=errors(HTTP_409_CONFLICT),
    )
    async def cancel(
        self, request: Caller, item_id: FromPath[ItemId], outbox: OutboxDep
    ) -> ItemOut:
        """Cancel an item not yet handed to WhatsApp."""
        await visible_item(request.user, outbox, item_id)
        return item_out(await outbox.cancel(actor_of(request, Permission.OUTBOX_SEND), item_id))

    @post(
        "/{item_id:str}/approve",
        status_code=HTTP_200_OK,
        opt=needs(Permission.OUTBOX_APPROVE),
        responses=errors(HTTP_409_CONFLICT),
    )
    async def approve(
        self,
        request: Caller,
        item_id: FromPath[ItemId],
        data: JSONBody[ReviewIn],
        outbox: OutboxDep,
    ) -> ItemOut:
        """Release a held item (its block reasons still apply before it is sent)."""
        await supervised(request.user, outbox, item_id)
        actor = actor_of(request, Permission.OUTBOX_APPROVE)
        return item_out(await outbox.approve(actor, request.user.user_id, item_id, data.comment))

    @post(
        "/{item_id:str}/reject",
        status_code=HTTP_200_OK,
        opt=needs(Permission.OUTBOX_APPROVE),
        responses=errors(HTTP_409_CONFLICT),
    )
    async def reject(
        self,
        request: Caller,
        item_id: FromPath[ItemId],
        data: JSONBody[ReviewIn],
        outbox: OutboxDep,
    ) -> ItemOut:
        """Reject a held item: it is never sent."""
        await supervised(request.user, outbox, item_id)
        actor = actor_of(request, Permission.OUTBOX_APPROVE)
        return item_out(await outbox.reject(actor, request.user.user_id, item_id, data.comment))
