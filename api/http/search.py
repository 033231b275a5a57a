"""``POST /api/v1/search``: find messages by words, phrases and filters."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from api.http.archive import IntegrityOut, integrity
from api.http.audit import actor_of
from api.http.auth import needs
from api.http.deps import ArchiveSearchDep
from archiver.identity.services import Permission, Principal
from archiver.records.conversations import message_ids, sender
from archiver.records.services import ids_trusted
from archiver.search.services import Filters, Hit

Direction = Literal["inbound", "outbound", "none", "unknown"]
Source = Literal["cloud_api", "business_app", "history_sync", "chat_import", "outbox"]
Delivery = Literal["sent", "delivered", "read", "failed"]
ErrorCode = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]


class SearchIn(msgspec.Struct, forbid_unknown_fields=True):
    """Words are ANDed, ``OR`` separates groups, "quoted phrases" match exactly; an
    empty query lists the messages that pass the filters. ``delivery`` and
    ``error_code`` (Meta's, e.g. 131050) find business messages by their delivery,
    and statuses for messages not in the archive (``kind`` ``status``)."""

    query: str = ""
    contact: str | None = None
    account_id: str | None = None
    direction: Direction | None = None
    source: Source | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    has_media: bool | None = None
    flagged: bool | None = None
    on_hold: bool | None = None
    delivery: Delivery | None = None
    error_code: ErrorCode | None = None
    cursor: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50


class MediaState(msgspec.Struct):
    state: str
    mime_type: str | None
    size: int | None


class SearchResult(msgspec.Struct):
    """A matching record with a decrypted snippet; the whole record is at
    ``GET /api/v1/messages/{id}``. A candidate that failed its integrity check is
    listed too, marked, with an empty snippet (and no ids when its binding failed)."""

    id: int
    account_id: str
    contact_id: str | None
    kind: str
    source: str
    direction: str
    type: str
    wamid: str | None
    occurred_at: datetime
    revoked: bool
    sender: str | None  # "business", or the customer's profile name
    snippet: str
    media: list[MediaState]
    integrity: IntegrityOut


class SearchOut(msgspec.Struct):
    results: list[SearchResult]
    next_cursor: str | None


@post(
    "/api/v1/search", status_code=HTTP_200_OK, opt=needs(Permission.ARCHIVE_READ), tags=["search"]
)
async def search(
    request: Request[Principal, Any, Any],
    data: JSONBody[SearchIn],
    archive_search: ArchiveSearchDep,
) -> SearchOut:
    """Search the archive within the caller's accounts; every search is audited,
    its terms sealed inside the audit event."""
    page = await archive_search.search(
        actor_of(request, Permission.ARCHIVE_READ),
        request.user.accounts_for(Permission.ARCHIVE_READ),
        data.query,
        filters_of(data),
        account_id=data.account_id,
        contact=data.contact,
        cursor=data.cursor,
        limit=data.limit,
        asked=msgspec.to_builtins(data),
    )
    return SearchOut([_result(h) for h in page.hits], page.next_cursor)


def filters_of(data: SearchIn) -> Filters:
    """The filters a search asks for (its scope, contact and lexicon are the service's)."""
    return Filters(
        direction=data.direction,
        source=data.source,
        item_type=data.type,
        since=data.since,
        until=data.until,
        has_media=data.has_media,
        on_hold=data.on_hold,
        flagged=data.flagged,
        delivery=data.delivery,
        error_code=data.error_code,
    )


def _result(hit: Hit) -> SearchResult:
    trusted = ids_trusted(hit.failure)
    record = hit.record
    return SearchResult(
        record.id,
        record.account_id,
        record.contact_id if trusted else None,
        record.kind,
        record.source,
        record.direction,
        record.item_type,
        message_ids(record, hit.content)[0] if trusted else None,
        record.occurred_at,
        record.revoked,
        sender(record, hit.content),
        hit.snippet,
        [MediaState(m.state, m.mime_type, m.size) for m in hit.media],
        integrity(hit.failure),
    )
