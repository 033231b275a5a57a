"""Import of WhatsApp "Export chat" files into the archive.

Imported messages are records like any other, marked ``source=chat_import``.
They never open the 24-hour customer service window. The original file is
sealed too, as evidence of what was imported. A message is already present
when its conversation (account and contact) holds a message with the same
verbatim lines at the same occurrence (:func:`dedupe_key`): re-importing a file
for the same contact adds nothing, and importing it for another contact adds
everything.

Before this rule an import matched lines across a whole account, so a line
that two customers' exports share (the same greeting in the same minute, a
broadcast) was dropped from the second. :meth:`ChatImporter.missing_lines`
finds the imports that lost lines that way, from the sealed files themselves.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.capture import Capture
from archiver.chat_export import (
    ChatExportError,
    DateOrder,
    DateOrderAmbiguous,
    ExportedMessage,
    ParsedExport,
    ParseProblem,
    parse_chat_export,
)
from archiver.clock import Clock
from archiver.errors import KeyDestroyed
from archiver.items import SOURCE_IMPORT, Identity, Item
from archiver.models import MediaItem, Record, SealedObject, SubjectKey
from archiver.subjects import contact_subject
from archiver.vault import Vault

_KEYS_PER_QUERY = 500


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did: ``messages`` read, of which ``imported`` are new and
    ``duplicates`` already present; ``problems`` the skipped lines (``partial``),
    ``warnings`` the lines read with a doubt, and how dates were read and why."""

    contact_id: str
    messages: int
    imported: int
    duplicates: int
    media: int
    problems: list[ParseProblem]
    warnings: list[ParseProblem]
    date_order: DateOrder
    date_order_reason: str


@dataclass(frozen=True, slots=True)
class MissingLines:
    """An earlier import whose conversation lacks some of the file's messages."""

    object_id: int
    imported_at: datetime
    file_sha256: str
    contact_id: str
    accounts: list[str]
    messages: int
    missing: int


def dedupe_key(contact_id: str, raw: str, occurrence: int) -> str:
    """The key of an imported message within its conversation: a digest of its
    verbatim lines, which occurrence of those lines in the file it is, and its
    contact (the account is the key's other half in the database)."""
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:40]
    return f"x:{digest}:{occurrence}:{contact_id}"


def _keys(contact_id: str, messages: Iterable[ExportedMessage]) -> list[str]:
    seen: Counter[str] = Counter()
    keys = []
    for message in messages:
        seen[message.raw] += 1
        keys.append(dedupe_key(contact_id, message.raw, seen[message.raw]))
    return keys


def _direction(message: ExportedMessage, business_sender: str | None) -> str:
    if message.sender is None:
        return "none"
    if business_sender is None:
        return "unknown"
    return "outbound" if message.sender == business_sender else "inbound"


class ChatImporter:
    """Reads an export and seals its messages for one account and contact."""

    def __init__(
        self,
        capture: Capture,
        vault: Vault,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        retention: timedelta,
    ) -> None:
        self._capture = capture
        self._vault = vault
        self._sessions = sessions
        self._clock = clock
        self._retention = retention

    async def import_export(
        self,
        *,
        account_id: str,
        contact_phone: str,
        data: bytes,
        filename: str,
        timezone: str = "UTC",
        business_sender: str | None = None,
        partial: bool = False,
        date_order: DateOrder | None = None,
    ) -> ImportResult:
        """Import one export file; raise ``ChatExportError`` (nothing imported) on
        unparseable lines unless ``partial``, and on dates whose order of day and
        month the file cannot tell unless ``date_order`` gives it."""
        try:
            zone = ZoneInfo(timezone)
        except (KeyError, ValueError):
            raise ValueError(f"unknown time zone {timezone!r}") from None
        parsed = parse_chat_export(data, filename, partial=partial, date_order=date_order)
        now = self._clock.now()
        metadata = {
            "file": filename,
            "platform": parsed.platform,
            "date_order": parsed.date_order,
            "date_order_reason": parsed.date_order_reason,
        }

        async with self._sessions() as session, session.begin():
            contact = await self._capture.resolve_contact(
                session, [Identity("wa_id", contact_phone.lstrip("+"))]
            )
            assert contact is not None  # one identity always yields a contact
            keys = _keys(contact, parsed.messages)
            existing = await _present(session, account_id, keys)
            new = [
                (_item(message, key, metadata, zone, business_sender), message)
                for message, key in zip(parsed.messages, keys, strict=True)
                if key not in existing
            ]
            media = 0
            if new:
                # The file itself is kept too, as evidence of what was imported.
                await self._vault.seal(
                    session,
                    kind="import",
                    subject=contact_subject(contact),
                    plaintext=data,
                    retain_until=now + self._retention,
                )
                records = await self._capture.store_items(
                    session,
                    [(account_id, contact, item) for item, _ in new],
                    journal_entry_id=None,
                    received_at=now,
                )
                for record, (_, message) in zip(records, new, strict=True):
                    if message.attachment is not None:
                        media += await self._attach(
                            session, record, contact, message.attachment, parsed.media
                        )
        return ImportResult(
            contact,
            len(parsed.messages),
            len(new),
            len(parsed.messages) - len(new),
            media,
            parsed.errors,
            parsed.warnings,
            parsed.date_order,
            parsed.date_order_reason,
        )

    async def missing_lines(self) -> list[MissingLines]:
        """Every earlier import (a sealed file) whose conversation lacks messages of
        that file, oldest first. Importing the file again for the same contact
        adds exactly those. Files whose contact was erased, or that no longer read
        at all, are skipped."""
        found: list[MissingLines] = []
        async with self._sessions() as session:
            rows = await session.execute(
                select(SealedObject, SubjectKey.subject)
                .join(SubjectKey, SubjectKey.key_id == SealedObject.key_id)
                .where(SealedObject.kind == "import")
                .order_by(SealedObject.id)
            )
            for sealed, subject in rows.all():
                try:
                    data = await self._vault.open(session, sealed)
                    messages = _readable(data).messages
                except (KeyDestroyed, ChatExportError):
                    continue
                contact = subject.removeprefix(contact_subject(""))
                keys = _keys(contact, messages)
                holders = await session.execute(
                    select(Record.dedupe_key, Record.account_id).where(
                        Record.contact_id == contact, Record.source == SOURCE_IMPORT
                    )
                )
                held: dict[str, str] = dict(holders.tuples().all())
                missing = [key for key in keys if key not in held]
                if missing:
                    found.append(
                        MissingLines(
                            sealed.id,
                            sealed.sealed_at,
                            hashlib.sha256(data).hexdigest(),
                            contact,
                            sorted(set(held.values())) or await _holder(session, missing[0]),
                            len(keys),
                            len(missing),
                        )
                    )
        return found

    async def _attach(
        self,
        session: AsyncSession,
        record: Record,
        contact: str,
        name: str,
        files: dict[str, bytes],
    ) -> int:
        record.has_media = True
        data = files.get(name)
        now = self._clock.now()
        if data is None:
            session.add(
                MediaItem(
                    record_id=record.id,
                    state="failed",
                    attempts=0,
                    next_attempt_at=now,
                    last_error="the file was not included in the export",
                )
            )
            return 0
        sealed = await self._vault.seal(
            session,
            kind="media",
            subject=contact_subject(contact),
            plaintext=data,
            retain_until=now + self._retention,
        )
        session.add(
            MediaItem(
                record_id=record.id,
                state="fetched",
                attempts=0,
                next_attempt_at=now,
                object_id=sealed.id,
                size=len(data),
            )
        )
        return 1


def _item(
    message: ExportedMessage,
    key: str,
    metadata: dict[str, str],
    zone: ZoneInfo,
    business_sender: str | None,
) -> Item:
    return Item(
        field="chat_export",
        kind="message",
        source=SOURCE_IMPORT,
        direction=_direction(message, business_sender),
        item_type=message.kind,
        dedupe_key=key,
        occurred_at=message.sent_at.replace(tzinfo=zone).astimezone(UTC),
        sealed={
            "field": "chat_export",
            "metadata": metadata,
            "contacts": None,
            "item": {
                "line": message.line_number,
                "sent_at_local": message.sent_at.isoformat(),
                "timezone": zone.key,
                "sender": message.sender,
                "kind": message.kind,
                "text": message.text,
                "attachment": message.attachment,
                "edited": message.edited,
                "raw": message.raw,
            },
        },
        text=message.text,
    )


async def _present(session: AsyncSession, account_id: str, keys: list[str]) -> set[str]:
    """Those of ``keys`` that the account's records already hold."""
    present: set[str] = set()
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        chunk = keys[start : start + _KEYS_PER_QUERY]
        present.update(
            await session.scalars(
                select(Record.dedupe_key).where(
                    Record.account_id == account_id, Record.dedupe_key.in_(chunk)
                )
            )
        )
    return present


def _readable(data: bytes) -> ParsedExport:
    """An earlier import's file, read as leniently as an import could have read it:
    its unreadable lines skipped, and an undecidable date order taken as day first
    (the keys depend on the lines, not on how their dates read)."""
    try:
        return parse_chat_export(data, "import", partial=True)
    except DateOrderAmbiguous:
        return parse_chat_export(data, "import", partial=True, date_order="dmy")


async def _holder(session: AsyncSession, key: str) -> list[str]:
    """The accounts whose other conversations hold the lines of ``key``: where an
    import that dropped them as already present had been made."""
    lines = key.rsplit(":", 1)[0]
    accounts = await session.scalars(
        select(Record.account_id)
        .where(Record.source == SOURCE_IMPORT, Record.dedupe_key.startswith(lines + ":"))
        .distinct()
    )
    return sorted(accounts)
