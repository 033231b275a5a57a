"""Conversations read back as chats, and media streamed decrypted on demand."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery
from litestar.status_codes import HTTP_200_OK

from api.http.archive import IntegrityOut, integrity
from api.http.audit import actor_of
from api.http.auth import needs
from api.http.deps import RecordsDep, RowId
from api.http.openapi import Error
from archiver.identity.services import Permission, Principal
from archiver.media.safety import delivery
from archiver.records.conversations import Message, Status, message_ids
from archiver.records.services import ids_trusted
from archiver.whatsapp.items import DeliveryError

Caller = Request[Principal, Any, Any]
# A media file opened as a document of its own runs no script, loads nothing and
# has an opaque origin, whatever a browser makes of it. (So audio and video play
# in the console's viewer, not in a tab of their own.)
MEDIA_CSP = "sandbox; default-src 'none'"


class VersionOut(msgspec.Struct):
    record_id: int
    occurred_at: datetime
    text: str


class ReactionOut(msgspec.Struct):
    record_id: int
    occurred_at: datetime
    emoji: str
    direction: str


class MediaOut(msgspec.Struct):
    id: int
    state: str
    mime_type: str | None
    size: int | None
    error: str | None
    url: str | None


class DeliveryErrorOut(msgspec.Struct):
    """Why Meta could not deliver: its error code (131050, …) and title."""

    code: int | None
    title: str


class MessageOut(msgspec.Struct):
    id: int
    account_id: str
    wamid: str | None
    direction: str
    source: str
    type: str
    occurred_at: datetime
    text: str
    reply_to: str | None
    revoked: bool
    erased: bool
    versions: list[VersionOut]
    reactions: list[ReactionOut]
    receipts: dict[str, datetime]
    delivery: str | None  # sent, delivered, read or failed (business messages)
    delivery_error: DeliveryErrorOut | None
    media: list[MediaOut]
    content: dict[str, Any] | None
    integrity: IntegrityOut


class EventOut(msgspec.Struct):
    """A record shown on its own: an account event, a history summary, or a
    reaction, edit, revoke or receipt that failed its integrity check."""

    id: int
    type: str
    source: str
    occurred_at: datetime
    integrity: IntegrityOut


class StatusOut(msgspec.Struct):
    """A status for a message not in this archive, at its time."""

    id: int
    account_id: str
    wamid: str | None  # read from the sealed item of a failed status
    status: str | None
    occurred_at: datetime
    error: DeliveryErrorOut | None


class CustomerOut(msgspec.Struct):
    """Who the conversation is with: their WhatsApp profile name and number."""

    name: str | None
    wa_id: str | None


class ConversationOut(msgspec.Struct):
    contact_id: str
    customer: CustomerOut | None
    messages: list[MessageOut]
    events: list[EventOut]
    unmatched_statuses: list[StatusOut]


class ConversationController(Controller):
    """A contact's conversation, and its media."""

    path = "/api/v1"
    tags = ["conversations"]  # noqa: RUF012  (Litestar reads this class attribute)

    @get("/conversations/{contact_id:str}", opt=needs(Permission.ARCHIVE_READ))
    async def conversation(
        self,
        request: Caller,
        contact_id: FromPath[str],
        records: RecordsDep,
        account_id: FromQuery[str | None] = None,
    ) -> ConversationOut:
        """Messages in order with reply threading, reactions, every version of an
        edited message, revoked messages kept and marked, receipts with each
        business message's delivery state (and Meta's error when it failed), and
        sources; statuses for messages not in this archive; the customer's name."""
        chat = await records.conversation(
            actor_of(request, Permission.ARCHIVE_READ),
            request.user.accounts_for(Permission.ARCHIVE_READ),
            contact_id,
            account_id,
        )
        customer = chat.customer
        return ConversationOut(
            contact_id,
            CustomerOut(customer.name, customer.wa_id) if customer else None,
            [_message_out(m) for m in chat.messages],
            [
                EventOut(
                    e.record.id,
                    e.record.item_type,
                    e.record.source,
                    e.record.occurred_at,
                    integrity(e.failure),
                )
                for e in chat.events
            ],
            [_status_out(s) for s in chat.statuses],
        )

    @get(
        "/media/{media_id:int}",
        opt=needs(Permission.ARCHIVE_READ),
        responses={
            409: ResponseSpec(
                Error,
                description="The file, or the record it belongs to, failed its integrity check.",
                generate_examples=False,
            ),
            HTTP_200_OK: ResponseSpec(
                bytes,
                media_type="*/*",
                description="The file, in its own media type.",
                generate_examples=False,
            ),
        },
    )
    async def media(self, request: Caller, media_id: RowId, records: RecordsDep) -> Response[bytes]:
        """The media file, decrypted on demand; each access is audited first. Only a
        raster image, audio or video that its bytes prove is shown inline; anything
        else is a download that no browser renders. 409 when the file, or the record
        it belongs to, fails its integrity check."""
        found = await records.media(
            actor_of(request, Permission.ARCHIVE_READ),
            request.user.accounts_for(Permission.ARCHIVE_READ),
            media_id,
        )
        data, item = found.data, found.item
        served = delivery(data, item.mime_type)
        disposition = "inline" if served.inline else "attachment"
        return Response(
            data,
            media_type=served.content_type,
            headers={
                # The name is ours, never the customer's, so it needs no escaping.
                "content-disposition": f'{disposition}; filename="media-{media_id}"',
                # Replaces the console's policy; nosniff comes with every response.
                "content-security-policy": MEDIA_CSP,
            },
        )


def _message_out(m: Message) -> MessageOut:
    """A message as the API shows it; one that failed its integrity check has no
    content, and no ids when its binding failed."""
    trusted = ids_trusted(m.failure)
    return MessageOut(
        id=m.record.id,
        account_id=m.record.account_id,
        wamid=message_ids(m.record, m.content)[0] if trusted else None,
        direction=m.record.direction,
        source=m.record.source,
        type=m.record.item_type,
        occurred_at=m.record.occurred_at,
        text=m.versions[-1].text if m.versions else "",
        reply_to=m.reply_to,
        revoked=m.record.revoked,
        erased=m.content is None and m.failure is None,
        versions=[VersionOut(v.record_id, v.occurred_at, v.text) for v in m.versions],
        reactions=[
            ReactionOut(r.record_id, r.occurred_at, r.emoji, r.direction) for r in m.reactions
        ],
        receipts=m.receipts,
        delivery=m.delivery,
        delivery_error=_error_out(m.error),
        media=[
            MediaOut(
                i.id,
                i.state,
                i.mime_type,
                i.size,
                i.last_error,
                f"/api/v1/media/{i.id}" if i.state == "fetched" else None,
            )
            for i in m.media
        ],
        content=m.content,
        integrity=integrity(m.failure),
    )


def _error_out(error: DeliveryError | None) -> DeliveryErrorOut | None:
    return DeliveryErrorOut(error.code, error.title) if error else None


def _status_out(s: Status) -> StatusOut:
    r = s.record
    return StatusOut(r.id, r.account_id, s.wamid, r.status, r.occurred_at, _error_out(s.error))
