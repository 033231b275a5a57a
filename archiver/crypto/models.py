"""Tables of crypto."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    LargeBinary,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from archiver.core.db import Base, UTCDateTime


class SubjectKey(Base):
    """A data key for one subject (a contact, or an account's journal), wrapped
    by the root key. ``wrapped_key`` is emptied when the key is destroyed."""

    __tablename__ = "subject_keys"

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), unique=True)
    root_key_id: Mapped[str] = mapped_column(String(32), index=True)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
