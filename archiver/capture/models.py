"""Tables of capture."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from archiver.core.db import BIGINT_PK, Base, UTCDateTime


class JournalEntry(Base):
    """One verified webhook POST, sealed verbatim before it was acknowledged."""

    __tablename__ = "journal_entries"

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    object_id: Mapped[int] = mapped_column(ForeignKey("sealed_objects.id"))
    position: Mapped[int] = mapped_column(Integer)
    body_sha256: Mapped[str] = mapped_column(String(64), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    projected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    # Claimed by a projector until then (archiver.capture.services); None when free.
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_journal_entries_pending", "projected_at", "id"),)
