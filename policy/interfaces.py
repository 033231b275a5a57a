"""Seams through which policy uses the record core."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from archiver.whatsapp.items import Identity


class ContactResolver(Protocol):
    """Finds the contact an identity names, creating (and linking) it as needed;
    capture's ``Capture.resolve_contact`` is the implementation."""

    async def resolve_contact(
        self, session: AsyncSession, identities: list[Identity]
    ) -> str | None: ...
