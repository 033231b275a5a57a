"""The vault: seals encrypted objects into the WORM store and records them.

Objects are stored under ``<kind>/<YYYY>/<MM>/<DD>/<name>`` (the day they were
sealed; a random name unless the caller gives one). Every sealed object gets a
database record (key, version, SHA-256 of the stored bytes, size, retain-until,
legal hold, key id). Retention only ever extends: the vault checks its own
record before asking the store, whatever the backend would allow.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from archiver.core.clock import Clock
from archiver.core.errors import (
    CorruptionDetected,
    KeyDestroyed,
    ObjectNotFound,
    RetentionViolation,
    VaultError,
)
from archiver.crypto import envelope
from archiver.crypto.keyring import Keyring
from archiver.vault.interfaces import NewObject, ObjectStore
from archiver.vault.models import SealedObject

log = structlog.get_logger("strongroom.vault")

_VERIFY_BATCH = 200
_VERIFY_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class SealRequest:
    """One object to seal with :meth:`Vault.seal_many`."""

    kind: str
    subject: str
    plaintext: bytes
    retain_until: datetime
    legal_hold: bool = False
    name: str | None = None
    """The last part of the object key; a random one if not given."""


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference between a record and what the store really holds."""

    object_key: str
    problem: str
    detail: str


@dataclass(slots=True)
class VerifyReport:
    """The outcome of re-reading every sealed object."""

    checked: int = 0
    drift: list[Drift] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when no record disagrees with the store."""
        return not self.drift


def day_prefix(kind: str, day: datetime) -> str:
    """The key prefix of the objects of ``kind`` sealed on ``day``."""
    return f"{kind}/{day:%Y/%m/%d}/"


def _whole_seconds(moment: datetime) -> datetime:
    # S3 Object Lock keeps retain-until to the second; records match it exactly.
    return moment.replace(microsecond=0)


class Vault:
    """Seal, open, retain and verify objects."""

    def __init__(self, store: ObjectStore, keyring: Keyring, clock: Clock) -> None:
        self.store = store
        self.keyring = keyring
        self._clock = clock

    async def seal(
        self,
        session: AsyncSession,
        *,
        kind: str,
        subject: str,
        plaintext: bytes,
        retain_until: datetime,
        legal_hold: bool = False,
        name: str | None = None,
    ) -> SealedObject:
        """Encrypt ``plaintext`` under ``subject``'s key, store it write-once and
        add its record to ``session`` (the caller commits)."""
        request = SealRequest(kind, subject, plaintext, retain_until, legal_hold, name)
        return (await self.seal_many(session, [request]))[0]

    async def seal_many(
        self, session: AsyncSession, requests: list[SealRequest]
    ) -> list[SealedObject]:
        """Seal several objects; their writes (and fsyncs) run in parallel."""
        keys: dict[str, tuple[str, bytes]] = {}
        for request in requests:
            if request.subject not in keys:
                keys[request.subject] = await self.keyring.key_for(session, request.subject)
        records = await self.write_objects(keys, requests)
        session.add_all(records)
        await session.flush()
        return records

    async def write_objects(
        self, keys: Mapping[str, tuple[str, bytes]], requests: list[SealRequest]
    ) -> list[SealedObject]:
        """Encrypt and store objects without touching the database; the caller adds
        the returned records to a session. ``keys`` maps each subject to its key.

        This lets a caller do the slow, fsynced writes outside any transaction and
        then record them in a short one (an object without a record is harmless;
        ``verify`` lists it as unrecorded).
        """
        return await asyncio.to_thread(self.store_objects, keys, requests)

    def store_objects(
        self, keys: Mapping[str, tuple[str, bytes]], requests: list[SealRequest]
    ) -> list[SealedObject]:
        """:meth:`write_objects`, in the calling thread: it blocks on the store."""
        now = self._clock.now()
        prepared = []
        for request in requests:
            retain_until = _whole_seconds(request.retain_until)
            if retain_until <= now:
                raise RetentionViolation("retain-until must be in the future")
            key_id, key = keys[request.subject]
            object_key = f"{day_prefix(request.kind, now)}{request.name or uuid.uuid4().hex}"
            sealed = envelope.seal(key, key_id, object_key, request.plaintext)
            prepared.append((request, object_key, key_id, retain_until, sealed))

        stored = self.store.put_many(
            [
                NewObject(object_key, data, retain_until, request.legal_hold)
                for request, object_key, _, retain_until, data in prepared
            ]
        )
        return [
            SealedObject(
                object_key=object_key,
                version_id=result.version_id,
                kind=request.kind,
                key_id=key_id,
                sha256=result.sha256,
                size=result.size,
                retain_until=retain_until,
                legal_hold=request.legal_hold,
                sealed_at=now,
            )
            for (request, object_key, key_id, retain_until, _), result in zip(
                prepared, stored, strict=True
            )
        ]

    async def open(self, session: AsyncSession, record: SealedObject) -> bytes:
        """Read and decrypt a sealed object; raise ``KeyDestroyed`` after shredding."""
        (plaintext,) = await self.open_many(session, [record])
        if plaintext is None:
            raise KeyDestroyed(f"subject key {record.key_id} was destroyed")
        return plaintext

    async def open_many(
        self, session: AsyncSession, records: Sequence[SealedObject]
    ) -> list[bytes | None]:
        """Read and decrypt several sealed objects, in order; ``None`` for each whose
        subject key was destroyed. One key query and one thread hop for them all."""
        keys = await self.keyring.keys_by_id(session, {r.key_id for r in records})
        return await asyncio.to_thread(self.read_many, records, keys)

    def read_many(
        self, records: Sequence[SealedObject], keys: Mapping[str, bytes | None]
    ) -> list[bytes | None]:
        """:meth:`open_many` with the subject keys already read (``Keyring.read_keys``);
        it blocks on the store."""
        opened: list[bytes | None] = []
        for record in records:
            key = keys[record.key_id]
            opened.append(None if key is None else self.read(record, key))
        return opened

    def read(self, record: SealedObject, key: bytes) -> bytes:
        """Read and decrypt one object with its subject key; it blocks on the store.
        Raises ``ObjectNotFound``, or ``CorruptionDetected`` when the bytes differ from
        the recorded SHA-256 or fail authentication."""
        sealed = self.store.get(record.object_key, record.version_id)
        if hashlib.sha256(sealed).hexdigest() != record.sha256:
            raise CorruptionDetected(f"{record.object_key} does not match its recorded SHA-256")
        return envelope.open_(key, record.object_key, sealed)

    async def extend_retention(
        self, session: AsyncSession, record: SealedObject, retain_until: datetime
    ) -> None:
        """Move the object's retain-until later; refuse any shortening."""
        retain_until = _whole_seconds(retain_until)
        if retain_until < record.retain_until:
            raise RetentionViolation(
                f"retention of {record.object_key} can only be extended "
                f"(now {record.retain_until.isoformat()}, asked {retain_until.isoformat()})"
            )
        if retain_until == record.retain_until:
            return
        await asyncio.to_thread(
            self.store.extend_retention, record.object_key, record.version_id, retain_until
        )
        record.retain_until = retain_until
        await session.flush()

    async def set_legal_hold(self, session: AsyncSession, record: SealedObject, on: bool) -> None:
        """Set or clear the object's legal hold, in the store and its record."""
        await asyncio.to_thread(self.store.set_legal_hold, record.object_key, record.version_id, on)
        record.legal_hold = on
        await session.flush()

    async def object_keys(self, prefix: str) -> list[str]:
        """Every key the store itself lists under ``prefix``, whatever the database records."""
        return await asyncio.to_thread(lambda: list(self.store.keys(prefix)))

    async def verify(self, session: AsyncSession) -> VerifyReport:
        """Re-read every sealed object and compare it with its record and lock state."""
        report = VerifyReport()
        recorded: set[str] = set()
        limit = asyncio.Semaphore(_VERIFY_CONCURRENCY)

        async def check(record: SealedObject) -> None:
            async with limit:
                problems = await asyncio.to_thread(self._check_one, record)
            report.drift.extend(problems)

        async for batch in self._records(session):
            recorded.update(r.object_key for r in batch)
            await asyncio.gather(*(check(r) for r in batch))
            report.checked += len(batch)
        stored = await asyncio.to_thread(lambda: set(self.store.keys()))
        report.unrecorded = sorted(stored - recorded)
        report.drift.sort(key=lambda d: (d.object_key, d.problem))
        return report

    async def _records(self, session: AsyncSession) -> AsyncIterator[list[SealedObject]]:
        last = 0
        while True:
            batch = list(
                await session.scalars(
                    select(SealedObject)
                    .where(SealedObject.id > last)
                    .order_by(SealedObject.id)
                    .limit(_VERIFY_BATCH)
                )
            )
            if not batch:
                return
            last = batch[-1].id
            yield batch

    def _check_one(self, record: SealedObject) -> list[Drift]:
        key = record.object_key
        try:
            data = self.store.get(key, record.version_id)
            lock = self.store.lock_state(key, record.version_id)
        except ObjectNotFound:
            return [Drift(key, "missing", "the store has no such object version")]
        except VaultError as exc:
            return [Drift(key, "unreadable", str(exc))]
        problems = []
        digest = hashlib.sha256(data).hexdigest()
        if digest != record.sha256:
            problems.append(Drift(key, "sha256", f"record {record.sha256}, store {digest}"))
        if len(data) != record.size:
            problems.append(Drift(key, "size", f"record {record.size}, store {len(data)}"))
        try:
            header_key = envelope.read_header(data).key_id
        except CorruptionDetected as exc:
            problems.append(Drift(key, "envelope", str(exc)))
        else:
            if header_key != record.key_id:
                problems.append(
                    Drift(key, "key_id", f"record {record.key_id}, object {header_key}")
                )
        if lock.retain_until != record.retain_until:
            problems.append(
                Drift(key, "retention", f"record {record.retain_until}, store {lock.retain_until}")
            )
        if lock.legal_hold != record.legal_hold:
            problems.append(
                Drift(key, "legal_hold", f"record {record.legal_hold}, store {lock.legal_hold}")
            )
        return problems
