"""The archive API: accounts, captured records, conversations and chat-export import.

Every route declares its permission; results are limited to the business
accounts the caller's grants cover. A record outside them answers 404, as if it
did not exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import Body, FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED

from api.http.audit import actor_of
from api.http.auth import needs
from api.http.deps import AccountsDep, ImporterDep, RecordsDep, RowId
from api.http.openapi import Problem, errors
from archiver.accounts.services import AccountView
from archiver.core.errors import AccountNotFound
from archiver.identity.services import Permission, Principal
from archiver.imports.chat_export import ChatExportError, DateOrder, ParseProblem
from archiver.records.conversations import message_ids
from archiver.records.queries import PAGE, RecordView
from archiver.records.queries import RecordPage as RecordPageOf
from archiver.records.services import Reason, ids_trusted

MAX_IMPORT_BYTES = 512 * 1024 * 1024


Caller = Request[Principal, Any, Any]


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


def _account(a: AccountView) -> AccountOut:
    return AccountOut(a.id, a.phone_number_id, a.display_phone_number, a.waba_id, a.created_at)


def record_out(view: RecordView) -> RecordOut:
    """A record as the API shows it: no content when it failed, no ids when its
    binding failed."""
    record, content, failure = view.record, view.content, view.failure
    wamid, related_wamid = message_ids(record, content)
    return RecordOut(
        id=record.id,
        account_id=record.account_id,
        contact_id=record.contact_id if ids_trusted(failure) else None,
        kind=record.kind,
        source=record.source,
        direction=record.direction,
        type=record.item_type,
        wamid=wamid,
        related_wamid=related_wamid,
        status=record.status,
        delivery_status=view.delivery,
        occurred_at=record.occurred_at,
        received_at=record.received_at,
        forwarded=record.forwarded,
        revoked=record.revoked,
        # Every record has its sealed object; only shredding hides it.
        erased=content is None and failure is None,
        media=[MediaOut(m.state, m.mime_type, m.size, m.last_error) for m in view.media],
        content=content,
        integrity=integrity(failure),
    )


def _page(page: RecordPageOf) -> RecordPage:
    return RecordPage([record_out(v) for v in page.views], page.next_cursor)


def _readable(request: Caller) -> set[str] | None:
    return request.user.accounts_for(Permission.ARCHIVE_READ)


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
    async def add_account(
        self, request: Caller, data: JSONBody[AccountIn], accounts: AccountsDep
    ) -> AccountOut:
        """Register a phone number and its Meta app secret and verify token."""
        account = await accounts.register(
            actor_of(request, Permission.ACCOUNTS_MANAGE),
            phone_number_id=data.phone_number_id,
            display_phone_number=data.display_phone_number,
            app_secret=data.app_secret,
            verify_token=data.verify_token,
            access_token=data.access_token,
            waba_id=data.waba_id,
        )
        return _account(account)

    @get("/accounts", opt=needs(Permission.ACCOUNTS_READ))
    async def list_accounts(self, request: Caller, accounts: AccountsDep) -> list[AccountOut]:
        """The registered phone numbers the caller's grants cover (never their secrets)."""
        listed = await accounts.listed(request.user.accounts_for(Permission.ACCOUNTS_READ))
        return [_account(a) for a in listed]

    @get("/accounts/{account_id:str}/records", opt=needs(Permission.ARCHIVE_READ))
    async def account_records(
        self,
        request: Caller,
        account_id: FromPath[str],
        records: RecordsDep,
        kind: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = PAGE,
    ) -> RecordPage:
        """Every record of an account in time order (events included), paginated."""
        page = await records.page(
            actor_of(request, Permission.ARCHIVE_READ),
            _readable(request),
            account_id=account_id,
            kind=kind,
            cursor=cursor,
            limit=limit,
        )
        return _page(page)

    @get("/messages/{record_id:int}", opt=needs(Permission.ARCHIVE_READ))
    async def get_message(
        self, request: Caller, record_id: RowId, records: RecordsDep
    ) -> RecordOut:
        """One captured record, decrypted."""
        view = await records.one(
            actor_of(request, Permission.ARCHIVE_READ), _readable(request), record_id
        )
        return record_out(view)

    @get("/messages", opt=needs(Permission.ARCHIVE_READ), responses=errors(404))
    async def find_messages(
        self, request: Caller, records: RecordsDep, wamid: FromQuery[str]
    ) -> list[RecordOut]:
        """Records carrying a WhatsApp message id (the message, its edits and statuses),
        in each of the caller's accounts: looked up by the id's token in each."""
        views = await records.by_wamid(
            actor_of(request, Permission.ARCHIVE_READ), _readable(request), wamid
        )
        return [record_out(v) for v in views]

    @get("/contacts", opt=needs(Permission.ARCHIVE_READ), responses=errors(404))
    async def find_contact(
        self, request: Caller, records: RecordsDep, phone: FromQuery[str]
    ) -> ContactOut:
        """The contact id of a phone number (looked up by its blind token), if the
        caller can read any of that contact's records."""
        return ContactOut(await records.contact_of(phone, _readable(request)))

    @get("/contacts/{contact_id:str}/messages", opt=needs(Permission.ARCHIVE_READ))
    async def conversation(
        self,
        request: Caller,
        contact_id: FromPath[str],
        records: RecordsDep,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = PAGE,
        account_id: FromQuery[str | None] = None,
    ) -> RecordPage:
        """A contact's records in time order, with cursor pagination."""
        page = await records.page(
            actor_of(request, Permission.ARCHIVE_READ),
            _readable(request),
            contact_id=contact_id,
            account_id=account_id,
            cursor=cursor,
            limit=limit,
        )
        return _page(page)

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
        importer: ImporterDep,
        data: Annotated[ChatExportUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> ImportOut:
        """Import a WhatsApp "Export chat" file into the contact's conversation; a line
        that cannot be read, or dates whose day and month order the file cannot tell,
        fail the whole file (422, every problem listed) unless ``partial`` (for lines)
        or ``date_order`` (for dates) is given."""
        if not request.user.allows(Permission.ARCHIVE_IMPORT, data.account_id):
            raise NotFoundException("no such account")
        try:
            # Litestar spools the upload, as it arrives, to an unnamed temporary
            # file (mode 0600) that it closes, and so deletes, after the response.
            result = await importer.import_export(
                actor_of(request, Permission.ARCHIVE_IMPORT),
                account_id=data.account_id,
                contact_phone=data.contact,
                file=data.file.file,
                filename=data.file.filename or "chat.txt",
                timezone=data.timezone,
                business_sender=data.business_sender,
                partial=data.partial,
                date_order=data.date_order,
            )
        except AccountNotFound:
            raise NotFoundException("no such account") from None
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
