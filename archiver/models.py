"""Tables of the record core."""

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
    # Unique and chosen by us: SQLAlchemy can insert many rows in one statement on
    # SQLite and still tell which new id is whose (without it, one row at a time).
    object_key: Mapped[str] = mapped_column(String(300), unique=True, insert_sentinel=True)
    version_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40), index=True)
    key_id: Mapped[str] = mapped_column(String(40), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime())
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    sealed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Account(Base):
    """A WhatsApp business phone number whose conversations are captured.

    Secrets are kept sealed under the account's own subject key; the display
    number only as a blind token and a sealed copy.
    """

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    phone_number_id: Mapped[str] = mapped_column(String(64), unique=True)
    waba_id: Mapped[str | None] = mapped_column(String(64))
    display_phone_token: Mapped[bytes] = mapped_column(LargeBinary)
    display_phone_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    app_secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    verify_token_sha256: Mapped[str] = mapped_column(String(64))
    access_token_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


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
    # Claimed by a projector until then (archiver.capture); None when free.
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_journal_entries_pending", "projected_at", "id"),)


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
    # A keyed MAC of the metadata and the sealed object (archiver.binding); a
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


class User(Base):
    """A person who signs in to Strongroom (staff, auditors, regulators)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    username: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    totp_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    mfa_enrolled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(40))


class Grant(Base):
    """A role held by a user, on one business account or (``account_id`` NULL) on all."""

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"))
    granted_by: Mapped[str | None] = mapped_column(String(40))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    approval_id: Mapped[int | None] = mapped_column(ForeignKey("approvals.id"))


class ApiToken(Base):
    """A bearer token: the prefix identifies it, only an argon2id hash of the secret is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(40), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebSession(Base):
    """A signed-in console session; only a SHA-256 of the cookie value is kept."""

    __tablename__ = "web_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    mfa_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Approval(Base):
    """A maker-checker request: one user asks, a different user who holds the
    permission decides."""

    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(60), index=True)
    permission: Mapped[str] = mapped_column(String(60))
    account_id: Mapped[str | None] = mapped_column(String(40))
    payload: Mapped[str] = mapped_column(String(4000))
    status: Mapped[str] = mapped_column(String(20), index=True)
    requested_by: Mapped[str] = mapped_column(String(40))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(40))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(String(1000))


class AuditEvent(Base):
    """One append-only, hash-chained audit event."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(80), index=True)
    role: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(80), index=True)
    target: Mapped[str | None] = mapped_column(String(300))
    scope: Mapped[str | None] = mapped_column(String(300))
    outcome: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(500))
    request_id: Mapped[str | None] = mapped_column(String(64))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    details_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed statement of the chain head, sealed in the vault."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(200))
    public_key: Mapped[str] = mapped_column(String(100))
    object_id: Mapped[int] = mapped_column(ForeignKey("sealed_objects.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
