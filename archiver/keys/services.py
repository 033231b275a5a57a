"""Root key rotation as one unit of work.

Every live subject key is re-wrapped under the new root key and the
``keys.rotate`` audit event is appended in the same transaction: the trail says
a rotation happened exactly when the keys were re-wrapped. Only root key ids
(fingerprints, never key material) appear in the event.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.audit.services import DETAILS_SUBJECT, Actor, AuditLog
from archiver.core.db import Writer
from archiver.crypto.keyring import Keyring, root_key_id


@dataclass(frozen=True, slots=True)
class Rotated:
    """What a rotation did: how many subject keys it re-wrapped, and under which root."""

    rewrapped: int
    root_key_id: str


class KeyRotation:
    """Re-wraps the subject keys under a new root key, audited with the change."""

    def __init__(
        self,
        keyring: Keyring,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        audit: AuditLog,
    ) -> None:
        self._keyring = keyring
        self._sessions = sessions
        self._writer = writer
        self._audit = audit

    async def status(self) -> dict[str, int]:
        """How many live subject keys each root key wraps, and how many are destroyed."""
        async with self._sessions() as session:
            return await self._keyring.status(session)

    async def rotate(self, actor: Actor, new_root: bytes) -> Rotated:
        """Re-wrap every live subject key under ``new_root`` and record ``keys.rotate``
        in the same transaction; the caller then makes ``new_root`` the current key."""
        new_id = root_key_id(new_root)
        async with self._writer.transaction() as session:
            # The event's details key, created on the trail's first event, must exist
            # before the re-wrap: made after it, it would stay under the old root.
            await self._keyring.key_for(session, DETAILS_SUBJECT)
            count = await self._keyring.rotate(session, new_root)
            await self._audit.record_in(
                session,
                actor.entry(
                    "keys.rotate",
                    target=f"root-key:{new_id}",
                    reason=f"re-wrapped {count} subject keys (from root key "
                    f"{self._keyring.root_key_id})",
                ),
            )
        return Rotated(count, new_id)
