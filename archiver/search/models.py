"""Tables of search."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    LargeBinary,
)
from sqlalchemy.orm import Mapped, mapped_column

from archiver.core.db import Base


class SearchToken(Base):
    """A blind-index token of a record's text.

    ``at`` is the record's ``occurred_at`` in microseconds since the epoch, so the
    key ``(token, at, record_id)`` lists a term's records in time order: the first
    page of a search reads only the first entries of its rarest term, and the other
    terms are point lookups. On SQLite the table is the key (WITHOUT ROWID).
    """

    __tablename__ = "search_tokens"
    __table_args__ = ({"sqlite_with_rowid": False},)

    token: Mapped[bytes] = mapped_column(LargeBinary(8), primary_key=True)
    at: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    record_id: Mapped[int] = mapped_column(ForeignKey("records.id"), primary_key=True)
