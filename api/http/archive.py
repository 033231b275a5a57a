"""The archive API: accounts, captured records, conversations and chat-export import.

Every route declares its permission; results are limited to the business
accounts the caller's grants cover. A record outside them answers 404, as if it
did not exist.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import (
    ClientException,
    NotFoundException,
    ValidationException,
)
from litestar.params import Body, FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED
from sqlalchemy import Select, and_, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from api.http.audit import audit_access
from api.http.auth import needs
from api.http.deps import RowId, ServicesDep
from api.http.openapi import Problem, errors
from archiver.core.errors import AccountNotFound
from archiver.identity.services import Permission, Principal
from archiver.imports.chat_export import ChatExportError, DateOrder, ParseProblem
from archiver.records.conversations import message_ids
from archiver.records.models import ContactIdentity, DeliveryState, MediaItem, Record
from archiver.records.services import Reason, ids_trusted
from archiver.search.blind_index import normalize_phone
from archiver.whatsapp.items import MAX_ID, Identity, fit

MAX_IMPORT_BYTES = 512 * 1024 * 1024
_PAGE = 100


Caller = Request[Principal, Any, Any]


def _scope(query: Select[Record], caller: Principal) -> Select[Record]:
    """Limit a record query to the accounts where the caller may read content."""
    accounts = caller.accounts_for(Permission.ARCHIVE_READ)
    return query if accounts is None else query.where(Record.account_id.in_(accounts))


class AccountIn(msgspec.Struct, forbid_unknown_fields=True):
    """A phone number to capture, with its Meta app's secrets."""

    phone_number_id: Annotated[str, msgspec.Meta(pattern="^[0-9]+$", description="Meta's id")]
    display_phone_number: str
    app_secret: Annotated[str, msgspec.Meta(min_length=1, description="Not blank")]
    verify_token: Annotated[str, msgspec.Meta(min_length=8)]
    access_token: str | None = None
    waba_id: str | None = None


class AccountOut(msgspec.Struct):
    id: str
    phone_number_id: str
    display_phone_number: str
    waba_id: str | None
    created_at: datetime


class MediaOut(msgspec.Struct):
    state: str
    mime_type: str | None
    size: int | None
    error: str | None


class IntegrityOut(msgspec.Struct, frozen=True):
    """Whether the record passed its integrity check: its metadata still bound to
    its sealed object, and that object read back whole and authentic. A record
    that failed has no content; when its binding failed, its metadata cannot be
    trusted either, and its ids (contact, message ids) are left out."""

    status: Literal["ok", "failed"]
    reason: Reason | None = None


INTEGRITY_OK = IntegrityOut("ok")


def integrity(failure: Reason | None) -> IntegrityOut:
    """The integrity field of a record that failed with ``failure`` (``None``: passed)."""
    return INTEGRITY_OK if failure is None else IntegrityOut("failed", failure)


class RecordOut(msgspec.Struct):
    """A captured record with its decrypted content (``null`` once erased, or when
    it failed its integrity check). The wamids are read from that content (the
    database keeps only their tokens), so they too are ``null`` then."""

    id: int
    account_id: str
    contact_id: str | None
    kind: str
    source: str
    direction: str
    type: str
    wamid: str | None
    related_wamid: str | None
    status: str | None
    delivery_status: str | None
    occurred_at: datetime
    received_at: datetime
    forwarded: bool
    revoked: bool
    erased: bool
    media: list[MediaOut]
    content: dict[str, Any] | None
    integrity: IntegrityOut


class RecordPage(msgspec.Struct):
    records: list[RecordOut]
    next_cursor: str | None


class ContactOut(msgspec.Struct):
    contact_id: str


@dataclass
class ChatExportUpload:
    """A WhatsApp "Export chat" file (.txt or .zip) and where it belongs.

    ``date_order`` says how dates whose day and month are both 12 or less are read
    (day first, month first, year first); without it a file whose own dates cannot
    tell is refused. ``partial`` imports the readable lines and lists the others.
    """

    file: UploadFile
    account_id: str
    contact: str
    timezone: str = "UTC"
    business_sender: str | None = None
    partial: bool = False
    date_order: DateOrder | None = None


class ImportOut(msgspec.Struct):
    """What an import did: ``messages`` read, ``imported`` new, ``duplicates``
    already in the conversation; ``problems`` the skipped lines (``partial``),
    ``warnings`` the lines read with a doubt, and how and why dates were read."""

    contact_id: str
    messages: int
    imported: int
    duplicates: int
    media: int
    problems: list[Problem]
    warnings: list[Problem]
    date_order: DateOrder
    date_order_reason: str


def _problems(problems: Iterable[ParseProblem]) -> list[Problem]:
    return [Problem(reason=p.reason, line=p.line_number, text=p.text or None) for p in problems]


async def _views(
    services: ServicesDep, request: Caller, session: AsyncSession, records: list[Record]
) -> list[RecordOut]:
    """Decrypted records, once the access is durably in the audit trail."""
    ids = [r.id for r in records]
    if records:
        await audit_access(
            services,
            request,
            action="archive.read",
            permission=Permission.ARCHIVE_READ,
            target="records:" + ",".join(str(i) for i in ids),
            scope=",".join(sorted({r.account_id for r in records})),
        )
    media: dict[int, list[MediaOut]] = {i: [] for i in ids}
    for item in await session.scalars(select(MediaItem).where(MediaItem.record_id.in_(ids))):
        media[item.record_id].append(
            MediaOut(item.state, item.mime_type, item.size, item.last_error)
        )
    opened = await services.records.read(session, records)
    out = []
    for record in records:
        content = opened.contents.get(record.id)
        failure = opened.failures.get(record.id)
        trusted = ids_trusted(failure)
        delivery = None
        if failure is None and record.wamid_token and record.direction == "outbound":
            state = await session.get(DeliveryState, (record.account_id, record.wamid_token))
            delivery = state.status if state else None
        wamid, related_wamid = message_ids(record, content)
        out.append(
            RecordOut(
                id=record.id,
                account_id=record.account_id,
                contact_id=record.contact_id if trusted else None,
                kind=record.kind,
                source=record.source,
                direction=record.direction,
                type=record.item_type,
                wamid=wamid,
                related_wamid=related_wamid,
                status=record.status,
                delivery_status=delivery,
                occurred_at=record.occurred_at,
                received_at=record.received_at,
                forwarded=record.forwarded,
                revoked=record.revoked,
                # Every record has its sealed object; only shredding hides it.
                erased=content is None and failure is None,
                media=media[record.id] if failure is None else [],
                content=content,
                integrity=integrity(failure),
            )
        )
    return out


def encode_cursor(position: tuple[datetime, int]) -> str:
    """An opaque cursor for a position in time order: (occurred at, record id)."""
    raw = f"{position[0].isoformat()}|{position[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The position a cursor stands for; a clear 400 when it is malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, ident = raw.partition("|")
        return datetime.fromisoformat(when), int(ident)
    except (ValueError, UnicodeDecodeError):
        raise ValidationException("malformed cursor") from None


async def _page(
    services: ServicesDep, request: Caller, query: Select[Record], cursor: str | None, limit: int
) -> RecordPage:
    """One page of ``query`` in time order, after ``cursor``."""
    if cursor:
        when, last = decode_cursor(cursor)
        query = query.where(
            or_(Record.occurred_at > when, and_(Record.occurred_at == when, Record.id > last))
        )
    async with services.sessions() as session:
        records = list(
            await session.scalars(query.order_by(Record.occurred_at, Record.id).limit(limit + 1))
        )
        more = len(records) > limit
        records = records[:limit]
        views = await _views(services, request, session, records)
    return RecordPage(
        views, encode_cursor((records[-1].occurred_at, records[-1].id)) if more else None
    )


class ArchiveController(Controller):
    """Accounts, records and conversations."""

    path = "/api/v1"
    tags = ["archive"]  # noqa: RUF012  (Litestar reads this class attribute)

    @post(
        "/accounts",
        status_code=HTTP_201_CREATED,
        opt=needs(Permission.ACCOUNTS_MANAGE),
        responses=errors(409),
    )
    async def add_account(self, data: JSONBody[AccountIn], services: ServicesDep) -> AccountOut:
        """Register a phone number and its Meta app secret and verify token."""
        async with services.sessions() as session, session.begin():
            account = await services.accounts.add(
                session,
                phone_number_id=data.phone_number_id,
                display_phone_number=data.display_phone_number,
                app_secret=data.app_secret,
                verify_token=data.verify_token,
                access_token=data.access_token,
                waba_id=data.waba_id,
            )
        await services.capture.refresh_secrets()
        async with services.sessions() as session:
            number = await services.accounts.display_phone_number(session, account)
        return AccountOut(
            account.id, account.phone_number_id, number, account.waba_id, account.created_at
        )

    @get("/accounts", opt=needs(Permission.ACCOUNTS_READ))
    async def list_accounts(self, request: Caller, services: ServicesDep) -> list[AccountOut]:
        """The registered phone numbers the caller's grants cover (never their secrets)."""
        allowed = request.user.accounts_for(Permission.ACCOUNTS_READ)
        async with services.sessions() as session:
            return [
                AccountOut(
                    a.id,
                    a.phone_number_id,
                    await services.accounts.display_phone_number(session, a),
                    a.waba_id,
                    a.created_at,
                )
                for a in await services.accounts.all(session)
                if allowed is None or a.id in allowed
            ]

    @get("/accounts/{account_id:str}/records", opt=needs(Permission.ARCHIVE_READ))
    async def account_records(
        self,
        request: Caller,
        account_id: FromPath[str],
        services: ServicesDep,
        kind: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = _PAGE,
    ) -> RecordPage:
        """Every record of an account in time order (events included), paginated."""
        query = _scope(select(Record).where(Record.account_id == account_id), request.user)
        if kind:
            query = query.where(Record.kind == kind)
        return await _page(services, request, query, cursor, limit)

    @get("/messages/{record_id:int}", opt=needs(Permission.ARCHIVE_READ))
    async def get_message(
        self, request: Caller, record_id: RowId, services: ServicesDep
    ) -> RecordOut:
        """One captured record, decrypted."""
        async with services.sessions() as session:
            record = await session.get(Record, record_id)
            if record is None or not request.user.allows(
                Permission.ARCHIVE_READ, record.account_id
            ):
                raise NotFoundException("no such record")
            return (await _views(services, request, session, [record]))[0]

    @get("/messages", opt=needs(Permission.ARCHIVE_READ), responses=errors(404))
    async def find_messages(
        self, request: Caller, services: ServicesDep, wamid: FromQuery[str]
    ) -> list[RecordOut]:
        """Records carrying a WhatsApp message id (the message, its edits and statuses),
        in each of the caller's accounts: looked up by the id's token in each."""
        async with services.sessions() as session:
            allowed = request.user.accounts_for(Permission.ARCHIVE_READ)
            if allowed is None:
                allowed = {account.id for account in await services.accounts.all(session)}
            meta_id = fit(wamid, MAX_ID)
            tokens = [(a, services.meta_ids.token(a, meta_id)) for a in allowed]
            query = select(Record).where(
                or_(
                    tuple_(Record.account_id, Record.wamid_token).in_(tokens),
                    tuple_(Record.account_id, Record.related_wamid_token).in_(tokens),
                )
            )
            records = list(
                await session.scalars(
                    _scope(query, request.user).order_by(Record.occurred_at, Record.id).limit(_PAGE)
                )
            )
            if not records:
                raise NotFoundException("no record with that wamid")
            return await _views(services, request, session, records)

    @get("/contacts", opt=needs(Permission.ARCHIVE_READ), responses=errors(404))
    async def find_contact(
        self,
        request: Caller,
        services: ServicesDep,
        phone: FromQuery[str],
    ) -> ContactOut:
        """The contact id of a phone number (looked up by its blind token), if the
        caller can read any of that contact's records."""
        token = services.capture.identity_token(Identity("wa_id", normalize_phone(phone)))
        async with services.sessions() as session:
            row = await session.get(ContactIdentity, ("wa_id", token))
            visible = row is not None and await session.scalar(
                _scope(
                    select(Record).where(Record.contact_id == row.contact_id), request.user
                ).limit(1)
            )
        if row is None or not visible:
            raise NotFoundException("no contact with that number")
        return ContactOut(row.contact_id)

    @get("/contacts/{contact_id:str}/messages", opt=needs(Permission.ARCHIVE_READ))
    async def conversation(
        self,
        request: Caller,
        contact_id: FromPath[str],
        services: ServicesDep,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = _PAGE,
        account_id: FromQuery[str | None] = None,
    ) -> RecordPage:
        """A contact's records in time order, with cursor pagination."""
        query = _scope(select(Record).where(Record.contact_id == contact_id), request.user)
        if account_id:
            query = query.where(Record.account_id == account_id)
        return await _page(services, request, query, cursor, limit)

    @post(
        "/imports/chat-export",
        status_code=HTTP_201_CREATED,
        request_max_body_size=MAX_IMPORT_BYTES,
        opt=needs(Permission.ARCHIVE_IMPORT),
        responses=errors(404, 422),
    )
    async def import_chat_export(
        self,
        request: Caller,
        services: ServicesDep,
        data: Annotated[ChatExportUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> ImportOut:
        """Import a WhatsApp "Export chat" file into the contact's conversation; a line
        that cannot be read, or dates whose day and month order the file cannot tell,
        fail the whole file (422, every problem listed) unless ``partial`` (for lines)
        or ``date_order`` (for dates) is given."""
        if not request.user.allows(Permission.ARCHIVE_IMPORT, data.account_id):
            raise NotFoundException("no such account")
        async with services.sessions() as session:
            try:
                await services.accounts.get(session, data.account_id)
            except AccountNotFound:
                raise NotFoundException("no such account") from None
        try:
            # Litestar spools the upload, as it arrives, to an unnamed temporary
            # file (mode 0600) that it closes, and so deletes, after the response.
            result = await services.importer.import_export(
                account_id=data.account_id,
                contact_phone=normalize_phone(data.contact),
                file=data.file.file,
                filename=data.file.filename or "chat.txt",
                timezone=data.timezone,
                business_sender=data.business_sender,
                partial=data.partial,
                date_order=data.date_order,
            )
        except ChatExportError as exc:
            raise ClientException(
                "the export cannot be read as it is; nothing was imported",
                status_code=422,
                extra={"problems": [msgspec.to_builtins(p) for p in _problems(exc.problems)]},
            ) from None
        return ImportOut(
            result.contact_id,
            result.messages,
            result.imported,
            result.duplicates,
            result.media,
            _problems(result.problems),
            _problems(result.warnings),
            result.date_order,
            result.date_order_reason,
        )
