"""Tables of the record core."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from archiver.db import BIGINT_PK, Base, UTCDateTime


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


class SealedObject(Base):
    """The database record of one sealed object in the vault."""

    __tablename__ = "sealed_objects"

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True, autoincrement=True)
    object_key: Mapped[str] = mapped_column(String(300), unique=True)
    version_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40), index=True)
    key_id: Mapped[str] = mapped_column(String(40), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime())
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    sealed_at: Mapped[datetime] = mapped_column(UTCDateTime())
