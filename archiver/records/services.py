"""Reading records back, each checked on its own.

A record passes its integrity check when its binding (:mod:`archiver.records.binding`)
matches its metadata and sealed object, and that object is read back whole and
authentic. One that fails is refused: its content is never returned, and the
caller marks it with the reason and shows everything else. Every failure raises
the alarm (:class:`IntegrityAlarm`).

Reasons::

    object missing          no sealed object, or the store has none under its key
    authentication failed   the stored bytes differ from their recorded SHA-256, the
                            envelope does not authenticate, or its key does not unwrap
    binding mismatch        the row's metadata or its object's record changed (or no binding)
    key missing             the subject key, or the root key wrapping it, is gone
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from archiver.audit.services import AuditEntry, AuditLog, AuditUnavailable
from archiver.core.errors import (
    CaptureError,
    CorruptionDetected,
    CryptoError,
    IntegrityFailed,
    KeyDestroyed,
    KeyNotFound,
    ObjectNotFound,
)
from archiver.records.binding import RecordBinding
from archiver.records.models import MediaItem, Record
from archiver.vault.models import SealedObject
from archiver.vault.services import Vault
from archiver.whatsapp.items import message_text

log = structlog.get_logger("strongroom.records")

Reason = Literal["object missing", "authentication failed", "binding mismatch", "key missing"]
OBJECT_MISSING: Final = "object missing"
AUTHENTICATION_FAILED: Final = "authentication failed"
BINDING_MISMATCH: Final = "binding mismatch"
KEY_MISSING: Final = "key missing"
_VERIFY_BATCH = 1_000


def ids_trusted(failure: Reason | None) -> bool:
    """Whether a record's ids (contact, message ids) may be shown: not when its
    binding failed, as they may have been moved there from another account."""
    return failure != BINDING_MISMATCH


def decode_sealed_item(plaintext: bytes) -> dict[str, Any]:
    """The sealed JSON of a record: ``field``, ``metadata``, ``contacts`` and ``item``."""
    value = msgspec.json.decode(plaintext)
    if not isinstance(value, dict):
        raise CaptureError("sealed record is not a JSON object")
    return value


@dataclass(slots=True)
class Opened:
    """What reading some records found."""

    contents: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Record id → content, for each record opened; absent when erased (its key
    destroyed), failed, or not asked for."""
    failures: dict[int, Reason] = field(default_factory=dict)
    """Record id → why it failed its integrity check."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """What opening records needs from the database, read in one session."""

    opening: list[Record]
    objects: dict[int, SealedObject]
    keys: dict[str, bytes | None]
    failures: dict[int, Reason]


@dataclass(slots=True)
class BindingReport:
    """The outcome of checking every record's binding."""

    checked: int = 0
    failures: list[tuple[int, Reason]] = field(default_factory=list)


class IntegrityAlarm:
    """Tells of everything that fails its integrity check: an error in the log
    (the target and the reason, never content), an ``archive.integrity`` audit
    event of its own, and a count by reason (:attr:`counts`) for the metrics."""

    def __init__(self, audit: AuditLog | None) -> None:
        self._audit = audit
        self.counts: Counter[str] = Counter()

    async def report(self, failures: Mapping[str, Reason]) -> None:
        """Raise the alarm for each ``target → reason`` (``record:17``, ``media:3``)."""
        for target, reason in failures.items():
            log.error("integrity check failed", target=target, reason=reason)
            self.counts[reason] += 1
        if self._audit is None or not failures:
            return
        entries = [
            AuditEntry(
                actor="system",
                action="archive.integrity",
                outcome="failed",
                target=target,
                reason=reason,
                request_id=structlog.contextvars.get_contextvars().get("request_id"),
            )
            for target, reason in failures.items()
        ]
        try:
            await asyncio.gather(*(self._audit.record_durable(entry) for entry in entries))
        except AuditUnavailable as exc:  # the log line above still tells of it
            log.error("integrity failure not audited", error=type(exc).__name__)


def _opens_all(_: Record) -> bool:
    return True


def _opens_none(_: Record) -> bool:
    return False


class RecordReader:
    """Checks and opens records; one that fails is refused and reported, never raised."""

    def __init__(self, vault: Vault, binding: RecordBinding, alarm: IntegrityAlarm) -> None:
        self._vault = vault
        self._binding = binding
        self.alarm = alarm

    async def read(
        self,
        session: AsyncSession,
        records: Iterable[Record],
        opens: Callable[[Record], bool] = _opens_all,
    ) -> Opened:
        """Check every record of ``records`` and open those that ``opens`` selects;
        raise the alarm for each that fails."""
        loaded = await session.run_sync(self.load, list(records), opens)
        opened = await asyncio.to_thread(self.open, loaded)
        await self.report(opened)
        return opened

    async def check(self, session: AsyncSession, records: Iterable[Record]) -> Opened:
        """:meth:`read` without opening anything: bindings alone."""
        return await self.read(session, records, _opens_none)

    def load(
        self,
        session: Session,
        records: Sequence[Record],
        opens: Callable[[Record], bool] = _opens_all,
    ) -> Loaded:
        """Check each record's binding, and read the objects and keys of those to open."""
        wanted = {r.object_id for r in records}
        query = select(SealedObject).where(SealedObject.id.in_(wanted))
        objects = {obj.id: obj for obj in session.scalars(query)}
        failures: dict[int, Reason] = {}
        for record in records:
            obj = objects.get(record.object_id)
            if obj is None:
                failures[record.id] = OBJECT_MISSING
            elif not self._binding.matches(record, obj):
                failures[record.id] = BINDING_MISMATCH
        opening = [r for r in records if r.id not in failures and opens(r)]
        keys, broken = self._keys(session, {objects[r.object_id].key_id for r in opening})
        for record in opening:
            reason = broken.get(objects[record.object_id].key_id)
            if reason is not None:
                failures[record.id] = reason
        opening = [r for r in opening if r.id not in failures]
        return Loaded(opening, objects, keys, failures)

    def _keys(
        self, session: Session, key_ids: set[str]
    ) -> tuple[dict[str, bytes | None], dict[str, Reason]]:
        """The subject keys (``None`` when destroyed), and why any could not be read."""
        keyring = self._vault.keyring
        try:
            return keyring.read_keys(session, key_ids), {}
        except CryptoError:
            pass  # one of them is at fault: read each on its own to find it
        keys: dict[str, bytes | None] = {}
        broken: dict[str, Reason] = {}
        for key_id in key_ids:
            try:
                keys.update(keyring.read_keys(session, [key_id]))
            except KeyNotFound:
                broken[key_id] = KEY_MISSING
            except CryptoError:
                broken[key_id] = AUTHENTICATION_FAILED
        return keys, broken

    def open(self, loaded: Loaded) -> Opened:
        """Read and decrypt what :meth:`load` found; it blocks on the store."""
        opened = Opened(failures=dict(loaded.failures))
        for record in loaded.opening:
            obj = loaded.objects[record.object_id]
            key = loaded.keys[obj.key_id]
            if key is None:
                continue  # erased: the subject key was destroyed
            try:
                opened.contents[record.id] = decode_sealed_item(self._vault.read(obj, key))
            except ObjectNotFound:
                opened.failures[record.id] = OBJECT_MISSING
            except CorruptionDetected:
                opened.failures[record.id] = AUTHENTICATION_FAILED
        return opened

    async def report(self, opened: Opened) -> None:
        """Raise the alarm for the records that failed in ``opened``."""
        await self.alarm.report({f"record:{i}": reason for i, reason in opened.failures.items()})

    async def open_media(self, session: AsyncSession, item: MediaItem, record: Record) -> bytes:
        """The media file of ``record``; raise ``IntegrityFailed`` (after raising the
        alarm) when the record or the file fails its check, ``KeyDestroyed`` once
        erased, ``ObjectNotFound`` when it was never stored."""
        failure = (await self.check(session, [record])).failures.get(record.id)
        if failure is not None:
            raise IntegrityFailed(f"record {record.id}", failure)
        sealed = await session.get(SealedObject, item.object_id) if item.object_id else None
        if sealed is None:
            raise ObjectNotFound(f"media {item.id} has no file")
        try:
            return await self._vault.open(session, sealed)
        except KeyDestroyed:
            raise
        except ObjectNotFound:
            reason: Reason = OBJECT_MISSING
        except KeyNotFound:
            reason = KEY_MISSING
        except CryptoError:
            reason = AUTHENTICATION_FAILED
        await self.alarm.report({f"media:{item.id}": reason})
        raise IntegrityFailed(f"media {item.id}", reason)

    async def verify(self, session: AsyncSession) -> BindingReport:
        """Check the binding of every record, in id order."""
        report = BindingReport()
        last = 0
        query = (
            select(Record, SealedObject)
            .outerjoin(SealedObject, SealedObject.id == Record.object_id)
            .order_by(Record.id)
            .limit(_VERIFY_BATCH)
        )
        while rows := (await session.execute(query.where(Record.id > last))).all():
            for record, obj in rows:
                if obj is None:
                    report.failures.append((record.id, OBJECT_MISSING))
                elif not self._binding.matches(record, obj):
                    report.failures.append((record.id, BINDING_MISMATCH))
            report.checked += len(rows)
            last = rows[-1][0].id
            session.expunge_all()  # a batch at a time in memory
        return report


def searchable_text(content: dict[str, Any]) -> str:
    """The text of a sealed record that search matches against."""
    item = content.get("item")
    if not isinstance(item, dict):
        return ""
    if content.get("field") == "chat_export":
        text = item.get("text")
        return text if isinstance(text, str) else ""
    if content.get("field") == "outbox":  # what the customer read, templates filled in
        text = (content.get("outbox") or {}).get("text")
        return text if isinstance(text, str) else ""
    return message_text(item)
