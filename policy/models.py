"""Tables of outbound governance."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from archiver.core.db import BIGINT_PK, Base, UTCDateTime


class LexiconTerm(Base):
    """A sensitive term of the compliance lexicon, and what its presence does.

    Terms are policy configuration entered by compliance officers, not personal
    data, so they are kept in plaintext. A removed term keeps its row (who added
    and removed it, and when); only active terms must be unique once normalised.
    """

    __tablename__ = "lexicon_terms"

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True, autoincrement=True)
    term: Mapped[str] = mapped_column(String(200))
    normalized: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(10))
    added_by: Mapped[str] = mapped_column(String(80))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())
    removed_by: Mapped[str | None] = mapped_column(String(80))
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("action IN ('flag', 'hold', 'block')", name="action"),
        Index(
            "uq_lexicon_terms_active_normalized",
            "normalized",
            unique=True,
            sqlite_where=text("removed_at IS NULL"),
            postgresql_where=text("removed_at IS NULL"),
        ),
    )
