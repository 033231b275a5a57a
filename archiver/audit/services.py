"""The audit chain: an append-only, hash-chained, checkpointed log of every
request and job action, refusals and failures included.

Each event links to the one before it::

    seq 1                      seq 2                      seq n
    ┌──────────────────────┐   ┌──────────────────────┐   ┌──────────────────────┐
    │ prev_hash = 00…00    │ ┌▶│ prev_hash = h1       │ ┌▶│ prev_hash = h(n-1)   │
    │ fields (canonical c1)│ │ │ fields (canonical c2)│ │ │ fields (canonical cn)│
    │ h1 = H(00…00 ‖ c1)   │─┘ │ h2 = H(h1 ‖ c2)      │─┘ │ hn = H(h(n-1) ‖ cn)  │
    └──────────────────────┘   └──────────────────────┘   └──────────────────────┘
                                                                     │
    H(p ‖ c) = SHA-256(bytes.fromhex(p) + c), hex                    ▼
                                 checkpoint (within N seconds of a new event)

A checkpoint signs the head with Ed25519 (the 32-byte seed is the keyring key
of subject ``audit:signing``)::

    message   = b"strongroom-audit-checkpoint\\n" + str(seq) + b"\\n" + hash (hex, ASCII)
    statement = {"created_at", "hash", "public_key" (raw, hex), "seq", "signature" (hex)}
                as JSON with sorted keys, sealed in the vault (kind ``audit-checkpoint``,
                subject ``audit:checkpoints``, retained 10 years), and the same values
                in an ``audit_checkpoints`` row.
    object key = audit-checkpoint/YYYY/MM/DD/<seq, 20 digits>-<hash>-<signature>

The object key states the checkpoint itself, so the vault's own listing is an
anchor of the chain outside the database: ``verify`` reads it (not the
``audit_checkpoints`` rows, which a database administrator can delete) and
needs only the public key to check it.

The canonical encoding ``c`` of an event (:func:`canonical_bytes`) is the
UTF-8 JSON object below, keys sorted, no whitespace, non-ASCII characters
unescaped (byte-identical to Python's ``json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``)::

    {"action": str, "actor": str, "actor_name": str (only when the event has one),
     "client_ip": str|null, "details_sha256": hex SHA-256 of the sealed details|null,
     "occurred_at": "YYYY-MM-DDTHH:MM:SS.ffffffZ", "outcome": str, "reason": str|null,
     "request_id": str|null, "role": str|null, "scope": str|null, "seq": int,
     "target": str|null, "user_agent": str|null, "v": 1}

``actor_name`` (the username, revision 0011) is in the object only when it is not
null, so the events written before it existed keep the encoding, and the hash,
they were written with; the version stays 1 because an event's own keys say which
fields it has. Setting or clearing a stored ``actor_name`` changes the encoding
either way, so the chain covers it like any other field.

Details are sealed with :mod:`archiver.crypto.envelope` under subject ``audit:details``
with ``audit/<seq>`` as the object key, so they cannot be moved to another
event. The chain covers the digest of the sealed bytes rather than the bytes,
so an export line (the canonical object plus ``hash`` and ``prev_hash``) lets
anyone recompute the chain offline without receiving the ciphertext.

What is and is not detected: the chain alone finds any change to a row that
was not followed by recomputing every later hash. Anyone with database rights
can recompute SHA-256, so the checkpoints anchor the chain: rewriting,
reordering or removing an event at or before a checkpoint changes the head that
checkpoint signed, or removes it, and the write-once vault keeps the signed
original. Events after the last checkpoint (``AuditVerifyReport.unanchored``,
at most ``anchor_seconds`` old while the worker runs) are protected by the
chain alone until the next checkpoint.

A chain found behind what was written or anchored is not continued: appending
and checkpointing refuse (:class:`AuditChainBroken`) rather than number new
events from the cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, cast

import msgspec
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy import Select, Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from archiver.audit.models import AuditCheckpoint, AuditEvent
from archiver.core.clock import Clock
from archiver.core.db import Writer
from archiver.core.errors import (
    ArchiverError,
    CorruptionDetected,
    CryptoError,
    InvalidInput,
    ObjectExists,
    VaultError,
)
from archiver.crypto import envelope
from archiver.crypto.keyring import Keyring
from archiver.vault.models import SealedObject
from archiver.vault.services import SealRequest, Vault, day_prefix

log = structlog.get_logger("strongroom.audit")

ZERO_HASH: Final = "0" * 64
CANONICAL_VERSION: Final = 1
DETAILS_SUBJECT: Final = "audit:details"
SIGNING_SUBJECT: Final = "audit:signing"
CHECKPOINT_SUBJECT: Final = "audit:checkpoints"
CHECKPOINT_KIND: Final = "audit-checkpoint"
CHECKPOINT_DOMAIN: Final = b"strongroom-audit-checkpoint\n"
CHECKPOINT_RETENTION_YEARS: Final = 10
_SUBJECTS: Final = (SIGNING_SUBJECT, DETAILS_SUBJECT, CHECKPOINT_SUBJECT)

Outcome = Literal["allowed", "denied", "failed", "ok"]
OUTCOMES: Final = frozenset({"allowed", "denied", "failed", "ok"})

ProblemKind = Literal[
    "gap",  # events are missing (deleted rows)
    "duplicate",  # a seq appears twice
    "broken_link",  # prev_hash is not the hash of the event before
    "altered",  # the content does not match the event's hash
    "inserted",  # the event after this one links to the one before it
    "renumbered",  # the content was hashed under another seq (rows shifted)
    "reordered",  # the content belongs to another event of the chain
    "checkpoint_mismatch",  # a checkpoint disagrees with the event at its seq
    "checkpoint_signature",  # a checkpoint's signature does not verify
    "checkpoint_key",  # a checkpoint names a public key other than the audit key
    "checkpoint_statement",  # the vault copy of a checkpoint is missing or differs
    "checkpoint_removed",  # a sealed checkpoint has no checkpoint row any more
    "anchor_invalid",  # a checkpoint in the vault is malformed or its signature does not verify
    "truncated",  # the chain ends before the newest checkpoint in the vault
]

# Any constant works as long as every Strongroom process uses the same one: "SRAUDIT" + 0x01.
_ADVISORY_LOCK: Final = 0x5352_4155_4449_5401
_MAX_BATCH = 500
_AUDIT_EVENTS = cast(Table, AuditEvent.__table__)
# How long an event that nobody waits for waits for others to share its commit
# (an event that a caller waits for ends the wait). Every HTTP request is audited,
# and on SQLite each append holds the one write lock that acknowledging webhooks
# needs: at 500 webhook POSTs a second, gathering for 0.1 s instead of 0.02 s cut
# the appends from 15 to 7 a second and the ack p50 by about a quarter.
_GATHER_SECONDS = 0.1
# Waiting callers hear of a failure after _WRITE_ATTEMPTS; queued events are
# retried for _KEEP_TRYING seconds, riding out a database restart.
_WRITE_ATTEMPTS = 3
_KEEP_TRYING = 120.0
_RETRY_DELAY = 0.1
_MAX_RETRY_DELAY = 5.0
_VERIFY_BATCH = 1000
_MAX_SUSPECTS = 200
_MAX_PROBLEMS = 10_000
_MAX_QUERY_LIMIT = 1000
# The name of a checkpoint in the vault: seq, hash and signature.
_ANCHOR_NAME: Final = re.compile(r"(\d{20})-([0-9a-f]{64})-([0-9a-f]{128})")
# Checkpoints sealed before their names stated them are named by a random hex id
# (and checked through their rows and sealed statements).
_UNNAMED_CHECKPOINT: Final = re.compile(r"[0-9a-f]{32}")
# How many days back the newest checkpoint is looked for, day by day, before
# listing them all: an active chain has one from the last minute.
_ANCHOR_LOOKBACK_DAYS = 3

# The columns of an event that the hash covers as they are; the others are
# seq, occurred_at and details_sealed (see canonical_fields) and the links.
_CLEAR_COLUMNS: Final = (
    "action",
    "actor",
    "client_ip",
    "outcome",
    "reason",
    "request_id",
    "role",
    "scope",
    "target",
    "user_agent",
)
# Covered as they are, but only when not null (see the module docstring).
_OPTIONAL_COLUMNS: Final = ("actor_name",)
_COLUMNS: Final = (*_CLEAR_COLUMNS, *_OPTIONAL_COLUMNS, "seq", "occurred_at", "details_sealed")

# Column widths of archiver.models.AuditEvent: longer values are cut, never refused,
# because an audit record that cannot be written is worse than a shortened one.
_WIDTHS: Final = {
    "actor": 80,
    "actor_name": 80,
    "role": 40,
    "action": 80,
    "target": 300,
    "scope": 300,
    "reason": 500,
    "request_id": 64,
    "client_ip": 64,
    "user_agent": 300,
}


class AuditUnavailable(ArchiverError):
    """An audit event could not be committed; the action it records must not proceed."""


class AuditChainBroken(CorruptionDetected):
    """The chain in the database is behind an event that was written or anchored:
    events were removed, and new ones must not be numbered from the cut."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Actor:
    """Who asks for a change, as the audit trail names them, and from where.

    Services take one with every change they make and record it with the change.
    """

    id: str
    """A user id (``:token`` appended when acting with an API token), ``cli`` or ``system``."""
    name: str | None = None
    """The username, when the actor is a user."""
    role: str | None = None
    """The role the change is made under, when one grants it."""
    request_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None

    def entry(
        self,
        action: str,
        *,
        outcome: Outcome = "ok",
        target: str | None = None,
        scope: str | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """The audit entry of this actor doing ``action``."""
        return AuditEntry(
            actor=self.id,
            actor_name=self.name,
            role=self.role,
            action=action,
            outcome=outcome,
            target=target,
            scope=scope,
            reason=reason,
            request_id=self.request_id,
            client_ip=self.client_ip,
            user_agent=self.user_agent,
            details=details,
        )


SYSTEM: Final = Actor(id="system")
"""The archive itself (jobs, projection)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One thing to record. ``details`` are sealed, never stored in clear."""

    actor: str
    """A user id, ``anonymous``, ``system`` or ``token:<prefix>``."""
    actor_name: str | None = None
    """The actor's username when the actor is a user: the trail says who, as they
    were named then, without a lookup in the users table."""
    action: str
    """For example ``http.GET /api/v1/messages/{id}``, ``job.fetch_media``."""
    outcome: Outcome
    role: str | None = None
    target: str | None = None
    scope: str | None = None
    reason: str | None = None
    request_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    details: Mapping[str, Any] | None = None
    occurred_at: datetime | None = None
    """Defaults to the log's clock at :meth:`AuditLog.record` time."""


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One thing :meth:`AuditLog.verify` found wrong, at the seq where it shows."""

    seq: int
    kind: ProblemKind
    detail: str


@dataclass(slots=True)
class AuditVerifyReport:
    """The outcome of re-reading the whole chain and every checkpoint."""

    events: int = 0
    head_seq: int = 0
    head_hash: str = ZERO_HASH
    checkpoints: int = 0
    anchors: int = 0
    """Checkpoints found in the vault's own listing with a good signature."""
    last_checkpoint_seq: int = 0
    unanchored_since: datetime | None = None
    """When the oldest event after the last checkpoint occurred."""
    problems: list[AuditProblem] = field(default_factory=list)
    problems_omitted: int = 0

    @property
    def ok(self) -> bool:
        """True when the chain and every checkpoint are intact."""
        return not self.problems and not self.problems_omitted

    @property
    def unanchored(self) -> int:
        """Events after the last checkpoint, protected by the chain alone."""
        return max(0, self.head_seq - self.last_checkpoint_seq)

    def add(self, seq: int, kind: ProblemKind, detail: str) -> None:
        """Record a problem (keeping at most ``_MAX_PROBLEMS``)."""
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(AuditProblem(seq, kind, detail))
        else:
            self.problems_omitted += 1


@dataclass(frozen=True, slots=True)
class Anchor:
    """A checkpoint as the vault's listing names it."""

    seq: int
    hash: str
    signature: str
    object_key: str


class CheckpointStatement(msgspec.Struct, frozen=True, kw_only=True):
    """The signed statement of a chain head, as sealed in the vault."""

    seq: int
    hash: str
    signature: str
    public_key: str
    created_at: str


# -- pure functions: the encoding, hashes and signatures -----------------------


def format_time(moment: datetime) -> str:
    """ISO-8601 in UTC with microseconds and a ``Z``: ``2026-11-21T09:00:00.000000Z``."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime given where UTC is required")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical_fields(
    event: AuditEvent | Mapping[str, Any], *, seq: int | None = None
) -> dict[str, Any]:
    """The values the hash covers, from a row or its column values (``seq``
    overrides the event's own seq)."""
    values = event if isinstance(event, Mapping) else {c: getattr(event, c) for c in _COLUMNS}
    sealed = values["details_sealed"]
    fields = {name: values[name] for name in _CLEAR_COLUMNS}
    fields.update(
        {name: values[name] for name in _OPTIONAL_COLUMNS if values.get(name) is not None}
    )
    fields["details_sha256"] = hashlib.sha256(sealed).hexdigest() if sealed is not None else None
    fields["occurred_at"] = format_time(values["occurred_at"])
    fields["seq"] = values["seq"] if seq is None else seq
    fields["v"] = CANONICAL_VERSION
    return fields


def canonical_bytes(event: AuditEvent | Mapping[str, Any], *, seq: int | None = None) -> bytes:
    """The canonical encoding of an event (see the module docstring)."""
    return msgspec.json.encode(canonical_fields(event, seq=seq), order="sorted")


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    """``SHA-256(bytes.fromhex(prev_hash) + canonical)`` as lowercase hex."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical).hexdigest()


def checkpoint_message(seq: int, head_hash: str) -> bytes:
    """The bytes a checkpoint signs."""
    return CHECKPOINT_DOMAIN + f"{seq}\n{head_hash}".encode("ascii")


def anchor_name(seq: int, head_hash: str, signature: str) -> str:
    """The last part of a checkpoint's object key: it states the checkpoint."""
    return f"{seq:020d}-{head_hash}-{signature}"


def parse_anchor(object_key: str) -> Anchor | None:
    """The checkpoint an object key states, or ``None`` if it states none."""
    match = _ANCHOR_NAME.fullmatch(object_key.rpartition("/")[2])
    if match is None:
        return None
    return Anchor(int(match[1]), match[2], match[3], object_key)


def anchor_signed(anchor: Anchor, public_key: Ed25519PublicKey) -> bool:
    """True if the audit key signed the checkpoint ``anchor`` names."""
    try:
        public_key.verify(
            bytes.fromhex(anchor.signature), checkpoint_message(anchor.seq, anchor.hash)
        )
    except InvalidSignature:
        return False
    return True


def details_object_key(seq: int) -> str:
    """The associated data that binds sealed details to their event."""
    return f"audit/{seq}"


def export_line(event: AuditEvent) -> bytes:
    """One JSONL line of an export: the canonical object plus ``hash`` and ``prev_hash``."""
    fields = canonical_fields(event)
    fields["hash"] = event.hash
    fields["prev_hash"] = event.prev_hash
    return msgspec.json.encode(fields, order="sorted") + b"\n"


def verify_export(jsonl: bytes, signature: bytes, public_key_pem: str) -> bool:
    """True if ``signature`` is the audit key's signature of exactly ``jsonl`` and
    every line's hash matches its content. Raises :class:`InvalidInput` for a key
    that is not an Ed25519 public key (``ValueError`` for one that is not PEM)."""
    key = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput("the audit export key is an Ed25519 public key")
    try:
        key.verify(signature, jsonl)
    except InvalidSignature:
        return False
    if jsonl and not jsonl.endswith(b"\n"):
        return False
    for line in jsonl[:-1].split(b"\n") if jsonl else []:
        try:
            fields = msgspec.json.decode(line, type=dict[str, Any])
            stored, prev = fields.pop("hash"), fields.pop("prev_hash")
            canonical = msgspec.json.encode(fields, order="sorted")
            if not isinstance(stored, str) or chain_hash(str(prev), canonical) != stored:
                return False
        except (msgspec.DecodeError, KeyError, ValueError):
            return False
    return True


def _public_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _years_later(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + years, day=28)


def _text(value: str | None, width: int) -> str | None:
    if value is None:
        return None
    # PostgreSQL refuses NUL in text and UTF-8 refuses lone surrogates: a header
    # carrying either must not make the whole batch fail.
    value = value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return value if len(value) <= width else value[: width - 1] + "…"


def _columns(entry: AuditEntry, now: datetime) -> dict[str, Any]:
    if entry.outcome not in OUTCOMES:
        raise InvalidInput(f"outcome must be one of {sorted(OUTCOMES)}, not {entry.outcome!r}")
    if not entry.actor or not entry.action:
        raise InvalidInput("an audit entry needs an actor and an action")
    occurred = entry.occurred_at or now
    if occurred.tzinfo is None:
        raise InvalidInput("occurred_at must be timezone-aware")
    values: dict[str, Any] = {
        name: _text(getattr(entry, name), width) for name, width in _WIDTHS.items()
    }
    values["outcome"] = entry.outcome
    values["occurred_at"] = occurred.astimezone(UTC)
    return values


# -- the log -------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    columns: dict[str, Any]
    details: bytes | None
    done: asyncio.Future[None] | None


def _fail_waiters(batch: list[_Pending], error: Exception) -> list[_Pending]:
    """Fail every waiting caller in ``batch``; return the entries nobody waits for."""
    rest = []
    for pending in batch:
        if pending.done is None:
            rest.append(pending)
        elif not pending.done.done():
            unavailable = AuditUnavailable("the audit event could not be committed")
            unavailable.__cause__ = error
            pending.done.set_exception(unavailable)
    return rest


def _log_lost(batch: list[_Pending], error: Exception) -> None:
    if batch:
        log.error(
            "audit events lost",
            error=type(error).__name__,
            events=len(batch),
            actions=sorted({p.columns["action"] for p in batch})[:20],
            request_ids=[p.columns["request_id"] for p in batch if p.columns["request_id"]][:50],
        )


@dataclass(frozen=True, slots=True)
class _TrailKeys:
    signer: Ed25519PrivateKey
    details: tuple[str, bytes]
    by_subject: dict[str, tuple[str, bytes]]


class AuditLog:
    """Appends, checkpoints, verifies, queries and exports the audit chain.

    Appends are group-committed by one background writer per instance; writers
    in different processes are serialised by the database (an advisory lock on
    PostgreSQL, the write lock on SQLite), so the chain never forks.
    ``anchor_seconds`` is how often :meth:`checkpoint_due` checkpoints a moving head.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        vault: Vault,
        keyring: Keyring,
        clock: Clock,
        *,
        anchor_seconds: float = 10,
        writer: Writer | None = None,
    ) -> None:
        if anchor_seconds <= 0:
            raise InvalidInput("the anchoring interval must be positive")
        self._sessions = sessions
        self._vault = vault
        self._keyring = keyring
        self._clock = clock
        self._anchor_interval = timedelta(seconds=anchor_seconds)
        self._refused_at: datetime | None = None
        self._anchor: Anchor | None = None  # the newest checkpoint known in the vault
        # No head below this seq is continued: it was written here or anchored.
        self._floor = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._awaited = asyncio.Event()  # set when a queued event has a waiting caller
        self._append_task: asyncio.Task[None] | None = None
        self._trail_keys: _TrailKeys | None = None
        self._floor_read = False  # the newest anchor in the vault raised the floor
        self._writer = writer or Writer(sessions)

    # -- appending ---------------------------------------------------------

    async def record(self, entry: AuditEntry) -> None:
        """Queue ``entry``; it is committed with the next batch.

        Raises :class:`InvalidInput` (or ``TypeError`` for details JSON cannot hold)
        at once for a malformed entry; database trouble is retried, then logged.
        """
        await self._enqueue(entry, None)

    async def record_durable(self, entry: AuditEntry) -> None:
        """Record ``entry`` and return once it is committed; raise ``AuditUnavailable``.

        On SQLite, do not call this while holding a write transaction: the writer
        would wait for that transaction's lock.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._enqueue(entry, done)
        await done

    async def record_in(self, session: AsyncSession, entry: AuditEntry) -> None:
        """Append ``entry`` inside the caller's write transaction, so that it commits
        with the change it records or not at all.

        Call it last, just before the commit: from here until the commit the
        transaction holds the chain's lock (an advisory lock on PostgreSQL, the
        write lock on SQLite), which every other appender waits for. Raises
        :class:`InvalidInput` for a malformed entry and ``AuditChainBroken`` for a cut
        chain, either of which rolls the change back.
        """
        await self.record_all_in(session, [entry])

    async def record_all_in(self, session: AsyncSession, entries: Sequence[AuditEntry]) -> None:
        """:meth:`record_in` for several entries, in order: one append for a batch of
        changes made in one transaction (an outbox batch's moves)."""
        if not entries:
            return
        pending = [self._pending(entry, None) for entry in entries]
        # The details key as this transaction sees it (made here on the first
        # event); cached only by the group appender, after its own commit.
        cached = self._trail_keys
        key = cached.details if cached else await self._keyring.key_for(session, DETAILS_SUBJECT)
        head = await session.run_sync(lambda sync: self._append_rows(sync, pending, key))
        self._floor = max(self._floor, head - len(pending))  # these are not committed yet

    async def flush(self) -> None:
        """Wait until every queued entry is written (or reported lost)."""
        if self._queue is not None:
            await self._queue.join()

    async def close(self) -> None:
        """Write what is queued, then stop the writer."""
        await self.flush()
        if self._append_task is not None:
            self._append_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._append_task
            self._append_task = None

    def _pending(self, entry: AuditEntry, done: asyncio.Future[None] | None) -> _Pending:
        columns = _columns(entry, self._clock.now())
        details = None
        if entry.details is not None:
            # Encoded now, so a caller mutating its dict later cannot change the record.
            details = msgspec.json.encode(dict(entry.details))
        return _Pending(columns, details, done)

    async def _enqueue(self, entry: AuditEntry, done: asyncio.Future[None] | None) -> None:
        pending = self._pending(entry, done)
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._append_task is None or self._append_task.done():
            self._append_task = asyncio.create_task(self._write_loop(self._queue))
        await self._queue.put(pending)
        if done is not None:
            self._awaited.set()

    async def _write_loop(self, queue: asyncio.Queue[_Pending]) -> None:
        while True:
            batch = [await queue.get()]
            if batch[0].done is None:
                # Nobody waits for this event: let those of the next moments join it,
                # so that a busy server appends in tens, not ones.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._awaited.wait(), _GATHER_SECONDS)
            self._awaited.clear()  # every event queued so far is in this batch
            while len(batch) < _MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._settle(batch)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _settle(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _KEEP_TRYING
        delay = _RETRY_DELAY
        for attempt in itertools.count(1):
            try:
                head = await self._append(batch)
            except AuditChainBroken as exc:  # no retry mends it: refuse, loudly
                log.error("audit chain cut; appends refused", problem=str(exc))
                _log_lost(_fail_waiters(batch, exc), exc)
                return
            except Exception as exc:  # retried, then reported to every waiter
                log.warning("audit append failed", error=type(exc).__name__, attempt=attempt)
                if attempt >= _WRITE_ATTEMPTS:
                    # A waiting caller must not proceed unrecorded, so it hears now;
                    # its event is dropped, as the action it records will not happen.
                    batch = _fail_waiters(batch, exc)
                if not batch or loop.time() >= give_up:
                    _log_lost(batch, exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                continue
            self._floor = max(self._floor, head)
            for pending in batch:
                if pending.done is not None and not pending.done.done():
                    pending.done.set_result(None)
            return

    async def _keys(self) -> _TrailKeys:
        """The trail's subject keys (signing, details, checkpoints), created on first
        use in a write transaction of their own, so the exported public key is
        durable, and kept: none changes later, root rotation only rewraps them. Not
        to be called while holding the write gate."""
        if self._trail_keys is None:
            async with self._writer.transaction() as session:
                # One by one: key_for uses the key another appender creates meanwhile.
                keys = {s: await self._keyring.key_for(session, s) for s in _SUBJECTS}
            signer = Ed25519PrivateKey.from_private_bytes(keys[SIGNING_SUBJECT][1])
            self._trail_keys = _TrailKeys(signer, keys[DETAILS_SUBJECT], keys)  # once committed
        return self._trail_keys

    async def _append(self, batch: list[_Pending]) -> int:
        """Append ``batch`` in one transaction; return the new head seq."""
        keys = await self._keys()
        if not self._floor_read:
            anchor = await self._newest_anchor(keys.signer.public_key())
            self._floor = max(self._floor, anchor.seq if anchor else 0)
            self._floor_read = True
        details = keys.details
        return await self._writer.run(lambda session: self._append_rows(session, batch, details))

    def _append_rows(
        self, session: Session, batch: Sequence[_Pending], key: tuple[str, bytes]
    ) -> int:
        """Chain ``batch`` onto the head inside ``session``'s transaction; return the
        new head seq. Holds the chain's lock until that transaction ends."""
        key_id, secret = key
        _lock_chain(session)
        seq, prev, last_checkpoint = _head_and_checkpoint(session)
        _refuse_behind(seq, max(self._floor, last_checkpoint), "written or anchored")
        rows = []
        for pending in batch:
            seq += 1
            sealed = None
            if pending.details is not None:
                sealed = envelope.seal(secret, key_id, details_object_key(seq), pending.details)
            row = {**pending.columns, "seq": seq, "details_sealed": sealed, "prev_hash": prev}
            row["hash"] = prev = chain_hash(prev, canonical_bytes(row))
            rows.append(row)
        # One statement on the table: ORM objects cost more than the write, and
        # even the ORM's bulk insert added a fifth (about 1 ms for 270 events).
        session.connection().execute(insert(_AUDIT_EVENTS), rows)
        return seq

    # -- details -----------------------------------------------------------

    async def open_details(self, event: AuditEvent) -> dict[str, Any] | None:
        """Decrypt an event's details; raise ``KeyDestroyed`` or ``CorruptionDetected``."""
        if event.details_sealed is None:
            return None
        header = envelope.read_header(event.details_sealed)
        async with self._sessions() as session:
            key = await self._keyring.key_by_id(session, header.key_id)
        plaintext = envelope.open_(key, details_object_key(event.seq), event.details_sealed)
        try:
            return msgspec.json.decode(plaintext, type=dict[str, Any])
        except msgspec.DecodeError as exc:
            raise CorruptionDetected(f"audit event {event.seq} has malformed details") from exc

    # -- checkpoints -------------------------------------------------------

    async def checkpoint(self) -> AuditCheckpoint | None:
        """Anchor the chain head: sign it, seal the statement in the vault under a
        name that states it, and record it; ``None`` if the head has not moved.

        Raises :class:`AuditChainBroken`, and signs nothing, if the chain is behind
        the last checkpoint, or the newest one in the vault, or differs from it there.
        """
        async with self._sessions() as session:
            seq, head_hash, last = await session.run_sync(_head_and_checkpoint)
        _refuse_behind(seq, last, "checkpointed")
        if seq == last:  # an empty chain, or nothing new since the last checkpoint
            return None
        keys = await self._keys()
        signer = keys.signer
        anchor = self._anchor or await self._newest_anchor(signer.public_key())
        if anchor is not None:
            _refuse_behind(seq, anchor.seq, "anchored in the vault")
            async with self._sessions() as session:
                anchored = await session.scalar(
                    select(AuditEvent.hash).where(AuditEvent.seq == anchor.seq)
                )
            if anchored != anchor.hash:
                raise AuditChainBroken(
                    f"the event at seq {anchor.seq} is not the one anchored in the vault"
                )
        now = self._clock.now()
        signature = signer.sign(checkpoint_message(seq, head_hash)).hex()
        statement = CheckpointStatement(
            seq=seq,
            hash=head_hash,
            signature=signature,
            public_key=_public_hex(signer.public_key()),
            created_at=format_time(now),
        )
        request = SealRequest(
            kind=CHECKPOINT_KIND,
            subject=CHECKPOINT_SUBJECT,
            plaintext=msgspec.json.encode(statement, order="sorted"),
            retain_until=_years_later(now, CHECKPOINT_RETENTION_YEARS),
            name=anchor_name(seq, head_hash, signature),
        )
        sealed: list[SealedObject] = []

        def store() -> None:
            # Written and made durable outside the write lock: appends go on meanwhile.
            sealed.extend(self._vault.store_objects(keys.by_subject, [request]))

        def record(session: Session) -> AuditCheckpoint | None:
            if session.scalar(select(AuditCheckpoint.id).where(AuditCheckpoint.seq == seq)):
                return None  # another process checkpointed the same head meanwhile
            session.add(sealed[0])
            session.flush()
            row = AuditCheckpoint(
                seq=seq,
                hash=head_hash,
                signature=signature,
                public_key=statement.public_key,
                object_id=sealed[0].id,
                created_at=now,
            )
            session.add(row)
            session.flush()
            return row

        try:
            row = await self._writer.run(record, store)
        except ObjectExists:  # Ed25519 is deterministic: another process anchored this head
            return None
        self._anchor = Anchor(seq, head_hash, signature, sealed[0].object_key)
        self._floor = max(self._floor, seq)
        log.info("audit checkpoint", seq=seq)
        return row

    async def checkpoint_due(self) -> AuditCheckpoint | None:
        """:meth:`checkpoint`, unless the newest checkpoint in the database was made
        less than ``anchor_seconds`` ago (by any process: a restarted or a second
        worker keeps the same timeline), or this log refused to checkpoint a cut
        chain less than that ago. The worker calls it every second."""
        now = self._clock.now()
        if self._refused_at is not None and now - self._refused_at < self._anchor_interval:
            return None
        async with self._sessions() as session:
            last = await session.scalar(
                select(AuditCheckpoint.created_at).order_by(AuditCheckpoint.seq.desc()).limit(1)
            )
        if last is not None and now - last < self._anchor_interval:
            return None
        try:
            return await self.checkpoint()
        except AuditChainBroken:
            self._refused_at = now  # the error is logged once an interval, not every second
            raise

    async def _newest_anchor(self, public_key: Ed25519PublicKey) -> Anchor | None:
        """The newest well-signed checkpoint in the vault's own listing: those of the
        last days first, then, if they have none, all of them."""
        today = self._clock.now()
        days = [today - timedelta(days=back) for back in range(_ANCHOR_LOOKBACK_DAYS)]
        for prefix in [*(day_prefix(CHECKPOINT_KIND, day) for day in days), f"{CHECKPOINT_KIND}/"]:
            listed = await self._listed_anchors(prefix)
            for anchor in sorted(listed, key=lambda a: a.seq, reverse=True):
                if anchor_signed(anchor, public_key):
                    return anchor
        return None

    async def _listed_anchors(self, prefix: str) -> list[Anchor]:
        keys = await self._vault.object_keys(prefix)
        return [anchor for anchor in map(parse_anchor, keys) if anchor is not None]

    async def public_key_pem(self) -> str:
        """The audit signing key's public half (SubjectPublicKeyInfo PEM), created
        with the first event or, before any, now."""
        signer = (await self._keys()).signer
        pem = signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.decode("ascii")

    # -- verification --------------------------------------------------------

    async def verify(self) -> AuditVerifyReport:
        """Re-read every event in seq order, every checkpoint the vault lists and
        every checkpoint row; report each problem."""
        public_key = (await self._keys()).signer.public_key()
        async with self._sessions() as session:
            return await self._verify(session, public_key)

    async def _verify(
        self, session: AsyncSession, public_key: Ed25519PublicKey
    ) -> AuditVerifyReport:
        report = AuditVerifyReport()
        # Sealed statements and the vault first: a checkpoint committed meanwhile then
        # shows up among the rows too, and is not mistaken for a removed one.
        statement_ids = set(
            await session.scalars(
                select(SealedObject.id).where(SealedObject.kind == CHECKPOINT_KIND)
            )
        )
        anchors = await self._vault_anchors(public_key, report)
        checkpoints = list(
            await session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))
        )
        by_seq = {cp.seq: cp for cp in checkpoints}
        report.checkpoints, report.anchors = len(checkpoints), len(anchors)
        # The vault's when it has any: rows count alone only for checkpoints sealed
        # before their object keys named them.
        report.last_checkpoint_seq = max(anchors or by_seq or [0])
        chain = _ChainCheck(report)
        mismatched: set[int] = set()
        async for batch in _stream(session, select(AuditEvent)):
            for event in batch:
                chain.feed(event)
                if report.unanchored_since is None and event.seq > report.last_checkpoint_seq:
                    report.unanchored_since = event.occurred_at
                cp = by_seq.pop(event.seq, None)
                anchor = anchors.get(event.seq)
                if cp is not None and cp.hash != event.hash:
                    signed = f"checkpoint hash {cp.hash}"
                elif anchor is not None and anchor.hash != event.hash:
                    signed = f"the vault's checkpoint {anchor.object_key} signed {anchor.hash}; it"
                else:
                    continue
                mismatched.add(event.seq)
                report.add(
                    event.seq,
                    "checkpoint_mismatch",
                    f"{signed} differs from the event's hash {event.hash}",
                )
        chain.finish()
        for seq in by_seq:
            report.add(
                seq,
                "checkpoint_mismatch",
                f"a checkpoint covers seq {seq}, but the chain has no event there "
                f"(it ends at seq {report.head_seq})",
            )
        newest = max(anchors, default=0)
        if newest > report.head_seq:
            report.add(
                report.head_seq + 1,
                "truncated",
                f"the chain ends at seq {report.head_seq}, but the vault holds a checkpoint "
                f"of seq {newest}: events {report.head_seq + 1}..{newest} were removed",
            )
        for cp in checkpoints:
            await self._check_checkpoint(session, cp, public_key, report)
        removed = set()
        for object_id in sorted(statement_ids - {cp.object_id for cp in checkpoints}):
            statement = await self._read_statement(session, object_id)
            if isinstance(statement, str):
                report.add(
                    0, "checkpoint_removed", f"sealed checkpoint object {object_id}: {statement}"
                )
            else:
                removed.add(statement.seq)
                report.add(
                    statement.seq,
                    "checkpoint_removed",
                    f"sealed checkpoint of seq {statement.seq} (object {object_id}) has no row",
                )
        for seq in sorted(anchors.keys() - {cp.seq for cp in checkpoints} - removed):
            report.add(
                seq,
                "checkpoint_removed",
                f"the vault holds checkpoint {anchors[seq].object_key}, the database no row",
            )
        report.problems.sort(key=lambda p: (p.seq, p.kind))
        return report

    async def _vault_anchors(
        self, public_key: Ed25519PublicKey, report: AuditVerifyReport
    ) -> dict[int, Anchor]:
        """The well-signed checkpoints of the vault's own listing, by seq; the others
        are reported."""
        anchors = {}
        for key in await self._vault.object_keys(f"{CHECKPOINT_KIND}/"):
            anchor = parse_anchor(key)
            if anchor is None:
                if not _UNNAMED_CHECKPOINT.fullmatch(key.rpartition("/")[2]):
                    report.add(0, "anchor_invalid", f"{key} does not name a checkpoint")
            elif not anchor_signed(anchor, public_key):
                report.add(anchor.seq, "anchor_invalid", f"{key} is not signed by the audit key")
            else:
                anchors[anchor.seq] = anchor
        return anchors

    async def _check_checkpoint(
        self,
        session: AsyncSession,
        cp: AuditCheckpoint,
        public_key: Ed25519PublicKey,
        report: AuditVerifyReport,
    ) -> None:
        if cp.public_key != _public_hex(public_key):
            report.add(cp.seq, "checkpoint_key", f"checkpoint names key {cp.public_key[:16]}…")
        try:
            public_key.verify(bytes.fromhex(cp.signature), checkpoint_message(cp.seq, cp.hash))
        except (InvalidSignature, ValueError):
            report.add(
                cp.seq, "checkpoint_signature", "signature does not verify with the audit key"
            )
        statement = await self._read_statement(session, cp.object_id)
        if isinstance(statement, str):
            report.add(cp.seq, "checkpoint_statement", statement)
            return
        differs = [
            name
            for name, row_value, sealed_value in (
                ("seq", cp.seq, statement.seq),
                ("hash", cp.hash, statement.hash),
                ("signature", cp.signature, statement.signature),
                ("public_key", cp.public_key, statement.public_key),
                ("created_at", format_time(cp.created_at), statement.created_at),
            )
            if row_value != sealed_value
        ]
        if differs:
            report.add(
                cp.seq,
                "checkpoint_statement",
                f"the sealed statement differs from the row in {', '.join(differs)}",
            )

    async def _read_statement(
        self, session: AsyncSession, object_id: int
    ) -> CheckpointStatement | str:
        """The sealed statement, or why it cannot be read."""
        sealed = await session.get(SealedObject, object_id)
        if sealed is None:
            return f"sealed statement {object_id} is not recorded"
        if sealed.kind != CHECKPOINT_KIND:
            return f"object {sealed.object_key} is not a checkpoint statement"
        try:
            plaintext = await self._vault.open(session, sealed)
            return msgspec.json.decode(plaintext, type=CheckpointStatement)
        except (CryptoError, VaultError, msgspec.DecodeError) as exc:
            return f"sealed statement {sealed.object_key} cannot be read: {exc}"

    # -- auditor queries and exports ---------------------------------------

    async def query(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_seq: int | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Events matching every given filter, in seq order, at most ``limit`` (≤ 1000).

        ``action`` ending in ``*`` matches a prefix; ``since`` is inclusive and
        ``until`` exclusive; page on with ``after_seq`` = the last seq returned.
        """
        if limit < 1:
            raise InvalidInput("limit must be positive")
        statement = _filtered(actor, action, outcome, target, since, until, after_seq)
        limited = statement.order_by(AuditEvent.seq).limit(min(limit, _MAX_QUERY_LIMIT))
        await self.flush()  # a reader sees the events queued before it asked
        async with self._sessions() as session:
            return list(await session.scalars(limited))

    async def export(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_seq: int | None = None,
    ) -> tuple[bytes, bytes]:
        """Every matching event as JSONL (see :func:`export_line`; no details, only
        their digest) and a detached Ed25519 signature of exactly those bytes."""
        statement = _filtered(actor, action, outcome, target, since, until, after_seq)
        signer = (await self._keys()).signer
        await self.flush()
        lines: list[bytes] = []
        async with self._sessions() as session:
            async for batch in _stream(session, statement):
                lines.extend(export_line(event) for event in batch)
        jsonl = b"".join(lines)
        return jsonl, signer.sign(jsonl)


# -- helpers -------------------------------------------------------------------


def _lock_chain(session: Session) -> None:
    """Serialise appenders and checkpointers across processes until the transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK)))
    else:
        # SQLite takes its single write lock at the first write of a transaction;
        # an insert of no rows takes it before the head is read.
        session.execute(text("INSERT INTO audit_events SELECT * FROM audit_events WHERE 0"))


def _refuse_behind(head: int, floor: int, how: str) -> None:
    if head < floor:
        raise AuditChainBroken(
            f"the audit chain ends at seq {head}, behind seq {floor} {how}: "
            f"events {head + 1}..{floor} were removed"
        )


def _head_and_checkpoint(session: Session) -> tuple[int, str, int]:
    """The head's seq and hash (0 and the zero hash for an empty chain) and the seq
    of the last checkpoint (0 if none), in one query."""
    last_checkpoint = select(func.coalesce(func.max(AuditCheckpoint.seq), 0)).scalar_subquery()
    row = session.execute(
        select(AuditEvent.seq, AuditEvent.hash, last_checkpoint)
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    ).first()
    return (0, ZERO_HASH, 0) if row is None else (row[0], row[1], row[2])


def _filtered(
    actor: str | None,
    action: str | None,
    outcome: str | None,
    target: str | None,
    since: datetime | None,
    until: datetime | None,
    after_seq: int | None,
) -> Select[AuditEvent]:
    statement = select(AuditEvent)
    if actor is not None:
        statement = statement.where(AuditEvent.actor == actor)
    if action is not None and action.endswith("*"):
        prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = statement.where(AuditEvent.action.like(prefix + "%", escape="\\"))
    elif action is not None:
        statement = statement.where(AuditEvent.action == action)
    if outcome is not None:
        statement = statement.where(AuditEvent.outcome == outcome)
    if target is not None:
        statement = statement.where(AuditEvent.target == target)
    if since is not None:
        statement = statement.where(AuditEvent.occurred_at >= since)
    if until is not None:
        statement = statement.where(AuditEvent.occurred_at < until)
    if after_seq is not None:
        statement = statement.where(AuditEvent.seq > after_seq)
    return statement


async def _stream(
    session: AsyncSession, statement: Select[AuditEvent]
) -> AsyncIterator[list[AuditEvent]]:
    """Yield matching events in seq order, in batches, without keeping them in the session."""
    last = 0
    while True:
        batch = list(
            await session.scalars(
                statement.where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(_VERIFY_BATCH)
            )
        )
        if not batch:
            return
        for event in batch:
            session.expunge(event)
        last = batch[-1].seq
        yield batch


@dataclass(slots=True)
class _Run:
    start: int
    end: int
    offset: int


class _ChainCheck:
    """Walks the events in seq order and names what is wrong, and where."""

    def __init__(self, report: AuditVerifyReport) -> None:
        self._report = report
        self._prev: AuditEvent | None = None
        self._run: _Run | None = None
        self._suspects: list[AuditEvent] = []

    def feed(self, event: AuditEvent) -> None:
        report, prev = self._report, self._prev
        report.events += 1
        expected = 1 if prev is None else prev.seq + 1
        if event.seq < expected:
            report.add(event.seq, "duplicate", f"seq {event.seq} appears more than once")
        elif event.seq > expected:
            missing = f"{expected}" if event.seq == expected + 1 else f"{expected}..{event.seq - 1}"
            report.add(expected, "gap", f"events {missing} are missing")
        elif event.prev_hash != (ZERO_HASH if prev is None else prev.hash):
            if prev is not None and event.prev_hash == prev.prev_hash:
                report.add(
                    prev.seq,
                    "inserted",
                    f"seq {event.seq} links to the event before seq {prev.seq}, "
                    f"so seq {prev.seq} was put in between",
                )
            else:
                report.add(
                    event.seq,
                    "broken_link",
                    f"prev_hash is not the hash of seq {expected - 1}",
                )
        if chain_hash(event.prev_hash, canonical_bytes(event)) != event.hash:
            self._misfit(event)
        else:
            self._close_run()
        self._prev = event
        report.head_seq, report.head_hash = event.seq, event.hash

    def finish(self) -> None:
        """Report what needs the whole chain: renumbered runs, reorders, alterations."""
        self._close_run()
        for event in self._suspects:
            origin = self._origin(event)
            if origin is None:
                self._report.add(event.seq, "altered", "content does not match the event's hash")
            else:
                self._report.add(
                    event.seq, "reordered", f"holds the event that was written as seq {origin}"
                )

    def _misfit(self, event: AuditEvent) -> None:
        for offset in (-1, 1):
            if chain_hash(event.prev_hash, canonical_bytes(event, seq=event.seq + offset)) == (
                event.hash
            ):
                run = self._run
                if run is not None and run.offset == offset and run.end == event.seq - 1:
                    run.end = event.seq
                elif (
                    run is not None
                    and run.start == run.end == event.seq - 1
                    and (run.offset, offset) == (1, -1)
                ):
                    # Two neighbours that each hash as the other: a swap, not a shift.
                    self._run = None
                    for seq, origin in ((event.seq - 1, event.seq), (event.seq, event.seq - 1)):
                        self._report.add(
                            seq, "reordered", f"holds the event that was written as seq {origin}"
                        )
                else:
                    self._close_run()
                    self._run = _Run(event.seq, event.seq, offset)
                return
        self._close_run()
        if len(self._suspects) < _MAX_SUSPECTS:
            self._suspects.append(event)
        else:
            self._report.add(event.seq, "altered", "content does not match the event's hash")

    def _close_run(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        seqs = f"{run.start}" if run.start == run.end else f"{run.start}..{run.end}"
        written = f"{run.start + run.offset}" + (
            "" if run.start == run.end else f"..{run.end + run.offset}"
        )
        cause = "inserted" if run.offset < 0 else "removed"
        self._report.add(
            run.start,
            "renumbered",
            f"events {seqs} were written as seq {written}: an event was {cause} before them",
        )

    def _origin(self, event: AuditEvent) -> int | None:
        """The seq whose event ``event`` holds, among the other misfits."""
        for other in self._suspects:
            if other is event:
                continue
            moved = canonical_bytes(event, seq=other.seq)
            # Whole rows moved (links included), or only the event's fields.
            if chain_hash(event.prev_hash, moved) == event.hash:
                return other.seq
            if chain_hash(other.prev_hash, moved) == other.hash:
                return other.seq
        return None
