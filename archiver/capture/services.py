"""Capture: the webhook journal and its projection into message records.

The journal is the record of truth. A verified POST is sealed verbatim (with
its signature header and receive time) under the account's journal key and
committed before it is acknowledged. Concurrent POSTs are group-committed:
one writer seals every waiting body of an account into one journal segment
object and commits them in one transaction, so the fsyncs are shared.

Projection reads unprojected journal entries and turns each item into a
record sealed under its data subject's key. It is idempotent (one record per
``(account, dedupe key)``), moves delivery states only forward, and marks an
entry projected in the same transaction that writes its records, so a crash
leaves either all of an entry's records or none.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import re
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import msgspec
import structlog
from sqlalchemy import Table, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from archiver.accounts.services import AccountSecrets, AccountService
from archiver.audit.services import SYSTEM, AuditLog
from archiver.capture.models import JournalEntry
from archiver.core.clock import Clock, time_key
from archiver.core.db import Writer, advisory_lock_key
from archiver.core.errors import CaptureError
from archiver.core.subjects import account_subject, contact_subject, journal_subject
from archiver.records.binding import RecordBinding
from archiver.records.models import Contact, ContactIdentity, DeliveryState, MediaItem, Record
from archiver.search.blind_index import BlindIndex, MetaIdIndex
from archiver.search.models import SearchToken
from archiver.vault.models import SealedObject
from archiver.vault.services import SealRequest, Vault
from archiver.whatsapp.items import Identity, Item, extract, fit

log = structlog.get_logger("strongroom.capture")

MAX_WEBHOOK_BYTES = 3 * 1024 * 1024
# Meta's deliveries nest about eight levels; anything far deeper is refused before
# parsing, so no parser's recursion limit decides what is accepted.
MAX_JSON_DEPTH = 64
# A JSON string, unrolled ("normal* (special normal*)*"): far faster than one
# alternation per character.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
# Journal entries projected together; an entry failing this often is set aside.
PROJECTION_BATCH = 100
MAX_ATTEMPTS = 10
# How long a projector holds the entries it claimed: far longer than a batch takes,
# so that only a worker that died loses them to another.
PROJECTION_LEASE = timedelta(minutes=2)
# Items projected in one write transaction (whole journal entries, at least one):
# it bounds how long projection holds the database's write lock.
_ITEMS_PER_TRANSACTION = 50
_MAX_BATCH = 256
# Under concurrent load, the journal writer waits this long for the POSTs already on
# their way before sealing a segment (as PostgreSQL's commit_delay): one segment for
# many costs far less than several small ones, and the wait is short next to an fsync.
_COMMIT_DELAY_SECONDS = 0.001
_STATUS_RANK = {"sent": 1, "delivered": 2, "read": 3, "played": 4}
_SECRETS_REFRESH = timedelta(seconds=5)
_SEALED_OBJECTS = cast(Table, SealedObject.__table__)
_JOURNAL_ENTRIES = cast(Table, JournalEntry.__table__)
_SEARCH_TOKENS = cast(Table, SearchToken.__table__)
_RECORDS = cast(Table, Record.__table__)


def _inserted(
    session: Session, table: Table, objects: list[SealedObject] | list[Record]
) -> list[int]:
    """Insert the rows of transient ORM ``objects`` with one Core statement; their
    new ids, in order.

    Inside the write lock, where the ORM's flush of the same rows cost several
    times the CPU.
    """
    if not objects:
        return []
    keys, statement = _insert_returning_ids(table)
    rows = [{key: getattr(obj, key) for key in keys} for obj in objects]
    return list(session.connection().execute(statement, rows).scalars())


@functools.cache
def _insert_returning_ids(table: Table) -> tuple[list[str], ReturningInsert[Any]]:
    columns = [c.key for c in table.c if c.key != "id"]
    return columns, insert(table).returning(table.c.id, sort_by_parameter_order=True)


def _serialise_accounts(session: Session, account_ids: set[str]) -> None:
    """On PostgreSQL, hold each account's projection lock until the transaction ends.

    Projectors in other workers write the same accounts: without it, a revoke
    and the message it revokes, committed at once, would each miss the other.
    SQLite has a single writer already.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    for account_id in sorted(account_ids):  # one order everywhere: no deadlock
        key = advisory_lock_key("projection:" + account_id)
        session.execute(select(func.pg_advisory_xact_lock(key)))


def nesting_depth(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (strings ignored)."""
    # Without an escaped quote, every quote opens or closes a string.
    escaped = b'\\"' in body
    outside = _JSON_STRING.sub(b"", body) if escaped else b"".join(body.split(b'"')[::2])
    depth = deepest = 0
    for bracket in outside.translate(None, _NOT_BRACKETS):
        if bracket in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _transactions(
    entries: list[JournalEntry], plan: list[tuple[JournalEntry, str, Item]]
) -> Iterable[tuple[list[JournalEntry], list[tuple[JournalEntry, str, Item]]]]:
    """Consecutive entries with their planned items, at most
    ``_ITEMS_PER_TRANSACTION`` items a group unless one entry has more."""
    items_of: dict[int, list[tuple[JournalEntry, str, Item]]] = defaultdict(list)
    for planned in plan:
        items_of[planned[0].id].append(planned)
    group: list[JournalEntry] = []
    items: list[tuple[JournalEntry, str, Item]] = []
    for entry in entries:
        if group and len(items) + len(items_of[entry.id]) > _ITEMS_PER_TRANSACTION:
            yield group, items
            group, items = [], []
        group.append(entry)
        items += items_of[entry.id]
    if group:
        yield group, items


class SignatureInvalid(CaptureError):
    """The ``X-Hub-Signature-256`` header is missing or matches no account."""


class JournalEntryBody(msgspec.Struct, frozen=True):
    """One journal entry as sealed: the raw POST, verbatim."""

    received_at: str
    signature: str
    body: bytes


@dataclass(slots=True)
class _Pending:
    account_id: str
    entry: JournalEntryBody
    body_sha256: str
    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the capture keeps what it seals."""

    journal: timedelta
    records: timedelta


class Capture:
    """Verifies, journals and projects webhook deliveries."""

    def __init__(
        self,
        vault: Vault,
        sessions: async_sessionmaker[AsyncSession],
        accounts: AccountService,
        index: BlindIndex,
        meta_ids: MetaIdIndex,
        clock: Clock,
        retention: Retention,
        audit: AuditLog | None = None,
        writer: Writer | None = None,
        *,
        binding: RecordBinding,
    ) -> None:
        self._audit = audit
        self._meta_ids = meta_ids
        self._binding = binding
        self._writer = writer or Writer(sessions)
        self._vault = vault
        self._sessions = sessions
        self._accounts = accounts
        self._index = index
        self._clock = clock
        self._retention = retention
        self._secrets: list[AccountSecrets] = []
        self._secrets_loaded_at: datetime | None = None
        self._journal_key_cache: dict[str, tuple[str, bytes]] = {}
        self._keys_loaded_at: datetime | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._journal_task: asyncio.Task[None] | None = None
        self.journal_written = asyncio.Event()

    # -- accounts and signatures ------------------------------------------

    async def refresh_secrets(self) -> None:
        """Reload account secrets (after an account is added, or on a miss)."""
        async with self._sessions() as session:
            self._secrets = await self._accounts.secrets(session)
        self._secrets_loaded_at = self._clock.now()

    async def verify_signature(self, body: bytes, header: str | None) -> AccountSecrets:
        """Return the account whose app secret signed ``body``; raise ``SignatureInvalid``."""
        if not header or not header.startswith("sha256="):
            raise SignatureInvalid("missing X-Hub-Signature-256")
        given = header[len("sha256=") :].strip().lower()
        if self._secrets_loaded_at is None:
            await self.refresh_secrets()
        match = self._match(body, given)
        stale = self._secrets_loaded_at is None or (
            self._clock.now() - self._secrets_loaded_at > _SECRETS_REFRESH
        )
        if match is None and stale:
            await self.refresh_secrets()
            match = self._match(body, given)
        if match is None:
            raise SignatureInvalid("signature matches no account")
        return match

    def _match(self, body: bytes, given: str) -> AccountSecrets | None:
        found = None
        digests: dict[bytes, str] = {}
        for account in self._secrets:
            if account.app_secret not in digests:
                digests[account.app_secret] = hmac.new(
                    account.app_secret, body, hashlib.sha256
                ).hexdigest()
            if hmac.compare_digest(digests[account.app_secret], given) and found is None:
                found = account
        return found

    async def accounts_sharing_secret(self, account_id: str) -> dict[str, str]:
        """``phone_number_id → account id`` for accounts under the same Meta app secret.

        A delivery signed with one app's secret may only feed that app's numbers.
        """
        if not any(a.account_id == account_id for a in self._secrets):
            await self.refresh_secrets()
        secret = next((a.app_secret for a in self._secrets if a.account_id == account_id), None)
        return {a.phone_number_id: a.account_id for a in self._secrets if a.app_secret == secret}

    # -- the journal -------------------------------------------------------

    async def journal(self, account_id: str, body: bytes, signature: str) -> None:
        """Seal ``body`` in the journal and commit it.

        Returns only once the entry is durable; callers acknowledge after it.
        """
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._journal_task is None or self._journal_task.done():
            self._journal_task = asyncio.create_task(self._write_loop(self._queue))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = JournalEntryBody(self._clock.now().isoformat(), signature, body)
        await self._queue.put(_Pending(account_id, entry, hashlib.sha256(body).hexdigest(), done))
        await done

    async def close(self) -> None:
        """Stop the journal writer once the queue is empty."""
        if self._journal_task is not None and self._queue is not None:
            await self._queue.join()
            self._journal_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._journal_task

    async def _write_loop(self, queue: asyncio.Queue[_Pending]) -> None:
        # One batch at a time: the POSTs that arrive while it is written form the next.
        # Each batch costs the server's CPU (sealing, files, a transaction) whatever its
        # size, and on two cores that CPU is what the acknowledgements wait for. Two
        # batches in flight, one sealing while the other recorded, halved the batches'
        # size: at 500 POSTs a second the ack p50 was 59 ms against 41 ms with one, and
        # the server's CPU 90% against 78% (six alternate runs of each).
        last = 1
        while True:
            batch = [await queue.get()]
            if last > 1:  # under concurrent load: see _COMMIT_DELAY_SECONDS
                await asyncio.sleep(_COMMIT_DELAY_SECONDS)
            while len(batch) < _MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            last = len(batch)
            await self._settle_batch(queue, batch)

    async def _settle_batch(self, queue: asyncio.Queue[_Pending], batch: list[_Pending]) -> None:
        """Write one batch and tell each waiter that it is durable, or the failure."""
        try:
            await self._write_batch(batch)
        except Exception as exc:  # every waiter must hear of the failure
            log.error("journal write failed", error=type(exc).__name__, entries=len(batch))
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(exc)
        else:
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_result(None)
            self.journal_written.set()
        finally:
            for _ in batch:
                queue.task_done()

    async def _write_batch(self, batch: list[_Pending]) -> None:
        now = self._clock.now()
        by_account: dict[str, list[int]] = defaultdict(list)
        for i, pending in enumerate(batch):
            by_account[pending.account_id].append(i)
        requests = [
            SealRequest(
                kind="journal",
                subject=journal_subject(account_id),
                plaintext=msgspec.msgpack.encode([batch[i].entry for i in positions]),
                retain_until=now + self._retention.journal,
            )
            for account_id, positions in by_account.items()
        ]
        keys = await self._journal_keys([r.subject for r in requests])
        objects: list[SealedObject] = []

        def write_segments() -> None:  # written and fsynced before the write lock is taken
            objects.extend(self._vault.store_objects(keys, requests))

        def insert_entries(session: Session) -> None:
            # Core statements on the tables, not the ORM's flush and bulk insert: a
            # third less CPU (0.7 against 1.0 ms for 32 POSTs) inside the write lock
            # that every acknowledgement waits for.
            object_ids = _inserted(session, _SEALED_OBJECTS, objects)
            rows = [
                {
                    "account_id": account_id,
                    "object_id": object_id,
                    "position": position,
                    "body_sha256": batch[i].body_sha256,
                    "received_at": now,
                    "attempts": 0,
                }
                for object_id, (account_id, positions) in zip(
                    object_ids, by_account.items(), strict=True
                )
                for position, i in enumerate(positions)
            ]
            # Plain values, no RETURNING: the driver then steps once for them all.
            session.connection().execute(insert(_JOURNAL_ENTRIES), rows)

        await self._writer.run(insert_entries, prepare=write_segments)

    async def _journal_keys(self, subjects: list[str]) -> dict[str, tuple[str, bytes]]:
        """The journal keys of ``subjects``, read (or created) at most every few seconds.

        Every journal batch needs its account's key; reading it from the database
        each time cost a query and two thread hops on the acknowledgement path.
        """
        wanted = set(subjects)
        stale = self._keys_loaded_at is None or (
            self._clock.now() - self._keys_loaded_at > _SECRETS_REFRESH
        )
        if stale or not wanted <= self._journal_key_cache.keys():
            async with self._sessions() as session:
                keyring = self._vault.keyring
                wanted |= self._journal_key_cache.keys()
                # One subject at a time: key_for creates a missing key in a savepoint.
                fresh = {subject: await keyring.key_for(session, subject) for subject in wanted}
                await session.commit()
            self._journal_key_cache = fresh
            self._keys_loaded_at = self._clock.now()
        return {subject: self._journal_key_cache[subject] for subject in subjects}

    async def read_journal_entry(
        self, session: AsyncSession, entry: JournalEntry
    ) -> JournalEntryBody:
        """Decrypt one journal entry."""
        return (await self._read_segment(session, entry))[entry.position]

    async def _read_segment(
        self, session: AsyncSession, entry: JournalEntry
    ) -> list[JournalEntryBody]:
        """Decrypt the journal segment that holds ``entry``."""
        sealed = await session.get(SealedObject, entry.object_id)
        if sealed is None:
            raise CaptureError(f"journal entry {entry.id} has no sealed object")
        return msgspec.msgpack.decode(
            await self._vault.open(session, sealed), type=list[JournalEntryBody]
        )

    # -- projection --------------------------------------------------------

    async def project_pending(self, limit: int = PROJECTION_BATCH) -> int:
        """Project up to ``limit`` unprojected journal entries; return how many.

        The entries are claimed first (``PROJECTION_LEASE``), so that several
        workers share the journal and none does another's work. The batch is
        projected together; if that fails, each entry is retried on its own, and
        an entry that still fails is counted (``attempts``, ``last_error``) and
        set aside after ``MAX_ATTEMPTS`` so that it never blocks the entries
        behind it. It stays in the journal for replay.
        """
        entries = await self._claim(limit)
        if not entries:
            return 0
        try:
            done = await self._project(entries)
        except Exception:  # find the entry at fault; the others go through alone
            done = 0
            for entry in entries:
                try:
                    done += await self._project([entry])
                except Exception as exc:  # the entry stays in the journal, to be replayed
                    await self._count_failure(entry.id, exc)
        if self._audit is not None:
            await self._audit.record(
                SYSTEM.entry(
                    "job.project_journal",
                    outcome="ok" if done == len(entries) else "failed",
                    reason=f"projected {done} of {len(entries)} journal entries",
                    target=f"journal:{entries[0].id}-{entries[-1].id}",
                )
            )
        return done

    async def _claim(self, limit: int) -> list[JournalEntry]:
        """Lease the first ``limit`` entries that are neither projected, set aside
        nor leased by another projector."""
        now = self._clock.now()

        def claim(session: Session) -> list[JournalEntry]:
            due = (
                select(JournalEntry)
                .where(
                    JournalEntry.projected_at.is_(None),
                    JournalEntry.attempts < MAX_ATTEMPTS,
                    or_(JournalEntry.leased_until.is_(None), JournalEntry.leased_until <= now),
                )
                .order_by(JournalEntry.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            entries = list(session.scalars(due))
            if entries:
                session.execute(
                    update(JournalEntry)
                    .where(JournalEntry.id.in_([entry.id for entry in entries]))
                    .values(leased_until=now + PROJECTION_LEASE)
                )
            return entries

        return await self._writer.run(claim)

    async def _count_failure(self, entry_id: int, exc: Exception) -> None:
        """Count a failed attempt and end the entry's lease: the next batch retries it."""
        log.error("projection failed", entry=entry_id, error=type(exc).__name__)
        await self._writer.run(
            lambda session: session.execute(
                update(JournalEntry)
                .where(JournalEntry.id == entry_id)
                .values(
                    attempts=JournalEntry.attempts + 1,
                    last_error=f"{type(exc).__name__}: {str(exc)[:200]}",
                    leased_until=None,
                )
            )
        )

    async def _project(self, entries: list[JournalEntry]) -> int:
        """Project ``entries``: read and extract them all, then project consecutive
        entries of at most ``_ITEMS_PER_TRANSACTION`` items together."""
        plan = await self._plan(entries)
        done = 0
        for group, planned in _transactions(entries, plan):
            done += await self._project_group(group, planned)
        return done

    async def _project_group(
        self, entries: list[JournalEntry], plan: list[tuple[JournalEntry, str, Item]]
    ) -> int:
        """Create contacts and keys in one short transaction; write the sealed
        objects with no transaction open; then record everything and mark the
        entries projected in another short transaction. Every lookup is made
        before the first write, so SQLite's write lock is held only for the
        writes themselves."""
        async with self._sessions() as session:
            contacts, new_contacts = await self._contacts_for(
                session, [item.identities for _, _, item in plan]
            )
            requests = [
                self._seal_request(account_id, contact, item)
                for (_, account_id, item), contact in zip(plan, contacts, strict=True)
            ]
            keys = await self._vault.keyring.keys_for(session, {r.subject for r in requests})
            session.add_all(new_contacts)
            if session.new:  # new contacts or keys: a short write
                async with self._writer.gate:
                    await session.commit()
        objects = await self._vault.write_objects(keys, requests)
        # Computed before the write lock is taken, as everything that can be.
        tokens = [self._index.tokens(item.text) for _, _, item in plan]
        records = [
            self._record(account_id, contact, item, obj, entry.id, entry.received_at)
            for (entry, account_id, item), contact, obj in zip(plan, contacts, objects, strict=True)
        ]

        def record(session: Session) -> int:
            ids = [entry.id for entry in entries]
            claim = select(JournalEntry.id).where(
                JournalEntry.id.in_(ids), JournalEntry.projected_at.is_(None)
            )
            claimed = set(session.scalars(claim.with_for_update(skip_locked=True)))
            rows = [
                (record, item, obj, item_tokens)
                for record, (entry, _, item), obj, item_tokens in zip(
                    records, plan, objects, tokens, strict=True
                )
                if entry.id in claimed
            ]
            _serialise_accounts(session, {record.account_id for record, *_ in rows})
            object_ids = _inserted(session, _SEALED_OBJECTS, [obj for _, _, obj, _ in rows])
            for (record, *_), object_id in zip(rows, object_ids, strict=True):
                record.object_id = object_id
            self._add_records(
                session, [r for r, *_ in rows], [i for _, i, *_ in rows], [t for *_, t in rows]
            )
            if claimed:
                session.execute(
                    update(JournalEntry)
                    .where(JournalEntry.id.in_(claimed))
                    .values(projected_at=self._clock.now(), leased_until=None)
                )
            return len(claimed)

        return await self._writer.run(record)

    async def _plan(self, entries: list[JournalEntry]) -> list[tuple[JournalEntry, str, Item]]:
        """The new items of ``entries``: decrypted, extracted, routed to their account,
        without those already recorded or repeated within the batch."""
        planned: dict[tuple[str, str], tuple[JournalEntry, str, Item]] = {}
        # The POSTs of one group commit share a segment: it is decrypted once.
        segments: dict[int, list[JournalEntryBody]] = {}
        refreshed = False  # once a batch at most
        async with self._sessions() as session:
            for entry in entries:
                if entry.object_id not in segments:
                    segments[entry.object_id] = await self._read_segment(session, entry)
                raw = segments[entry.object_id][entry.position]
                payload = msgspec.json.decode(raw.body)
                received = datetime.fromisoformat(raw.received_at)
                items = extract(payload, received)
                accounts = await self.accounts_sharing_secret(entry.account_id)
                if not refreshed and any(
                    i.phone_number_id and i.phone_number_id not in accounts for i in items
                ):
                    # A number registered under the same app since the secrets
                    # were read would otherwise be filed under the signing account.
                    await self.refresh_secrets()
                    refreshed = True
                    accounts = await self.accounts_sharing_secret(entry.account_id)
                for item in items:
                    account_id = accounts.get(item.phone_number_id or "", entry.account_id)
                    planned.setdefault((account_id, item.dedupe_key), (entry, account_id, item))
            existing = await self.recorded(session, planned)
        return [value for key, value in planned.items() if key not in existing]

    def dedupe_token(self, account_id: str, dedupe_key: str) -> bytes:
        """The token that ``account_id``'s records hold for ``dedupe_key``."""
        return self._meta_ids.dedupe_token(account_id, dedupe_key)

    async def recorded(
        self, session: AsyncSession, keyed: Iterable[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Which ``(account id, dedupe key)`` pairs already have their record."""
        found: set[tuple[str, str]] = set()
        by_account: dict[str, dict[bytes, str]] = defaultdict(dict)
        for account_id, key in keyed:
            by_account[account_id][self.dedupe_token(account_id, key)] = key
        for account_id, keys in by_account.items():
            rows = await session.scalars(
                select(Record.dedupe_token).where(
                    Record.account_id == account_id, Record.dedupe_token.in_(keys)
                )
            )
            found.update((account_id, keys[token]) for token in rows)
        return found

    async def store_items(
        self,
        session: AsyncSession,
        items: Iterable[tuple[str, str | None, Item]],
        *,
        journal_entry_id: int | None,
        received_at: datetime,
    ) -> list[Record]:
        """Seal ``(account id, contact id, item)`` triples in the caller's transaction
        and write their records, search tokens and pending media."""
        triples = list(items)
        requests = [
            self._seal_request(account_id, contact, item) for account_id, contact, item in triples
        ]
        objects = await self._vault.seal_many(session, requests)
        return await self._record_sealed(session, triples, objects, journal_entry_id, received_at)

    async def seal_items(self, items: Sequence[tuple[str, str | None, Item]]) -> list[SealedObject]:
        """Seal the items' objects with no transaction open (the slow, fsynced part),
        for :meth:`record_sealed` to record in a short one. An object whose record is
        never written is harmless: the vault's verify lists it as unrecorded."""
        requests = [
            self._seal_request(account_id, contact, item) for account_id, contact, item in items
        ]
        async with self._sessions() as session:
            keys = await self._vault.keyring.keys_for(session, {r.subject for r in requests})
            if session.new:  # a subject seen for the first time: its key, in a short write
                async with self._writer.gate:
                    await session.commit()
        return await self._vault.write_objects(keys, requests)

    async def record_sealed(
        self,
        session: AsyncSession,
        items: Sequence[tuple[str, str | None, Item]],
        objects: Sequence[SealedObject],
        *,
        received_at: datetime,
    ) -> list[Record]:
        """Write the records of items :meth:`seal_items` sealed, in the caller's transaction."""
        session.add_all(objects)
        await session.flush()
        return await self._record_sealed(session, list(items), list(objects), None, received_at)

    async def _record_sealed(
        self,
        session: AsyncSession,
        triples: list[tuple[str, str | None, Item]],
        objects: list[SealedObject],
        journal_entry_id: int | None,
        received_at: datetime,
    ) -> list[Record]:
        records = [
            self._record(account_id, contact, item, obj, journal_entry_id, received_at)
            for obj, (account_id, contact, item) in zip(objects, triples, strict=True)
        ]
        sealed = [item for _, _, item in triples]
        tokens = [self._index.tokens(item.text) for item in sealed]
        await session.run_sync(lambda sync: self._add_records(sync, records, sealed, tokens))
        return records

    def _seal_request(self, account_id: str, contact: str | None, item: Item) -> SealRequest:
        return SealRequest(
            kind="record",
            subject=contact_subject(contact) if contact else account_subject(account_id),
            plaintext=msgspec.json.encode(item.sealed),
            retain_until=self._clock.now() + self._retention.records,
        )

    def _record(
        self,
        account_id: str,
        contact: str | None,
        item: Item,
        obj: SealedObject,
        journal_entry_id: int | None,
        received_at: datetime,
    ) -> Record:
        """The record of ``item``, bound to ``obj`` (whose id, once it has one, is
        the record's ``object_id``), not yet in any session."""
        ids = self._meta_ids
        record = Record(
            account_id=account_id,
            contact_id=contact,
            dedupe_token=ids.dedupe_token(account_id, item.dedupe_key),
            kind=item.kind,
            source=item.source,
            direction=item.direction,
            item_type=item.item_type,
            wamid_token=ids.token(account_id, item.wamid) if item.wamid else None,
            related_wamid_token=(
                ids.token(account_id, item.related_wamid) if item.related_wamid else None
            ),
            status=item.status,
            error_code=item.error_code,
            occurred_at=item.occurred_at,
            received_at=received_at,
            has_media=item.media is not None or item.attached,
            forwarded=item.forwarded,
            revoked=False,
            opens_window=item.opens_window,
            journal_entry_id=journal_entry_id,
            object_id=obj.id,
        )
        record.binding = self._binding.compute(record, obj)
        return record

    def _add_records(
        self,
        session: Session,
        records: list[Record],
        items: list[Item],
        tokens_of: list[list[bytes]],
    ) -> None:
        """Insert transient ``records`` (their ids are set) with their search tokens
        (``tokens_of`` each item) and pending media, then apply what they change
        elsewhere (delivery states, revoked flags)."""
        session.flush()  # what the records refer to, if the caller added it
        for record, record_id in zip(records, _inserted(session, _RECORDS, records), strict=True):
            record.id = record_id
        now = self._clock.now()
        tokens = [
            {"token": token, "at": time_key(record.occurred_at), "record_id": record.id}
            for record, item_tokens in zip(records, tokens_of, strict=True)
            for token in item_tokens
        ]
        if tokens:
            # Ten or more tokens a record: one statement on the table, without the
            # per-row work of the ORM's bulk insert.
            session.connection().execute(insert(_SEARCH_TOKENS), tokens)
        for record, item in zip(records, items, strict=True):
            if item.media is not None:
                session.add(
                    MediaItem(
                        record_id=record.id,
                        mime_type=fit(str(item.media.get("mime_type") or ""), 200) or None,
                        expected_sha256=fit(str(item.media.get("sha256") or ""), 100) or None,
                        state="pending",
                        attempts=0,
                        next_attempt_at=now,
                    )
                )
        session.flush()
        self._apply_effects(session, records, items)

    def _apply_effects(self, session: Session, records: list[Record], items: list[Item]) -> None:
        revoking: dict[str, set[bytes]] = defaultdict(set)
        messages: dict[str, list[Record]] = defaultdict(list)
        for record, item in zip(records, items, strict=True):
            if item.kind == "status" and record.wamid_token and item.status:
                self._advance_status(session, record.account_id, record.wamid_token, item.status)
            elif item.item_type == "revoke" and record.related_wamid_token:
                revoking[record.account_id].add(record.related_wamid_token)
            elif record.wamid_token:
                messages[record.account_id].append(record)
        for account_id, tokens in revoking.items():
            session.execute(
                update(Record)
                .where(Record.account_id == account_id, Record.wamid_token.in_(tokens))
                .values(revoked=True)
            )
        for account_id, batch in messages.items():
            # A revoke may have arrived before the message it revokes.
            revoked = set(
                session.scalars(
                    select(Record.related_wamid_token).where(
                        Record.account_id == account_id,
                        Record.item_type == "revoke",
                        Record.related_wamid_token.in_({r.wamid_token for r in batch}),
                    )
                )
            )
            late = [record for record in batch if record.wamid_token in revoked]
            for record in late:
                record.revoked = True
            if late:
                session.execute(
                    update(Record)
                    .where(Record.id.in_([record.id for record in late]))
                    .values(revoked=True)
                )
        session.flush()

    def _advance_status(
        self, session: Session, account_id: str, wamid_token: bytes, status: str
    ) -> None:
        """Move a message's delivery state forward only; ``failed`` is terminal."""
        state = session.get(DeliveryState, (account_id, wamid_token), with_for_update=True)
        now = self._clock.now()
        if state is None:
            session.add(
                DeliveryState(
                    account_id=account_id, wamid_token=wamid_token, status=status, updated_at=now
                )
            )
            return
        if state.status == "failed":
            return
        if status == "failed" or _STATUS_RANK.get(status, 0) > _STATUS_RANK.get(state.status, 0):
            state.status = status
            state.updated_at = now

    async def resolve_contact(
        self, session: AsyncSession, identities: list[Identity]
    ) -> str | None:
        """The contact known by any of ``identities``, created (and linked) as needed."""
        (contact,), new = await self._contacts_for(session, [identities])
        session.add_all(new)
        await session.flush()
        return contact

    async def _contacts_for(
        self, session: AsyncSession, identity_lists: list[list[Identity]]
    ) -> tuple[list[str | None], list[Contact | ContactIdentity]]:
        """The contact of each list of identities (the first known of them, else a
        new one, to which the unknown ones are linked), with one query for them all,
        and the new rows that this needs (for the caller to add)."""
        # Two spellings of one number give one token: keep each token once.
        lists = [
            list(dict.fromkeys((i.kind, self.identity_token(i)) for i in identities))
            for identities in identity_lists
        ]
        known: dict[tuple[str, bytes], str] = {}
        wanted = {token for pairs in lists for _, token in pairs}
        if wanted:
            rows = await session.execute(
                select(
                    ContactIdentity.kind, ContactIdentity.token, ContactIdentity.contact_id
                ).where(ContactIdentity.token.in_(wanted))
            )
            known = {(kind, token): contact_id for kind, token, contact_id in rows}
        contacts: list[str | None] = []
        new: list[Contact | ContactIdentity] = []
        for pairs in lists:
            if not pairs:
                contacts.append(None)
                continue
            contact_id = next((known[pair] for pair in pairs if pair in known), None)
            if contact_id is None:
                contact_id = "ct_" + secrets.token_hex(10)
                new.append(Contact(id=contact_id, created_at=self._clock.now()))
            for kind, token in pairs:
                if (kind, token) not in known:
                    known[kind, token] = contact_id
                    new.append(ContactIdentity(kind=kind, token=token, contact_id=contact_id))
            contacts.append(contact_id)
        return contacts, new

    def identity_token(self, identity: Identity) -> bytes:
        """The blind token of an identity; phone numbers are normalised to E.164 first."""
        if identity.kind == "wa_id":
            try:
                return self._index.contact_token("+" + identity.value.lstrip("+"))
            except ValueError:
                pass  # not a parseable number: tokenised as given, still blind
        return self._index.identity_token(identity.kind, identity.value)

    async def run_projection(self, stop: asyncio.Event, idle_seconds: float = 1.0) -> None:
        """Project continuously until ``stop`` is set."""
        while not stop.is_set():
            try:
                busy = await self.project_pending()
            except Exception as exc:  # keep the loop alive; the journal keeps the data
                log.error("projection loop error", error=type(exc).__name__)
                busy = 0
            if not busy:
                self.journal_written.clear()
                waiter = asyncio.ensure_future(self.journal_written.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait(
                    {waiter, stopper}, timeout=idle_seconds, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                stopper.cancel()
