"""The keyring: a root key wraps one data key per subject.

A subject is an opaque reference chosen by the caller (for example
``contact:<blind token>`` or ``journal:<account id>``); it never holds a phone
number. The root key lives only in memory; the database stores wrapped keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Sequence
from typing import cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Table, func, insert, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from archiver.core.clock import Clock
from archiver.core.errors import CorruptionDetected, KeyDestroyed, KeyNotFound
from archiver.crypto import envelope
from archiver.crypto.models import SubjectKey

ROOT_KEY_SIZE = 32
_WRAP_NONCE = 12


def root_key_id(root_key: bytes) -> str:
    """A public identifier for a root key that reveals nothing about it."""
    return hmac.new(root_key, b"strongroom root key id", hashlib.sha256).hexdigest()[:16]


def new_root_key() -> bytes:
    """Fresh random root key material."""
    return secrets.token_bytes(ROOT_KEY_SIZE)


class Keyring:
    """Creates, unwraps, destroys and re-wraps subject keys.

    ``root_keys`` lists the loaded root keys, the current one first; the others
    are kept only to unwrap keys during an interrupted rotation.
    """

    def __init__(self, root_keys: Sequence[bytes], clock: Clock) -> None:
        if not root_keys:
            raise ValueError("the keyring needs a root key")
        for key in root_keys:
            if len(key) != ROOT_KEY_SIZE:
                raise ValueError("root keys are 32 bytes")
        self._roots = {root_key_id(key): key for key in root_keys}
        self._current = root_key_id(root_keys[0])
        self._clock = clock

    @property
    def root_key_id(self) -> str:
        """The id of the current root key."""
        return self._current

    @property
    def loaded_root_key_ids(self) -> tuple[str, ...]:
        """Ids of every loaded root key, the current one first."""
        return tuple(self._roots)

    async def key_for(self, session: AsyncSession, subject: str) -> tuple[str, bytes]:
        """Return ``(key_id, key)`` for ``subject``, creating the key on first use."""
        row = await self._row_for_subject(session, subject)
        if row is None:
            row = await self._create(session, subject)
        return row.key_id, self._unwrap(row)

    def key_on(self, connection: Connection, subject: str) -> bytes:
        """The key of ``subject``, created on first use, through a bare ``connection``.

        For data migrations: it names only the columns that the table has had
        since its first revision, so it works on the schema of any of them.
        """
        table = cast(Table, SubjectKey.__table__)
        row = connection.execute(
            select(table.c.key_id, table.c.root_key_id, table.c.wrapped_key).where(
                table.c.subject == subject
            )
        ).one_or_none()
        if row is not None:
            return self._unwrap(
                SubjectKey(
                    key_id=row.key_id, root_key_id=row.root_key_id, wrapped_key=row.wrapped_key
                )
            )
        new = self._new_row(subject)
        connection.execute(
            insert(table).values(
                key_id=new.key_id,
                subject=subject,
                root_key_id=new.root_key_id,
                wrapped_key=new.wrapped_key,
                created_at=new.created_at,
            )
        )
        return self._unwrap(new)

    async def keys_for(
        self, session: AsyncSession, subjects: Iterable[str]
    ) -> dict[str, tuple[str, bytes]]:
        """:meth:`key_for` of several subjects with one query: ``subject → (key_id, key)``.

        Missing keys are added to ``session`` for the caller to commit; if another
        writer creates one of them first, that commit fails and can be retried.
        """
        wanted = set(subjects)
        rows = {
            row.subject: row
            for row in await session.scalars(
                select(SubjectKey).where(SubjectKey.subject.in_(wanted))
            )
        }
        for subject in wanted - rows.keys():
            rows[subject] = self._new_row(subject)
            session.add(rows[subject])
        return {subject: (row.key_id, self._unwrap(row)) for subject, row in rows.items()}

    async def key_by_id(self, session: AsyncSession, key_id: str) -> bytes:
        """Return the key with ``key_id``; raise ``KeyDestroyed`` or ``KeyNotFound``."""
        key = (await self.keys_by_id(session, [key_id]))[key_id]
        if key is None:
            raise KeyDestroyed(f"subject key {key_id} was destroyed")
        return key

    async def keys_by_id(
        self, session: AsyncSession, key_ids: Iterable[str]
    ) -> dict[str, bytes | None]:
        """Return each key of ``key_ids``, ``None`` for a destroyed one; raise
        ``KeyNotFound`` if one does not exist."""
        return await session.run_sync(self.read_keys, key_ids)

    def read_keys(self, session: Session, key_ids: Iterable[str]) -> dict[str, bytes | None]:
        """:meth:`keys_by_id` in a synchronous session."""
        wanted = set(key_ids)
        rows = session.scalars(
            select(SubjectKey)
            .where(SubjectKey.key_id.in_(wanted))
            .execution_options(populate_existing=True)
        )
        keys = {row.key_id: None if row.wrapped_key is None else self._unwrap(row) for row in rows}
        missing = wanted - keys.keys()
        if missing:
            raise KeyNotFound(f"no subject key {sorted(missing)[0]}")
        return keys

    async def destroy(self, session: AsyncSession, subject: str) -> str:
        """Destroy the subject's key (crypto-shredding) and return its id."""
        row = await self._row_for_subject(session, subject)
        if row is None:
            raise KeyNotFound("no key for that subject")
        row.wrapped_key = None
        row.destroyed_at = self._clock.now()
        # The subject name is freed so that new data for the same subject gets a
        # new key; the destroyed row keeps its id so old envelopes fail clearly.
        row.subject = f"destroyed:{row.key_id}"
        await session.flush()
        return row.key_id

    async def rotate(self, session: AsyncSession, new_root: bytes) -> int:
        """Re-wrap every live subject key under ``new_root``; objects are untouched.

        Returns the number of keys re-wrapped. The caller commits, then makes
        ``new_root`` the current root key.
        """
        new_id = root_key_id(new_root)
        wrapper = AESGCM(new_root)
        count = 0
        result = await session.stream_scalars(
            select(SubjectKey).where(SubjectKey.wrapped_key.is_not(None))
        )
        async for row in result:
            if row.root_key_id == new_id:
                continue
            raw = self._unwrap(row)
            row.wrapped_key = _wrap(wrapper, row.key_id, raw)
            row.root_key_id = new_id
            count += 1
        await session.flush()
        # This process can now read what it re-wrapped (the rest of the rotating
        # transaction, its audit event, reads subject keys); the current key, for
        # new subject keys, stays the same until the restart.
        self._roots.setdefault(new_id, new_root)
        return count

    async def status(self, session: AsyncSession) -> dict[str, int]:
        """Count subject keys per root key id, and destroyed keys."""
        counts: dict[str, int] = {}
        rows = await session.execute(
            select(SubjectKey.root_key_id, func.count())
            .where(SubjectKey.wrapped_key.is_not(None))
            .group_by(SubjectKey.root_key_id)
        )
        for kid, n in rows.tuples():
            counts[kid] = n
        destroyed = await session.scalar(
            select(func.count()).select_from(SubjectKey).where(SubjectKey.wrapped_key.is_(None))
        )
        counts["destroyed"] = destroyed or 0
        return counts

    async def _row_for_subject(self, session: AsyncSession, subject: str) -> SubjectKey | None:
        result = await session.scalars(select(SubjectKey).where(SubjectKey.subject == subject))
        return result.one_or_none()

    def _new_row(self, subject: str) -> SubjectKey:
        key_id = "sk_" + secrets.token_hex(12)
        raw = os.urandom(envelope.KEY_SIZE)
        return SubjectKey(
            key_id=key_id,
            subject=subject,
            root_key_id=self._current,
            wrapped_key=_wrap(AESGCM(self._roots[self._current]), key_id, raw),
            created_at=self._clock.now(),
        )

    async def _create(self, session: AsyncSession, subject: str) -> SubjectKey:
        row = self._new_row(subject)
        try:
            async with session.begin_nested():
                session.add(row)
        except DBIntegrityError:
            # Another writer created the subject's key first; use theirs.
            existing = await self._row_for_subject(session, subject)
            if existing is None:
                raise
            return existing
        return row

    def _unwrap(self, row: SubjectKey) -> bytes:
        if row.wrapped_key is None:
            raise KeyDestroyed(f"subject key {row.key_id} was destroyed")
        root = self._roots.get(row.root_key_id)
        if root is None:
            raise KeyNotFound(
                f"subject key {row.key_id} is wrapped by root key {row.root_key_id}, "
                "which is not loaded"
            )
        nonce, body = row.wrapped_key[:_WRAP_NONCE], row.wrapped_key[_WRAP_NONCE:]
        try:
            return AESGCM(root).decrypt(nonce, body, _wrap_aad(row.key_id))
        except InvalidTag as exc:
            raise CorruptionDetected(f"subject key {row.key_id} failed to unwrap") from exc


def _wrap_aad(key_id: str) -> bytes:
    return b"strongroom subject key:" + key_id.encode("ascii")


def _wrap(wrapper: AESGCM, key_id: str, raw: bytes) -> bytes:
    nonce = os.urandom(_WRAP_NONCE)
    return nonce + wrapper.encrypt(nonce, raw, _wrap_aad(key_id))
