"""The audit chain on a real database (SQLite and PostgreSQL) and file vault:
appends, checkpoints, tampering of every kind, sealed details, concurrent
appenders, auditor queries and signed exports."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Executable, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from api.migrate import upgrade
from archiver.audit.jobs import anchor_audit
from archiver.audit.models import AuditCheckpoint, AuditEvent
from archiver.audit.services import (
    ZERO_HASH,
    AuditChainBroken,
    AuditEntry,
    AuditLog,
    AuditUnavailable,
    AuditVerifyReport,
    anchor_name,
    canonical_bytes,
    chain_hash,
    checkpoint_message,
    parse_anchor,
    verify_export,
)
from archiver.core.clock import FixedClock
from archiver.core.db import Base, Writer, create_engine, session_factory
from archiver.core.errors import CorruptionDetected, InvalidInput
from archiver.crypto.keyring import Keyring
from archiver.crypto.models import SubjectKey
from archiver.vault.models import SealedObject
from archiver.vault.services import Vault

Sessions = async_sessionmaker[AsyncSession]
EVENTS = Base.metadata.tables["audit_events"]
FIELDS = (
    "occurred_at",
    "actor",
    "actor_name",
    "role",
    "action",
    "target",
    "scope",
    "outcome",
    "reason",
    "request_id",
    "client_ip",
    "user_agent",
    "details_sealed",
)
SEARCH_TERM = "insider dealing Sheena Nelson"


@pytest.fixture
async def audit(
    sessions: Sessions, vault: Vault, keyring: Keyring, clock: FixedClock
) -> AsyncIterator[AuditLog]:
    log = AuditLog(sessions, vault, keyring, clock)
    yield log
    await log.close()


def _entry(i: int, **overrides: object) -> AuditEntry:
    values: dict[str, object] = {
        "actor": f"us_{i % 3}",
        "role": "compliance_officer",
        "action": "http.GET /api/v1/messages/{id}",
        "target": f"record:{i}",
        "scope": "account:ac_1",
        "outcome": "allowed",
        "request_id": f"req-{i}",
        "client_ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0",
    }
    values.update(overrides)
    return AuditEntry(**values)  # type: ignore[arg-type]  # test data, checked by the log


async def _fill(audit: AuditLog, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        await audit.record(_entry(i))
    await audit.flush()


async def _checkpoint(audit: AuditLog, sessions: Sessions) -> AuditCheckpoint:
    row = await audit.checkpoint()
    assert row is not None
    return row


async def _verify(audit: AuditLog, sessions: Sessions) -> AuditVerifyReport:
    return await audit.verify()


def _found(report: AuditVerifyReport) -> list[tuple[int, str]]:
    return [(p.seq, p.kind) for p in report.problems]


@asynccontextmanager
async def _as_dba(sessions: Sessions) -> AsyncIterator[AsyncSession]:
    """A session with the append-only triggers out of the way, as a DBA with full rights."""
    async with sessions() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        else:
            await session.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
            await session.execute(text("DROP TRIGGER IF EXISTS audit_events_no_delete"))
        yield session


async def _rechain(session: AsyncSession, start: int) -> None:
    """What a DBA who knows the algorithm does next: recompute every hash from ``start``."""
    prev = await session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == start - 1))
    prev = prev or ZERO_HASH
    rows = await session.scalars(
        select(AuditEvent).where(AuditEvent.seq >= start).order_by(AuditEvent.seq)
    )
    for event in rows:
        event.prev_hash = prev
        event.hash = prev = chain_hash(prev, canonical_bytes(event))
    await session.flush()


async def _shift(session: AsyncSession, start: int, by: int) -> None:
    """Renumber events from ``start`` on; in two steps so the primary key never collides."""
    await session.execute(update(EVENTS).where(EVENTS.c.seq >= start).values(seq=-EVENTS.c.seq))
    await session.execute(update(EVENTS).where(EVENTS.c.seq < 0).values(seq=by - EVENTS.c.seq))


async def _swap(session: AsyncSession, a: int, b: int, columns: Iterable[str]) -> None:
    names = list(columns)
    rows = {
        row.seq: row
        for row in (await session.execute(select(EVENTS).where(EVENTS.c.seq.in_([a, b])))).all()
    }
    for here, there in ((a, b), (b, a)):
        values = {name: getattr(rows[there], name) for name in names}
        await session.execute(update(EVENTS).where(EVENTS.c.seq == here).values(values))


# -- the chain ------------------------------------------------------------------


async def test_many_events_form_a_clean_chain(audit: AuditLog, sessions: Sessions) -> None:
    for i in range(1200):
        details = {"query": f"term {i}"} if i % 10 == 0 else None
        await audit.record(_entry(i, details=details))
    await audit.flush()

    report = await _verify(audit, sessions)
    assert report.ok, report.problems
    assert (report.events, report.head_seq) == (1200, 1200)
    async with sessions() as session:
        first = await session.get(AuditEvent, 1)
        seqs = list(await session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
    assert first is not None
    assert first.prev_hash == ZERO_HASH
    assert first.hash == chain_hash(ZERO_HASH, canonical_bytes(first))
    assert seqs == list(range(1, 1201))


async def test_record_durable_returns_after_commit(audit: AuditLog, sessions: Sessions) -> None:
    await audit.record_durable(_entry(1, action="http.GET /api/v1/messages/{id}/body"))
    async with sessions() as session:
        rows = list(await session.scalars(select(AuditEvent)))
    assert [(r.seq, r.action) for r in rows] == [(1, "http.GET /api/v1/messages/{id}/body")]


class _Refused(Exception):
    pass


async def _keys(sessions: Sessions, subject: str) -> int:
    async with sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(SubjectKey).where(SubjectKey.subject == subject)
        )
    return count or 0


async def test_an_event_recorded_in_a_transaction_commits_with_its_change(
    sessions: Sessions, vault: Vault, keyring: Keyring, clock: FixedClock, database_url: str
) -> None:
    writer = Writer(sessions, database_url)
    audit = AuditLog(sessions, vault, keyring, clock, writer=writer)
    try:
        await _fill(audit, 3)
        async with writer.transaction() as session:
            await keyring.key_for(session, "test:committed")
            await audit.record_in(session, _entry(3, details={"why": "kept"}))
        await _fill(audit, 2, start=4)

        report = await _verify(audit, sessions)
        assert report.ok, report.problems
        assert (report.events, report.head_seq) == (6, 6)
        assert await _keys(sessions, "test:committed") == 1
        async with sessions() as session:
            event = await session.get(AuditEvent, 4)
            assert event is not None
            assert event.target == "record:3"
            assert await audit.open_details(event) == {"why": "kept"}
    finally:
        await audit.close()
        await writer.close()


async def test_an_event_recorded_in_a_transaction_is_gone_if_the_change_is_rolled_back(
    sessions: Sessions, vault: Vault, keyring: Keyring, clock: FixedClock, database_url: str
) -> None:
    writer = Writer(sessions, database_url)
    audit = AuditLog(sessions, vault, keyring, clock, writer=writer)
    try:
        await _fill(audit, 2)

        async def refused_change() -> None:
            async with writer.transaction() as session:
                await keyring.key_for(session, "test:rolled-back")
                await audit.record_in(session, _entry(2))
                raise _Refused

        with pytest.raises(_Refused):
            await refused_change()
        await _fill(audit, 1, start=3)

        report = await _verify(audit, sessions)
        assert report.ok, report.problems
        assert (report.events, report.head_seq) == (3, 3)
        assert await _keys(sessions, "test:rolled-back") == 0
        async with sessions() as session:
            targets = list(
                await session.scalars(select(AuditEvent.target).order_by(AuditEvent.seq))
            )
        assert targets == ["record:0", "record:1", "record:3"]
    finally:
        await audit.close()
        await writer.close()


async def test_transactions_recording_at_once_and_queued_events_share_one_chain(
    sessions: Sessions, vault: Vault, keyring: Keyring, clock: FixedClock, database_url: str
) -> None:
    writer = Writer(sessions, database_url)
    audit = AuditLog(sessions, vault, keyring, clock, writer=writer)

    async def change(i: int) -> None:
        async with writer.transaction() as session:
            await audit.record_in(session, _entry(i))

    try:
        await asyncio.gather(
            *(change(i) for i in range(20)),
            *(audit.record(_entry(100 + i)) for i in range(20)),
        )
        await audit.flush()
        report = await _verify(audit, sessions)
        assert report.ok, report.problems
        assert (report.events, report.head_seq) == (40, 40)
    finally:
        await audit.close()
        await writer.close()


async def test_a_waiting_caller_ends_the_gathering_of_queued_events(
    audit: AuditLog, sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Events nobody waits for gather for a while to share one commit; a caller that
    # waits must not wait for that too. With an hour's gathering, only cutting it
    # short lets this finish.
    monkeypatch.setattr("archiver.audit.services._GATHER_SECONDS", 3600.0)
    await audit.record(_entry(1, action="http.POST /webhooks/whatsapp"))
    await asyncio.sleep(0)  # the writer starts gathering
    await asyncio.wait_for(audit.record_durable(_entry(2, action="export.release")), 60)
    async with sessions() as session:
        rows = list(await session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert [(r.seq, r.action) for r in rows] == [
        (1, "http.POST /webhooks/whatsapp"),
        (2, "export.release"),
    ]


async def test_occurred_at_defaults_to_the_clock(
    audit: AuditLog, sessions: Sessions, clock: FixedClock
) -> None:
    given = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    await audit.record_durable(_entry(1))
    await audit.record_durable(_entry(2, occurred_at=given))
    async with sessions() as session:
        times = list(await session.scalars(select(AuditEvent.occurred_at).order_by("seq")))
    assert times == [clock.now(), given]


async def test_entries_are_checked_and_cleaned(audit: AuditLog, sessions: Sessions) -> None:
    with pytest.raises(InvalidInput, match="outcome"):
        await audit.record(_entry(1, outcome="maybe"))
    with pytest.raises(InvalidInput, match="timezone"):
        await audit.record(_entry(1, occurred_at=datetime(2026, 1, 1)))  # noqa: DTZ001 - refused
    with pytest.raises(TypeError):
        await audit.record(_entry(1, details={"x": object()}))
    # A hostile header must not stop the event (or its batch) from being written.
    await audit.record_durable(_entry(1, actor="x" * 200, user_agent="curl\x00\ud800"))
    async with sessions() as session:
        row = await session.get(AuditEvent, 1)
    assert row is not None
    assert row.actor == "x" * 79 + "…"
    assert row.user_agent == "curl\ufffd?"


async def test_database_refuses_update_delete_and_truncate(
    audit: AuditLog, sessions: Sessions
) -> None:
    await _fill(audit, 3)
    statements: list[Executable] = [
        update(EVENTS).where(EVENTS.c.seq == 2).values(actor="someone else"),
        delete(EVENTS).where(EVENTS.c.seq == 2),
    ]
    async with sessions() as session:
        if session.get_bind().dialect.name == "postgresql":
            statements.append(text("TRUNCATE audit_events"))
    for statement in statements:
        async with sessions() as session:
            with pytest.raises(DBAPIError, match="append-only"):
                await session.execute(statement)
    report = await _verify(audit, sessions)
    assert report.ok
    assert report.events == 3


# -- tampering ------------------------------------------------------------------


async def test_altered_event_is_caught(audit: AuditLog, sessions: Sessions) -> None:
    await _fill(audit, 30)
    async with _as_dba(sessions) as session:
        await session.execute(update(EVENTS).where(EVENTS.c.seq == 7).values(outcome="denied"))
    assert _found(await _verify(audit, sessions)) == [(7, "altered")]


async def test_events_with_and_without_an_actor_name_form_one_chain(
    audit: AuditLog, sessions: Sessions
) -> None:
    await _fill(audit, 3)  # as every event was written before names were recorded
    for i in range(3, 6):
        await audit.record(_entry(i, actor_name=f"user{i}"))
    await audit.flush()
    async with sessions() as session:
        names = list(await session.scalars(select(AuditEvent.actor_name).order_by("seq")))
    assert names == [None, None, None, "user3", "user4", "user5"]
    report = await _verify(audit, sessions)
    assert (report.ok, report.events) == (True, 6)

    async with sessions() as session, session.begin():
        jsonl, signature = await audit.export()
        pem = await audit.public_key_pem()
    assert verify_export(jsonl, signature, pem)  # offline, with the names
    assert [json.loads(line).get("actor_name") for line in jsonl.splitlines()] == names


async def test_an_altered_actor_name_is_caught(audit: AuditLog, sessions: Sessions) -> None:
    await _fill(audit, 3)
    for i in range(3, 6):
        await audit.record(_entry(i, actor_name=f"user{i}"))
    await audit.flush()
    async with _as_dba(sessions) as session:
        for seq, name in ((2, "user2"), (4, "someone"), (5, None)):  # given, changed, removed
            await session.execute(update(EVENTS).where(EVENTS.c.seq == seq).values(actor_name=name))
    assert _found(await _verify(audit, sessions)) == [
        (2, "altered"),
        (4, "altered"),
        (5, "altered"),
    ]


async def test_altered_event_with_its_hash_recomputed_breaks_the_next_link(
    audit: AuditLog, sessions: Sessions
) -> None:
    await _fill(audit, 30)
    async with _as_dba(sessions) as session:
        event = await session.get(AuditEvent, 7)
        assert event is not None
        event.actor = "us_innocent"
        event.hash = chain_hash(event.prev_hash, canonical_bytes(event))
    assert _found(await _verify(audit, sessions)) == [(8, "broken_link")]


async def test_removed_event_is_caught(audit: AuditLog, sessions: Sessions) -> None:
    await _fill(audit, 30)
    async with _as_dba(sessions) as session:
        await session.execute(delete(EVENTS).where(EVENTS.c.seq.in_([5, 6])))
    report = await _verify(audit, sessions)
    assert _found(report) == [(5, "gap")]
    assert "5..6" in report.problems[0].detail


async def test_removed_event_with_the_rest_renumbered_is_caught(
    audit: AuditLog, sessions: Sessions
) -> None:
    await _fill(audit, 30)
    async with _as_dba(sessions) as session:
        await session.execute(delete(EVENTS).where(EVENTS.c.seq == 5))
        await _shift(session, 6, -1)
    report = await _verify(audit, sessions)
    assert _found(report) == [(5, "broken_link"), (5, "renumbered")]
    assert "5..29 were written as seq 6..30" in report.problems[1].detail


async def test_inserted_event_is_caught(audit: AuditLog, sessions: Sessions) -> None:
    await _fill(audit, 30)
    async with _as_dba(sessions) as session:
        await _shift(session, 6, 1)
        fifth = await session.get(AuditEvent, 5)
        assert fifth is not None
        forged = AuditEvent(
            seq=6,
            occurred_at=fifth.occurred_at,
            actor="us_1",
            action="http.POST /api/v1/holds/{id}/release",
            outcome="allowed",
            prev_hash=fifth.hash,
            hash="",
        )
        forged.hash = chain_hash(fifth.hash, canonical_bytes(forged))
        session.add(forged)
    assert _found(await _verify(audit, sessions)) == [(6, "inserted"), (7, "renumbered")]


@pytest.mark.parametrize("pair", [(4, 9), (4, 5)])
async def test_reordered_events_are_caught(
    audit: AuditLog, sessions: Sessions, pair: tuple[int, int]
) -> None:
    await _fill(audit, 30)
    a, b = pair
    async with _as_dba(sessions) as session:
        await _swap(session, a, b, FIELDS)
    assert _found(await _verify(audit, sessions)) == [(a, "reordered"), (b, "reordered")]


@pytest.mark.parametrize("pair", [(4, 9), (4, 5)])
async def test_reordered_whole_rows_are_caught(
    audit: AuditLog, sessions: Sessions, pair: tuple[int, int]
) -> None:
    await _fill(audit, 30)
    a, b = pair
    async with _as_dba(sessions) as session:
        await _swap(session, a, b, (*FIELDS, "prev_hash", "hash"))
    found = _found(await _verify(audit, sessions))
    assert {(a, "reordered"), (b, "reordered")} <= set(found)
    assert {kind for _, kind in found} == {"reordered", "broken_link"}
    assert found[0][0] == a


async def test_rewritten_chain_is_caught_by_its_checkpoint(
    audit: AuditLog, sessions: Sessions
) -> None:
    await _fill(audit, 30)
    checkpoint = await _checkpoint(audit, sessions)
    await _fill(audit, 10, start=30)
    async with _as_dba(sessions) as session:
        await session.execute(update(EVENTS).where(EVENTS.c.seq == 12).values(actor="us_other"))
        await _rechain(session, 12)
    # The chain itself is consistent again: only the signed checkpoint disagrees.
    assert _found(await _verify(audit, sessions)) == [(30, "checkpoint_mismatch")]

    # Rewriting the checkpoint row too needs a signature the DBA cannot make,
    # and the vault still holds the original, in its listing and sealed.
    forger = Ed25519PrivateKey.generate()
    async with sessions() as session, session.begin():
        row = await session.get(AuditCheckpoint, checkpoint.id)
        assert row is not None
        head = await session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == 30))
        assert head is not None
        row.hash = head
        row.signature = forger.sign(checkpoint_message(row.seq, row.hash)).hex()
        row.public_key = (
            forger.public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            .hex()
        )
    assert _found(await _verify(audit, sessions)) == [
        (30, "checkpoint_key"),
        (30, "checkpoint_mismatch"),
        (30, "checkpoint_signature"),
        (30, "checkpoint_statement"),
    ]


async def test_altered_checkpoint_is_caught(audit: AuditLog, sessions: Sessions) -> None:
    await _fill(audit, 30)
    checkpoint = await _checkpoint(audit, sessions)
    async with sessions() as session, session.begin():
        await session.execute(
            update(AuditCheckpoint).where(AuditCheckpoint.id == checkpoint.id).values(hash="f" * 64)
        )
    assert _found(await _verify(audit, sessions)) == [
        (30, "checkpoint_mismatch"),
        (30, "checkpoint_signature"),
        (30, "checkpoint_statement"),
    ]


async def test_forged_checkpoint_signature_is_caught(audit: AuditLog, sessions: Sessions) -> None:
    await _fill(audit, 30)
    checkpoint = await _checkpoint(audit, sessions)
    forged = Ed25519PrivateKey.generate().sign(checkpoint_message(30, checkpoint.hash)).hex()
    async with sessions() as session, session.begin():
        await session.execute(
            update(AuditCheckpoint)
            .where(AuditCheckpoint.id == checkpoint.id)
            .values(signature=forged)
        )
    report = await _verify(audit, sessions)
    assert _found(report) == [(30, "checkpoint_signature"), (30, "checkpoint_statement")]
    assert "signature" in report.problems[1].detail


async def test_removed_checkpoint_is_caught(audit: AuditLog, sessions: Sessions) -> None:
    await _fill(audit, 30)
    checkpoint = await _checkpoint(audit, sessions)
    async with sessions() as session, session.begin():
        await session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.id == checkpoint.id))
    assert _found(await _verify(audit, sessions)) == [(30, "checkpoint_removed")]


async def test_truncated_tail_is_caught_by_the_checkpoint(
    audit: AuditLog, sessions: Sessions
) -> None:
    await _fill(audit, 30)
    await _checkpoint(audit, sessions)
    async with _as_dba(sessions) as session:
        await session.execute(delete(EVENTS).where(EVENTS.c.seq >= 25))
    report = await _verify(audit, sessions)
    assert _found(report) == [(25, "truncated"), (30, "checkpoint_mismatch")]
    assert report.head_seq == 24


# -- checkpoints ----------------------------------------------------------------


async def test_checkpoints_are_signed_and_sealed(
    audit: AuditLog, sessions: Sessions, vault: Vault, clock: FixedClock
) -> None:
    assert await audit.checkpoint() is None  # nothing to sign yet
    await _fill(audit, 5)
    checkpoint = await _checkpoint(audit, sessions)
    assert await audit.checkpoint() is None  # the head has not moved
    async with sessions() as session, session.begin():
        pem = await audit.public_key_pem()
        sealed = await session.get(SealedObject, checkpoint.object_id)
    key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(key, Ed25519PublicKey)
    key.verify(bytes.fromhex(checkpoint.signature), checkpoint_message(5, checkpoint.hash))
    # The vault's own listing states the checkpoint, write-once for ten years.
    (object_key,) = await vault.object_keys("audit-checkpoint/")
    assert sealed is not None
    assert sealed.object_key == object_key
    assert object_key.endswith(f"/{5:020d}-{checkpoint.hash}-{checkpoint.signature}")
    lock = vault.store.lock_state(object_key, sealed.version_id)
    assert lock.retain_until is not None
    assert lock.retain_until.year == clock.now().year + 10


async def test_checkpoint_due_follows_the_clock(
    audit: AuditLog, sessions: Sessions, clock: FixedClock
) -> None:
    assert await audit.checkpoint_due() is None  # no events
    await _fill(audit, 3)
    first = await audit.checkpoint_due()  # the first events are anchored at once
    assert first is not None
    assert first.seq == 3
    await _fill(audit, 2, start=3)
    clock.advance(timedelta(seconds=9.9))
    assert await audit.checkpoint_due() is None  # the last one is recent
    clock.advance(timedelta(seconds=0.1))
    second = await audit.checkpoint_due()  # 10 s on, with new events: anchored
    assert second is not None
    assert second.seq == 5
    clock.advance(timedelta(seconds=60))
    assert await audit.checkpoint_due() is None  # no new events, nothing to anchor
    report = await _verify(audit, sessions)
    assert (report.ok, report.anchors, report.last_checkpoint_seq) == (True, 2, 5)


async def test_checkpoint_due_follows_the_database_not_the_process(
    audit: AuditLog, sessions: Sessions, vault: Vault, keyring: Keyring, clock: FixedClock
) -> None:
    # A restarted worker (a fresh log) and a second one (another log beside it)
    # keep the timeline of the newest checkpoint in the database.
    def restarted() -> AuditLog:
        return AuditLog(sessions, vault, keyring, clock)

    await _fill(audit, 3)
    assert (await _checkpoint(audit, sessions)).seq == 3
    await _fill(audit, 2, start=3)
    clock.advance(timedelta(seconds=9.9))
    for log in (audit, restarted()):
        assert await log.checkpoint_due() is None  # the last one is recent, for every log
    clock.advance(timedelta(seconds=0.1))
    second = await restarted().checkpoint_due()  # 10 s on, with new events: anchored
    assert second is not None
    assert second.seq == 5
    await _fill(audit, 1, start=5)
    clock.advance(timedelta(seconds=5))
    for log in (audit, restarted()):
        assert await log.checkpoint_due() is None  # the other log's checkpoint is recent
    clock.advance(timedelta(seconds=5))
    third = await audit.checkpoint_due()
    assert third is not None
    assert third.seq == 6
    clock.advance(timedelta(seconds=60))
    for log in (audit, restarted()):
        assert await log.checkpoint_due() is None  # no new events, nothing to anchor
    report = await _verify(audit, sessions)
    assert (report.ok, report.anchors, report.last_checkpoint_seq) == (True, 3, 6)


# -- anchoring in the vault ------------------------------------------------------


async def _delete_rows(session: AsyncSession, *, events_from: int) -> None:
    """What the probe's DBA did, and more: remove the newest events, then every
    checkpoint row and its sealed-object record, so only the vault remembers."""
    await session.execute(delete(EVENTS).where(EVENTS.c.seq >= events_from))
    await session.execute(delete(AuditCheckpoint))
    await session.execute(delete(SealedObject).where(SealedObject.kind == "audit-checkpoint"))


async def test_the_newest_events_cannot_be_removed_unseen(
    audit: AuditLog, sessions: Sessions, clock: FixedClock
) -> None:
    await _fill(audit, 30)
    assert await audit.checkpoint_due() is not None
    await _fill(audit, 100, start=30)
    clock.advance(timedelta(seconds=10))
    assert (await _checkpoint(audit, sessions)).seq == 130
    async with _as_dba(sessions) as session:
        await _delete_rows(session, events_from=31)
    report = await _verify(audit, sessions)
    assert _found(report) == [
        (30, "checkpoint_removed"),
        (31, "truncated"),
        (130, "checkpoint_removed"),
    ]
    assert "events 31..130 were removed" in report.problems[1].detail


async def test_a_chain_continued_from_behind_the_anchor_is_caught(
    audit: AuditLog, sessions: Sessions
) -> None:
    await _fill(audit, 40)
    await _checkpoint(audit, sessions)
    async with _as_dba(sessions) as session:
        await _delete_rows(session, events_from=31)
        # Numbered on from the cut, past the anchor, every hash recomputed.
        rows = (await session.execute(select(EVENTS).where(EVENTS.c.seq <= 20))).all()
        await session.execute(
            EVENTS.insert(), [{**row._asdict(), "seq": row.seq + 30} for row in rows]
        )
        await _rechain(session, 31)
    report = await _verify(audit, sessions)
    assert report.head_seq == 50
    assert _found(report) == [(40, "checkpoint_mismatch"), (40, "checkpoint_removed")]


async def test_rewritten_or_reordered_anchored_events_are_caught_without_rows(
    audit: AuditLog, sessions: Sessions
) -> None:
    await _fill(audit, 30)
    await _checkpoint(audit, sessions)
    async with _as_dba(sessions) as session:
        await _swap(session, 5, 6, FIELDS)
        await _rechain(session, 5)
        await _delete_rows(session, events_from=31)
    assert _found(await _verify(audit, sessions)) == [
        (30, "checkpoint_mismatch"),
        (30, "checkpoint_removed"),
    ]


async def test_a_chain_behind_its_anchor_is_never_continued(
    audit: AuditLog,
    sessions: Sessions,
    vault: Vault,
    keyring: Keyring,
    clock: FixedClock,
) -> None:
    await _fill(audit, 50)
    await _checkpoint(audit, sessions)
    async with _as_dba(sessions) as session:
        await _delete_rows(session, events_from=41)
    restarted = AuditLog(sessions, vault, keyring, clock)  # knows only what the vault says
    try:
        for log in (audit, restarted):
            with capture_logs() as logs:
                with pytest.raises(AuditUnavailable) as refused:
                    await log.record_durable(_entry(1))
                await log.record(_entry(2))
                await log.flush()
            assert "events 41..50 were removed" in str(refused.value.__cause__)
            assert [e["event"] for e in logs if e["log_level"] == "error"] == [
                "audit chain cut; appends refused",
                "audit chain cut; appends refused",
                "audit events lost",
            ]
            with pytest.raises(AuditChainBroken):
                await log.checkpoint()
        with capture_logs() as logs:
            await anchor_audit(restarted)
        assert [e["event"] for e in logs] == ["audit chain cut; not checkpointed"]
    finally:
        await restarted.close()
    async with sessions() as session:
        assert await session.scalar(select(func.max(AuditEvent.seq))) == 40
    anchored = [parse_anchor(key) for key in await vault.object_keys("audit-checkpoint/")]
    assert [anchor.seq for anchor in anchored if anchor] == [50]  # nothing new was signed


async def test_forged_anchors_in_the_vault_are_reported(
    audit: AuditLog, sessions: Sessions, vault: Vault, clock: FixedClock
) -> None:
    await _fill(audit, 10)
    checkpoint = await _checkpoint(audit, sessions)
    forged = Ed25519PrivateKey.generate().sign(checkpoint_message(20, "a" * 64)).hex()
    retain = clock.now() + timedelta(days=1)
    for name in (anchor_name(20, "a" * 64, forged), "not-a-checkpoint"):
        vault.store.put(f"audit-checkpoint/2026/11/21/{name}", b"x", retain_until=retain)
    report = await _verify(audit, sessions)
    assert _found(report) == [(0, "anchor_invalid"), (20, "anchor_invalid")]
    # A forged anchor neither hides the tail nor counts as one.
    assert (report.anchors, report.last_checkpoint_seq) == (1, checkpoint.seq)


async def test_verify_reports_the_unanchored_tail(
    audit: AuditLog, sessions: Sessions, clock: FixedClock
) -> None:
    await _fill(audit, 10)
    await _checkpoint(audit, sessions)
    clock.advance(timedelta(seconds=3))
    oldest = clock.now()
    await _fill(audit, 4, start=10)
    clock.advance(timedelta(seconds=5))
    await _fill(audit, 3, start=14)
    report = await _verify(audit, sessions)
    assert report.ok, report.problems
    assert (report.unanchored, report.unanchored_since) == (7, oldest)
    await _checkpoint(audit, sessions)
    report = await _verify(audit, sessions)
    assert (report.unanchored, report.unanchored_since) == (0, None)


# -- sealed details -------------------------------------------------------------


async def test_details_are_sealed_and_bound_to_their_event(
    audit: AuditLog, sessions: Sessions
) -> None:
    await audit.record_durable(
        _entry(1, action="http.GET /api/v1/search", details={"query": SEARCH_TERM})
    )
    await audit.record_durable(_entry(2, details={"query": "other"}))
    await audit.record_durable(_entry(3))
    async with sessions() as session:
        rows = (await session.execute(select(EVENTS).order_by(EVENTS.c.seq))).all()
        dump = repr([tuple(row) for row in rows])
        assert rows[0].details_sealed is not None
        assert SEARCH_TERM.encode() not in rows[0].details_sealed
        assert "insider" not in dump
        assert "Sheena" not in dump
        events = list(await session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        assert await audit.open_details(events[0]) == {"query": SEARCH_TERM}
        assert await audit.open_details(events[2]) is None

    async with _as_dba(sessions) as session:
        await session.execute(
            update(EVENTS).where(EVENTS.c.seq == 2).values(details_sealed=rows[0].details_sealed)
        )
    async with sessions() as session:
        moved = await session.get(AuditEvent, 2)
        assert moved is not None
        with pytest.raises(CorruptionDetected):
            await audit.open_details(moved)
    assert _found(await _verify(audit, sessions)) == [(2, "altered")]


# -- concurrency ----------------------------------------------------------------


async def test_concurrent_appenders_form_one_chain(
    audit: AuditLog,
    sessions: Sessions,
    database_url: str,
    vault: Vault,
    keyring: Keyring,
    clock: FixedClock,
) -> None:
    other_engine = create_engine(database_url)
    other = AuditLog(session_factory(other_engine), vault, keyring, clock)
    try:

        async def burst(log: AuditLog, name: str, rounds: int) -> None:
            for r in range(rounds):
                await asyncio.gather(
                    *(log.record_durable(_entry(i, actor=name)) for i in range(20)),
                    *(log.record(_entry(i, actor=name, details={"r": r})) for i in range(10)),
                    log.checkpoint(),  # both anchor the moving head as they append
                )

        with capture_logs() as logs:
            await asyncio.gather(burst(audit, "us_a", 10), burst(other, "us_b", 10))
            await asyncio.gather(audit.flush(), other.flush())
    finally:
        await other.close()
        await other_engine.dispose()

    # Appenders wait for each other rather than collide and retry.
    assert [e for e in logs if e["log_level"] != "info"] == []
    report = await _verify(audit, sessions)
    assert report.ok, report.problems
    assert report.events == 600
    assert report.checkpoints >= 1
    async with sessions() as session:
        rows = await session.execute(select(AuditEvent.actor, func.count()).group_by("actor"))
        counts = {actor: count for actor, count in rows}
    assert counts == {"us_a": 300, "us_b": 300}


_APPENDER = """
import asyncio, sys
from pathlib import Path
from archiver.audit.services import AuditEntry, AuditLog
from archiver.core.clock import SystemClock
from archiver.core.db import Base, Writer, create_engine, session_factory
from archiver.vault.filestore import FileStore
from archiver.crypto.keyring import Keyring
from archiver.crypto.models import SubjectKey
from archiver.vault.services import Vault

async def main(url: str, store: str, root: str, name: str) -> None:
    engine = create_engine(url)
    clock = SystemClock()
    keyring = Keyring([bytes.fromhex(root)], clock)
    vault = Vault(FileStore(Path(store), clock), keyring, clock)
    log = AuditLog(session_factory(engine), vault, keyring, clock)
    for _ in range(8):
        await asyncio.gather(*(
            log.record_durable(AuditEntry(actor=name, action="job.test", outcome="ok"))
            for _ in range(25)
        ))
        await log.checkpoint()
    await log.close()
    await engine.dispose()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_two_processes_form_one_chain(
    audit: AuditLog, sessions: Sessions, database_url: str, root_key: bytes, tmp_path: Path
) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _APPENDER,
            database_url,
            str(tmp_path / "vault"),
            root_key.hex(),
            name,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for name in ("proc_a", "proc_b")
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr.decode()
        assert b"append failed" not in stdout, stdout.decode()
    report = await _verify(audit, sessions)
    assert report.ok, report.problems
    assert report.events == 400
    assert report.checkpoints >= 1


async def test_record_durable_fails_loudly_when_nothing_can_be_written(
    tmp_path: Path, vault: Vault, keyring: Keyring, clock: FixedClock
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'not-migrated.db'}")
    log = AuditLog(session_factory(engine), vault, keyring, clock)
    try:
        with pytest.raises(AuditUnavailable):
            await log.record_durable(_entry(1))
    finally:
        await log.close()
        await engine.dispose()


async def _logged(logs: Sequence[Mapping[str, object]], event: str) -> None:
    """Wait (at most 10 s) until *event* has been logged."""
    for _ in range(1000):
        if event in [e["event"] for e in logs]:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{event!r} was not logged within 10 s")


async def test_queued_events_survive_a_database_outage(
    tmp_path: Path, vault: Vault, keyring: Keyring, clock: FixedClock
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'late.db'}"
    engine = create_engine(url)
    log = AuditLog(session_factory(engine), vault, keyring, clock)
    try:
        with capture_logs() as logs:
            await log.record(_entry(1))
            await _logged(logs, "audit append failed")  # the first attempt finds no tables
            await asyncio.to_thread(upgrade, url)
            await log.flush()
        assert "audit events lost" not in [e["event"] for e in logs]
        report = await log.verify()
        assert report.ok
        assert report.events == 1
    finally:
        await log.close()
        await engine.dispose()


# -- auditor queries and exports --------------------------------------------------


async def _varied(audit: AuditLog, clock: FixedClock) -> None:
    for i in range(10):
        await audit.record(_entry(i, actor="us_a"))
        clock.advance(timedelta(minutes=1))
    for i in range(5):
        await audit.record(
            _entry(i, actor="us_b", action="http.POST /api/v1/exports", outcome="denied")
        )
        clock.advance(timedelta(minutes=1))
    for action in ("job.fetch_media", "job.fetch_media", "job.fetchXmedia"):
        await audit.record(
            _entry(0, actor="system", action=action, outcome="failed", target="record:7")
        )
        clock.advance(timedelta(minutes=1))
    await audit.record(_entry(0, action="http.GET /api/v1/search", details={"query": SEARCH_TERM}))
    await audit.flush()


async def test_query_filters(audit: AuditLog, sessions: Sessions, clock: FixedClock) -> None:
    start = clock.now()
    await _varied(audit, clock)

    async def seqs(**filters: object) -> list[int]:
        events = await audit.query(**filters)  # type: ignore[arg-type]  # filters of mixed types in one dict
        return [e.seq for e in events]

    assert await seqs(actor="us_b") == [11, 12, 13, 14, 15]
    assert await seqs(outcome="denied") == [11, 12, 13, 14, 15]
    assert await seqs(action="http.POST /api/v1/exports") == [11, 12, 13, 14, 15]
    assert len(await seqs(action="http.*")) == 16
    assert await seqs(action="job.fetch_*") == [16, 17]  # "_" is not a wildcard
    assert await seqs(target="record:7") == [8, 16, 17, 18]
    window = await seqs(since=start + timedelta(minutes=2), until=start + timedelta(minutes=4))
    assert window == [3, 4]
    assert await seqs(actor="us_a", since=start + timedelta(minutes=8)) == [9, 10]
    assert await seqs(actor="nobody") == []
    with pytest.raises(InvalidInput, match="limit"):
        await seqs(limit=0)


async def test_query_pages_by_seq(audit: AuditLog, sessions: Sessions, clock: FixedClock) -> None:
    await _varied(audit, clock)
    pages: list[list[int]] = []
    after: int | None = None
    while page := await audit.query(action="http.*", after_seq=after, limit=4):
        pages.append([e.seq for e in page])
        after = page[-1].seq
    assert [len(p) for p in pages] == [4, 4, 4, 4]
    assert [s for p in pages for s in p] == [*range(1, 16), 19]


async def test_export_is_signed_and_verifiable(
    audit: AuditLog, sessions: Sessions, clock: FixedClock
) -> None:
    await _varied(audit, clock)
    async with sessions() as session, session.begin():
        everything, signature = await audit.export()
        denied, denied_signature = await audit.export(outcome="denied")
        pem = await audit.public_key_pem()

    assert verify_export(everything, signature, pem)
    assert verify_export(denied, denied_signature, pem)
    lines = everything.splitlines()
    assert len(lines) == 19
    assert len(denied.splitlines()) == 5
    # Details stay sealed: only their digest shows that there were some.
    assert SEARCH_TERM.encode() not in everything
    assert b'"details_sha256":"' in lines[-1]
    assert b'"details_sha256":null' in lines[0]
    # A complete export carries the chain, so it can be re-verified offline.
    links = [(fields["prev_hash"], fields["hash"]) for fields in map(json.loads, lines)]
    assert links[0][0] == ZERO_HASH
    assert all(b[0] == a[1] for a, b in itertools.pairwise(links))

    for position in (0, len(everything) // 2, len(everything) - 2):
        tampered = bytearray(everything)
        tampered[position] ^= 0x20
        assert not verify_export(bytes(tampered), signature, pem)
    assert not verify_export(everything, denied_signature, pem)
