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

Memory and transactions: the export is read from a file, the zip's members one
at a time, and messages are sealed in batches (:data:`BATCH_MESSAGES`,
:data:`BATCH_MEDIA_BYTES`), each in its own transaction. The original file is
sealed first, in parts of :data:`ORIGINAL_PART_BYTES` listed by a manifest, once
per account, contact and content. An import that stops halfway keeps the
batches it committed, and ``import check`` lists its file; importing the file
again for the same contact adds the rest, each message and media file once.

Audit: an import's summary event (``import.chat_export``: counts in clear, the
file's name and the contact's number sealed) is appended in the transaction that
commits its last batch, or in one of its own when nothing was new. A refused
import (no such account, a bad time zone or number, an unreadable file) is
audited as denied, and imports nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO
from zoneinfo import ZoneInfo

import msgspec
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.accounts.models import Account
from archiver.audit.services import Actor, AuditLog
from archiver.capture.services import Capture
from archiver.core.clock import Clock
from archiver.core.db import Writer
from archiver.core.errors import AccountNotFound, CorruptionDetected, InvalidInput, KeyDestroyed
from archiver.core.subjects import contact_subject
from archiver.crypto.models import SubjectKey
from archiver.imports.chat_export import (
    ChatExportError,
    DateOrder,
    DateOrderAmbiguous,
    ExportedMessage,
    ExportMedia,
    ParsedExport,
    ParseProblem,
    parse_chat_export,
)
from archiver.records.models import MediaItem, Record
from archiver.search.blind_index import normalize_phone
from archiver.vault.models import SealedObject
from archiver.vault.services import SealRequest, Vault
from archiver.whatsapp.items import SOURCE_IMPORT, Identity, Item

log = structlog.get_logger("strongroom.imports")

BATCH_MESSAGES = 250
"""At most this many messages are sealed in one transaction."""

BATCH_MEDIA_BYTES = 16 * 2**20
"""At most this many bytes of media are sealed in one transaction (a larger file
goes alone)."""

ORIGINAL_PART_BYTES = 4 * 2**20
"""The original file is sealed in parts of this size."""

# The kinds of the sealed objects of an original file: its manifest (which file,
# for which account, its SHA-256 and its parts in order) and its parts.
MANIFEST_KIND = "import_manifest"
PART_KIND = "import_part"
# Sealed objects of this kind hold a whole file, as imports sealed them before
# they were streamed; they are still read.
_WHOLE_FILE_KIND = "import"

_KEYS_PER_QUERY = 500
_READ_CHUNK = 2**20


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


IMPORT_ACTION = "import.chat_export"


def _refusal(exc: Exception) -> str:
    """Why an import was refused, in words that quote nothing of the file."""
    if isinstance(exc, DateOrderAmbiguous):
        return "the file's dates do not tell day from month"
    if isinstance(exc, ChatExportError):
        return f"the export cannot be read ({len(exc.problems)} problems)"
    return str(exc)


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


class _Manifest(msgspec.Struct, frozen=True):
    """What the sealed original of an import is: the file, and its parts in order."""

    account_id: str
    file: str
    size: int
    sha256: str
    parts: list[str]
    """The parts' object keys."""


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
        writer: Writer,
        audit: AuditLog,
    ) -> None:
        self._capture = capture
        self._vault = vault
        self._sessions = sessions
        self._writer = writer
        self._audit = audit
        self._clock = clock
        self._retention = retention

    async def import_export(
        self,
        actor: Actor,
        *,
        account_id: str,
        contact_phone: str,
        file: IO[bytes],
        filename: str,
        timezone: str = "UTC",
        business_sender: str | None = None,
        partial: bool = False,
        date_order: DateOrder | None = None,
    ) -> ImportResult:
        """Import one export for ``account_id`` and the contact of ``contact_phone``
        (any phone number form, with its country code), from a seekable binary file
        the caller keeps open. Raise ``AccountNotFound``, ``InvalidInput`` (time
        zone, number), or ``ChatExportError`` (nothing imported) on unparseable
        lines unless ``partial``, and on dates whose order of day and month the
        file cannot tell unless ``date_order`` gives it; each refusal is audited.

        The file is sealed first, then the new messages in batches, each batch
        committed on its own: an import stopped halfway is completed, exactly, by
        importing the same file again for the same contact."""
        try:
            return await self._import(
                actor,
                account_id=account_id,
                contact_phone=contact_phone,
                file=file,
                filename=filename,
                timezone=timezone,
                business_sender=business_sender,
                partial=partial,
                date_order=date_order,
            )
        except (AccountNotFound, InvalidInput, ChatExportError) as exc:
            await self._audit.record_durable(
                actor.entry(
                    IMPORT_ACTION,
                    outcome="denied",
                    target=f"import:{account_id}"[:300],
                    scope=account_id[:300],
                    reason=_refusal(exc),
                    # The problems quote the file's lines: sealed, never in clear.
                    details={"file": filename, "contact": contact_phone, "error": str(exc)},
                )
            )
            raise

    async def _import(
        self,
        actor: Actor,
        *,
        account_id: str,
        contact_phone: str,
        file: IO[bytes],
        filename: str,
        timezone: str,
        business_sender: str | None,
        partial: bool,
        date_order: DateOrder | None,
    ) -> ImportResult:
        phone = normalize_phone(contact_phone)
        try:
            zone = ZoneInfo(timezone)
        except (KeyError, ValueError):
            raise InvalidInput(f"unknown time zone {timezone!r}") from None
        async with self._sessions() as session:
            if await session.get(Account, account_id) is None:
                raise AccountNotFound(f"no account {account_id}")
        parsed = await asyncio.to_thread(
            parse_chat_export, file, filename, partial=partial, date_order=date_order
        )
        metadata = {
            "file": filename,
            "platform": parsed.platform,
            "date_order": parsed.date_order,
            "date_order_reason": parsed.date_order_reason,
        }

        async with self._writer.transaction() as session:
            contact = await self._capture.resolve_contact(
                session, [Identity("wa_id", phone.lstrip("+"))]
            )
            assert contact is not None  # one identity always yields a contact
            keys = _keys(contact, parsed.messages)
            existing = await self._present(session, account_id, keys)
        new = [
            (message, key)
            for message, key in zip(parsed.messages, keys, strict=True)
            if key not in existing
        ]

        def summary() -> ImportResult:
            return ImportResult(
                contact,
                len(parsed.messages),
                imported,
                len(parsed.messages) - imported,
                media,
                parsed.errors,
                parsed.warnings,
                parsed.date_order,
                parsed.date_order_reason,
            )

        imported = media = 0
        batches = list(_batches(new, parsed.media))
        if batches:
            await self._seal_original(account_id, contact, file, filename)
        now = self._clock.now()
        for number, batch in enumerate(batches, 1):
            async with self._writer.transaction() as session:
                records, attached = await self._store_batch(
                    session,
                    account_id,
                    contact,
                    [(_item(m, key, metadata, zone, business_sender), m) for m, key in batch],
                    parsed.media,
                    now,
                )
                imported += records
                media += attached
                if number == len(batches):
                    await self._record(session, actor, account_id, summary(), filename, phone)
            log.info(
                "chat import batch committed",
                contact_id=contact,
                batch=number,
                messages=records,
                media=attached,
            )
        if not batches:
            async with self._writer.transaction() as session:
                await self._record(session, actor, account_id, summary(), filename, phone)
        return summary()

    async def _record(
        self,
        session: AsyncSession,
        actor: Actor,
        account_id: str,
        result: ImportResult,
        filename: str,
        phone: str,
    ) -> None:
        """Append the import's summary event inside the transaction that commits it."""
        await self._audit.record_in(
            session,
            actor.entry(
                IMPORT_ACTION,
                target=f"import:{account_id}:{result.contact_id}",
                scope=account_id,
                reason=(
                    f"{result.imported} of {result.messages} messages imported, "
                    f"{result.duplicates} already present, {result.media} media files, "
                    f"{len(result.problems)} lines skipped"
                ),
                details={"file": filename, "contact": phone},
            ),
        )

    async def _store_batch(
        self,
        session: AsyncSession,
        account_id: str,
        contact: str,
        new: list[tuple[Item, ExportedMessage]],
        files: ExportMedia,
        now: datetime,
    ) -> tuple[int, int]:
        """Seal one batch's messages and their media; return how many of each. Those
        another import committed meanwhile are left out."""
        present = await self._present(session, account_id, [item.dedupe_key for item, _ in new])
        new = [(item, message) for item, message in new if item.dedupe_key not in present]
        records = await self._capture.store_items(
            session,
            [(account_id, contact, item) for item, _ in new],
            journal_entry_id=None,
            received_at=now,
        )
        media = 0
        for record, (_, message) in zip(records, new, strict=True):
            if message.attachment is not None:
                media += await self._attach(session, record, contact, message.attachment, files)
        return len(records), media

    async def _seal_original(
        self, account_id: str, contact: str, file: IO[bytes], filename: str
    ) -> None:
        """Seal the imported file itself, as evidence of what was imported, unless
        this account and contact already hold it. Its parts are written with no
        transaction open and recorded with their manifest in one short one; a crash
        before that leaves only objects no record names, and the next import of the
        file seals it again."""
        digest, size = await asyncio.to_thread(_digest, file)
        subject = contact_subject(contact)
        async with self._writer.transaction() as session:
            held = await self._manifests(session, contact)
            if any(m.account_id == account_id and m.sha256 == digest for m in held):
                return
            keys = {subject: await self._vault.keyring.key_for(session, subject)}
        retain_until = self._clock.now() + self._retention
        parts = []
        for offset in range(0, size, ORIGINAL_PART_BYTES):
            chunk = await asyncio.to_thread(_read_at, file, offset, ORIGINAL_PART_BYTES)
            request = SealRequest(PART_KIND, subject, chunk, retain_until)
            parts += await self._vault.write_objects(keys, [request])
        manifest = _Manifest(account_id, filename, size, digest, [p.object_key for p in parts])
        async with self._writer.transaction() as session:
            session.add_all(parts)
            await self._vault.seal(
                session,
                kind=MANIFEST_KIND,
                subject=subject,
                plaintext=msgspec.json.encode(manifest),
                retain_until=retain_until,
            )

    async def _manifests(self, session: AsyncSession, contact: str) -> list[_Manifest]:
        """The manifests of the files imported for ``contact`` (none once erased)."""
        sealed = list(
            await session.scalars(
                select(SealedObject)
                .join(SubjectKey, SubjectKey.key_id == SealedObject.key_id)
                .where(
                    SubjectKey.subject == contact_subject(contact),
                    SealedObject.kind == MANIFEST_KIND,
                )
            )
        )
        opened = await self._vault.open_many(session, sealed)
        return [msgspec.json.decode(m, type=_Manifest) for m in opened if m is not None]

    async def _original(self, session: AsyncSession, sealed: SealedObject) -> tuple[str, IO[bytes]]:
        """The SHA-256 and the content of the file an import sealed (a manifest's
        parts joined in a temporary file, a part at a time)."""
        opened = await self._vault.open(session, sealed)
        if sealed.kind == _WHOLE_FILE_KIND:
            return hashlib.sha256(opened).hexdigest(), io.BytesIO(opened)
        manifest = msgspec.json.decode(opened, type=_Manifest)
        rows = await session.scalars(
            select(SealedObject).where(SealedObject.object_key.in_(manifest.parts))
        )
        parts = {part.object_key: part for part in rows}
        copy = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
        try:
            for key in manifest.parts:
                if key not in parts:
                    raise CorruptionDetected(f"part {key} of an imported file has no record")
                data = await self._vault.open(session, parts[key])
                await asyncio.to_thread(copy.write, data)
        except BaseException:
            copy.close()
            raise
        return manifest.sha256, copy

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
                .where(SealedObject.kind.in_((_WHOLE_FILE_KIND, MANIFEST_KIND)))
                .order_by(SealedObject.id)
            )
            for sealed, subject in rows.all():
                try:
                    digest, original = await self._original(session, sealed)
                    with original:
                        messages = (await asyncio.to_thread(_readable, original)).messages
                except (KeyDestroyed, ChatExportError):
                    continue
                contact = subject.removeprefix(contact_subject(""))
                keys = _keys(contact, messages)
                holders = await session.execute(
                    select(Record.account_id, Record.dedupe_token).where(
                        Record.contact_id == contact, Record.source == SOURCE_IMPORT
                    )
                )
                held: dict[str, set[bytes]] = defaultdict(set)
                for account_id, token in holders.tuples():
                    held[account_id].add(token)
                missing = [
                    key
                    for key in keys
                    if not any(
                        self._capture.dedupe_token(account_id, key) in tokens
                        for account_id, tokens in held.items()
                    )
                ]
                if missing:
                    found.append(
                        MissingLines(
                            sealed.id,
                            sealed.sealed_at,
                            digest,
                            contact,
                            sorted(held) or await self._holder(session, missing[0]),
                            len(keys),
                            len(missing),
                        )
                    )
        return found

    async def _present(self, session: AsyncSession, account_id: str, keys: list[str]) -> set[str]:
        """Those of ``keys`` that the account's records already hold."""
        present: set[str] = set()
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = [(account_id, key) for key in keys[start : start + _KEYS_PER_QUERY]]
            present.update(key for _, key in await self._capture.recorded(session, chunk))
        return present

    async def _holder(self, session: AsyncSession, key: str) -> list[str]:
        """The accounts whose other conversations hold the lines of ``key``: where an
        import that dropped them as already present had been made. The rows hold
        only tokens of the keys, so each imported conversation's key is tried."""
        lines = key.rsplit(":", 1)[0]
        imported = await session.execute(
            select(Record.account_id, Record.contact_id)
            .where(Record.source == SOURCE_IMPORT, Record.contact_id.is_not(None))
            .distinct()
        )
        candidates = {
            self._capture.dedupe_token(account_id, f"{lines}:{contact_id}"): account_id
            for account_id, contact_id in imported.tuples()
        }
        tokens = list(candidates)
        holders: set[str] = set()
        for start in range(0, len(tokens), _KEYS_PER_QUERY):
            chunk = tokens[start : start + _KEYS_PER_QUERY]
            found = await session.scalars(
                select(Record.dedupe_token).where(Record.dedupe_token.in_(chunk))
            )
            holders.update(candidates[token] for token in found)
        return sorted(holders)

    async def _attach(
        self,
        session: AsyncSession,
        record: Record,
        contact: str,
        name: str,
        files: ExportMedia,
    ) -> int:
        data = await asyncio.to_thread(files.get, name)
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
        attached=message.attachment is not None,
    )


def _batches(
    new: list[tuple[ExportedMessage, str]], media: ExportMedia
) -> Iterator[list[tuple[ExportedMessage, str]]]:
    """``new`` in batches of at most :data:`BATCH_MESSAGES` messages and
    :data:`BATCH_MEDIA_BYTES` of their media."""
    batch: list[tuple[ExportedMessage, str]] = []
    size = 0
    for message, key in new:
        name = message.attachment
        weight = media.size(name) if name is not None and name in media else 0
        if batch and (len(batch) == BATCH_MESSAGES or size + weight > BATCH_MEDIA_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((message, key))
        size += weight
    if batch:
        yield batch


def _digest(file: IO[bytes]) -> tuple[str, int]:
    """The SHA-256 and size of the whole file."""
    file.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := file.read(_READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _read_at(file: IO[bytes], offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size)


def _readable(data: IO[bytes]) -> ParsedExport:
    """An earlier import's file, read as leniently as an import could have read it:
    its unreadable lines skipped, and an undecidable date order taken as day first
    (the keys depend on the lines, not on how their dates read)."""
    try:
        return parse_chat_export(data, "import", partial=True)
    except DateOrderAmbiguous:
        return parse_chat_export(data, "import", partial=True, date_order="dmy")
