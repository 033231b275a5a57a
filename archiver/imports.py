"""Import of WhatsApp "Export chat" files into the archive.

Imported messages are records like any other, marked ``source=chat_import``.
They never open the 24-hour customer service window. The original file is
sealed too, as evidence of what was imported. Re-importing the same file adds
nothing: each message's dedupe key is derived from its verbatim lines.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.capture import Capture
from archiver.chat_export import ExportedMessage, ParseProblem, parse_chat_export
from archiver.clock import Clock
from archiver.items import SOURCE_IMPORT, Identity, Item
from archiver.models import MediaItem, Record
from archiver.subjects import contact_subject
from archiver.vault import Vault


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did."""

    contact_id: str
    imported: int
    duplicates: int
    media: int
    problems: list[ParseProblem]


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
    ) -> ImportResult:
        """Import one export file; raise ``ChatExportError`` (nothing imported) on
        unparseable lines unless ``partial``."""
        try:
            zone = ZoneInfo(timezone)
        except (KeyError, ValueError):
            raise ValueError(f"unknown time zone {timezone!r}") from None
        parsed = parse_chat_export(data, filename, partial=partial)
        now = self._clock.now()
        seen: Counter[str] = Counter()
        items: list[tuple[Item, ExportedMessage]] = []
        for message in parsed.messages:
            digest = hashlib.sha256(message.raw.encode("utf-8")).hexdigest()[:40]
            seen[digest] += 1
            item = Item(
                field="chat_export",
                kind="message",
                source=SOURCE_IMPORT,
                direction=_direction(message, business_sender),
                item_type=message.kind,
                dedupe_key=f"x:{digest}:{seen[digest]}",
                occurred_at=message.sent_at.replace(tzinfo=zone).astimezone(now.tzinfo),
                sealed={
                    "field": "chat_export",
                    "metadata": {"file": filename, "platform": parsed.platform},
                    "contacts": None,
                    "item": {
                        "line": message.line_number,
                        "sent_at_local": message.sent_at.isoformat(),
                        "timezone": timezone,
                        "sender": message.sender,
                        "kind": message.kind,
                        "text": message.text,
                        "attachment": message.attachment,
                        "edited": message.edited,
                        "raw": message.raw,
                    },
                },
                text=message.text,
                attached=message.attachment is not None,
            )
            items.append((item, message))

        async with self._sessions() as session, session.begin():
            contact = await self._capture.resolve_contact(
                session, [Identity("wa_id", contact_phone.lstrip("+"))]
            )
            assert contact is not None  # one identity always yields a contact
            existing = await self._capture.recorded(
                session, [(account_id, item.dedupe_key) for item, _ in items]
            )
            new = [
                (item, msg) for item, msg in items if (account_id, item.dedupe_key) not in existing
            ]
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
            media = 0
            for record, (_, message) in zip(records, new, strict=True):
                if message.attachment is not None:
                    media += await self._attach(
                        session, record, contact, message.attachment, parsed.media
                    )
        return ImportResult(contact, len(new), len(items) - len(new), media, parsed.errors)

    async def _attach(
        self,
        session: AsyncSession,
        record: Record,
        contact: str,
        name: str,
        files: dict[str, bytes],
    ) -> int:
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
