"""Keyring and vault against a real database (SQLite and PostgreSQL) and file store."""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.core.clock import FixedClock
from archiver.core.errors import CorruptionDetected, KeyDestroyed, KeyNotFound, RetentionViolation
from archiver.crypto.keyring import Keyring
from archiver.crypto.models import SubjectKey
from archiver.vault.filestore import FileStore
from archiver.vault.models import SealedObject
from archiver.vault.services import Vault

Sessions = async_sessionmaker[AsyncSession]


async def _seal(
    vault: Vault, sessions: Sessions, clock: FixedClock, subject: str, data: bytes
) -> SealedObject:
    async with sessions() as session, session.begin():
        return await vault.seal(
            session,
            kind="message",
            subject=subject,
            plaintext=data,
            retain_until=clock.now() + timedelta(days=365),
        )


async def test_seal_and_open_roundtrip(vault: Vault, sessions: Sessions, clock: FixedClock) -> None:
    record = await _seal(vault, sessions, clock, "contact:a", "明日の会議".encode())
    async with sessions() as session:
        stored = await session.get(SealedObject, record.id)
        assert stored is not None
        assert stored.size == record.size
        assert stored.retain_until == (clock.now() + timedelta(days=365)).replace(microsecond=0)
        assert await vault.open(session, stored) == "明日の会議".encode()


async def test_one_key_per_subject(keyring: Keyring, sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        first = await keyring.key_for(session, "contact:a")
        again = await keyring.key_for(session, "contact:a")
        other = await keyring.key_for(session, "contact:b")
    assert first == again
    assert first[0] != other[0]
    assert first[1] != other[1]


async def test_database_holds_no_plaintext_or_root_key(
    vault: Vault, sessions: Sessions, clock: FixedClock, root_key: bytes
) -> None:
    await _seal(vault, sessions, clock, "contact:a", b"secret body +4915123456789")
    dump = b""
    async with sessions() as session:
        for model in (SubjectKey, SealedObject):
            for row in (await session.execute(select(model.__table__))).all():
                dump += repr(tuple(row)).encode()
    assert b"sk_" in dump  # the dump really holds the rows
    assert b"secret body" not in dump
    assert b"4915123456789" not in dump
    assert root_key not in dump
    assert root_key.hex().encode() not in dump


async def test_crypto_shredding_makes_reads_fail(
    vault: Vault, keyring: Keyring, sessions: Sessions, clock: FixedClock, file_store: FileStore
) -> None:
    shredded = await _seal(vault, sessions, clock, "contact:a", b"to be erased")
    kept = await _seal(vault, sessions, clock, "contact:b", b"kept")
    before = file_store.get(shredded.object_key, shredded.version_id)
    async with sessions() as session, session.begin():
        await keyring.destroy(session, "contact:a")
    async with sessions() as session:
        with pytest.raises(KeyDestroyed):
            await vault.open(session, shredded)
        assert await vault.open(session, kept) == b"kept"
    # The WORM object itself is untouched.
    assert file_store.get(shredded.object_key, shredded.version_id) == before
    # New data for the same subject gets a fresh key.
    fresh = await _seal(vault, sessions, clock, "contact:a", b"after erasure")
    assert fresh.key_id != shredded.key_id
    async with sessions() as session:
        assert await vault.open(session, fresh) == b"after erasure"


async def test_root_rotation_rewraps_without_touching_objects(
    vault: Vault, sessions: Sessions, clock: FixedClock, file_store: FileStore, root_key: bytes
) -> None:
    records = [
        await _seal(vault, sessions, clock, f"contact:{i}", f"m{i}".encode()) for i in range(5)
    ]
    paths = [file_store.path_of(r.object_key) for r in records]
    before = [(p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in paths]
    async with sessions() as session:
        wrapped_before = {
            k.key_id: k.wrapped_key for k in await session.scalars(select(SubjectKey))
        }

    new_root = secrets.token_bytes(32)
    async with sessions() as session, session.begin():
        assert await vault.keyring.rotate(session, new_root) == 5

    assert [(p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in paths] == before
    rotated = Vault(file_store, Keyring([new_root], clock), clock)
    old_only = Vault(file_store, Keyring([root_key], clock), clock)
    async with sessions() as session:
        after = {k.key_id: k.wrapped_key for k in await session.scalars(select(SubjectKey))}
        assert after.keys() == wrapped_before.keys()
        assert all(after[k] != wrapped_before[k] for k in after)
        for i, record in enumerate(records):
            assert await rotated.open(session, record) == f"m{i}".encode()
        with pytest.raises(KeyNotFound, match="not loaded"):
            await old_only.open(session, records[0])


async def test_shortening_retention_is_refused(
    vault: Vault, sessions: Sessions, clock: FixedClock
) -> None:
    record = await _seal(vault, sessions, clock, "contact:a", b"x")
    async with sessions() as session, session.begin():
        row = await session.get(SealedObject, record.id)
        assert row is not None
        with pytest.raises(RetentionViolation, match="only be extended"):
            await vault.extend_retention(session, row, row.retain_until - timedelta(days=1))
        later = row.retain_until + timedelta(days=30)
        await vault.extend_retention(session, row, later)
    async with sessions() as session:
        row = await session.get(SealedObject, record.id)
        assert row is not None
        assert row.retain_until == later
        assert vault.store.lock_state(row.object_key, row.version_id).retain_until == later


class _PermissiveStore(FileStore):
    """A backend that, like moto, would accept a shortened retention."""

    def extend_retention(self, key, version_id, retain_until):  # type: ignore[no-untyped-def]  # test double
        self.shortened = True


async def test_vault_refuses_shortening_even_if_backend_allows(
    tmp_path: Path, keyring: Keyring, sessions: Sessions, clock: FixedClock
) -> None:
    store = _PermissiveStore(tmp_path / "permissive", clock)
    vault = Vault(store, keyring, clock)
    record = await _seal(vault, sessions, clock, "contact:a", b"x")
    async with sessions() as session:
        with pytest.raises(RetentionViolation):
            await vault.extend_retention(
                session, record, record.retain_until - timedelta(seconds=1)
            )
    assert not hasattr(store, "shortened")


async def test_open_detects_tampered_object(
    vault: Vault, sessions: Sessions, clock: FixedClock, file_store: FileStore
) -> None:
    record = await _seal(vault, sessions, clock, "contact:a", b"original")
    _tamper(file_store.path_of(record.object_key))
    async with sessions() as session:
        with pytest.raises(CorruptionDetected):
            await vault.open(session, record)


def _tamper(path: Path) -> None:
    """What a root user could do to a file vault: flip a byte in place."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


async def test_verify_reports_each_kind_of_drift(
    vault: Vault, sessions: Sessions, clock: FixedClock, file_store: FileStore
) -> None:
    clean, tampered_file, tampered_row, missing = [
        await _seal(vault, sessions, clock, f"contact:{i}", f"m{i}".encode()) for i in range(4)
    ]
    async with sessions() as session:
        report = await vault.verify(session)
    assert report.clean
    assert report.checked == 4

    _tamper(file_store.path_of(tampered_file.object_key))
    async with sessions() as session, session.begin():
        await session.execute(
            update(SealedObject)
            .where(SealedObject.id == tampered_row.id)
            .values(
                sha256=hashlib.sha256(b"forged").hexdigest(),
                retain_until=clock.now() + timedelta(days=1),
            )
        )
    path = file_store.path_of(missing.object_key)
    os.chmod(path.parent, 0o755)  # noqa: S103  (a root user undoing the store's read-only directory)
    path.unlink()

    async with sessions() as session:
        report = await vault.verify(session)
    found = {(d.object_key, d.problem) for d in report.drift}
    assert found == {
        (tampered_file.object_key, "sha256"),
        (tampered_row.object_key, "sha256"),
        (tampered_row.object_key, "retention"),
        (missing.object_key, "missing"),
    }
    assert clean.object_key not in {d.object_key for d in report.drift}
