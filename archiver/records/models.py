"""Tables of records."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from archiver.core.db import BIGINT_PK, Base, UTCDateTime


class Contact(Base):
    """A data subject: one customer, known by one or more identities."""

    __tablename__ = "contacts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ContactIdentity(Base):
    """A blind token of one identity of a contact: its ``wa_id`` (E.164) or a
    business-scoped user id."""

    __tablename__ = "contact_identities"

    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    token: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id"), index=True)


class Record(Base):
    """One captured item: a message, echo, history item, status, edit, revoke,
    reaction or event. Its verbatim JSON is the sealed object ``object_id``.

    Meta's ids carry the customer's number, so the row holds only their blind
    tokens (``MetaIdIndex``, keyed per account): of the dedupe key, of the item's
    own message id and of the one it refers to (reaction, edit, revoke, reply).
    """

    __tablename__ = "records"

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    contact_id: Mapped[str | None] = mapped_column(ForeignKey("contacts.id"))
    dedupe_token: Mapped[bytes] = mapped_column(LargeBinary(16))
    kind: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(20))
    direction: Mapped[str] = mapped_column(String(10))
    item_type: Mapped[str] = mapped_column(String(64))
    wamid_token: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    related_wamid_token: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    status: Mapped[str | None] = mapped_column(String(20))
    # A failed status's Meta error code (a number, never personal), for search.
    error_code: Mapped[int | None] = mapped_column(Integer, index=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    has_media: Mapped[bool] = mapped_column(Boolean, default=False)
    forwarded: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    opens_window: Mapped[bool] = mapped_column(Boolean, default=False)
    journal_entry_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))
    # Each record has its own sealed object: the insert sentinel (see SealedObject).
    object_id: Mapped[int] = mapped_column(ForeignKey("sealed_objects.id"), insert_sentinel=True)
    # A keyed MAC of the metadata and the sealed object (archiver.records.binding); a
    # record without one fails its integrity check.
    binding: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (
        UniqueConstraint("account_id", "dedupe_token"),
        Index("ix_records_contact_time", "contact_id", "occurred_at"),
        Index("ix_records_account_time", "account_id", "occurred_at"),
        Index("ix_records_time", "occurred_at", "id"),
        # Every lookup of a message id is made within its account.
        Index("ix_records_account_wamid", "account_id", "wamid_token"),
        Index("ix_records_account_related_wamid", "account_id", "related_wamid_token"),
    )


class DeliveryState(Base):
    """The furthest delivery status seen for an outbound message (by the token of
    its wamid)."""

    __tablename__ = "delivery_states"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    wamid_token: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MediaItem(Base):
    """Media referenced by a record, fetched from the Graph API and sealed. Its
    Meta media id is read from the record's sealed item, never kept here."""

    __tablename__ = "media_items"

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True, autoincrement=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("records.id"), index=True)
    mime_type: Mapped[str | None] = mapped_column(String(200))
    expected_sha256: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(500))
    object_id: Mapped[int | None] = mapped_column(ForeignKey("sealed_objects.id"))
    size: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_media_items_due", "state", "next_attempt_at"),)
