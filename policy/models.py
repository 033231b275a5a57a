"""Tables of outbound governance."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
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


class PolicySettingsRow(Base):
    """An account's send policy (``policy.decision.PolicySettings`` as JSON).

    ``version`` counts its changes; every decision names the versions it saw.
    """

    __tablename__ = "policy_settings"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    settings: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    updated_by: Mapped[str] = mapped_column(String(80))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ConsentEntry(Base):
    """One entry of the consent ledger: a contact opted in to or out of a category.

    Append-only. The entry as a whole (who, when, how, the evidence text, the
    source record) is the sealed object ``object_id``, under the contact's key;
    the row holds what the rules query, none of it personal.
    """

    __tablename__ = "consent_entries"

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True, autoincrement=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id"))
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"))
    category: Mapped[str] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(10))
    method: Mapped[str] = mapped_column(String(30))
    recorded_by: Mapped[str] = mapped_column(String(80))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    source_record_id: Mapped[int | None] = mapped_column(ForeignKey("records.id"))
    object_id: Mapped[int] = mapped_column(ForeignKey("sealed_objects.id"))

    __table_args__ = (
        CheckConstraint(
            "category IN ('marketing', 'utility', 'authentication', 'service')", name="category"
        ),
        CheckConstraint("action IN ('opt_in', 'opt_out')", name="action"),
        Index("ix_consent_entries_contact", "contact_id", "category", "occurred_at"),
        # A webhook or message is turned into consent once, however often it is replayed.
        Index(
            "uq_consent_entries_source",
            "source_record_id",
            "category",
            unique=True,
            sqlite_where=text("source_record_id IS NOT NULL"),
            postgresql_where=text("source_record_id IS NOT NULL"),
        ),
    )


class MessageTemplate(Base):
    """A message template of a WhatsApp Business Account, with both its approvals.

    Templates are the firm's own wording, not personal data, so they are kept in
    plaintext. ``status`` is ours (draft, submitted, approved, rejected: the maker
    and the checker are different people); ``meta_status`` is Meta's, kept from
    its webhooks.
    """

    __tablename__ = "message_templates"

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True, autoincrement=True)
    waba_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(512))
    language: Mapped[str] = mapped_column(String(20))
    category: Mapped[str] = mapped_column(String(20))
    components: Mapped[str] = mapped_column(Text)  # JSON, as Meta's API takes them
    parameters: Mapped[str] = mapped_column(Text)  # JSON: [{"name", "type"}]
    status: Mapped[str] = mapped_column(String(20))
    meta_status: Mapped[str | None] = mapped_column(String(20))
    meta_template_id: Mapped[str | None] = mapped_column(String(64))
    quality: Mapped[str | None] = mapped_column(String(20))
    created_by: Mapped[str] = mapped_column(String(80))
    submitted_by: Mapped[str | None] = mapped_column(String(80))
    decided_by: Mapped[str | None] = mapped_column(String(80))
    decision_comment: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("waba_id", "name", "language"),
        CheckConstraint("status IN ('draft', 'submitted', 'approved', 'rejected')", name="status"),
    )


class OutboxItem(Base):
    """One outbound message, from any source, and where it is on its way.

    Its content and recipient are the sealed object ``content_object_id``, under
    the recipient's key; ``decision`` is the latest decision as JSON (codes,
    parameters and sentences, no personal data). Once sent, ``wamid_token`` links
    it to Meta's message id and ``record_id`` to the archived record.
    """

    __tablename__ = "outbox_items"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    source: Mapped[str] = mapped_column(String(20))
    sender_id: Mapped[str] = mapped_column(String(80))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id"))
    recipient_region: Mapped[str | None] = mapped_column(String(4))
    recipient_zone: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))
    category: Mapped[str] = mapped_column(String(20))
    template_id: Mapped[int | None] = mapped_column(ForeignKey("message_templates.id"))
    answers_customer: Mapped[bool] = mapped_column(Boolean, default=False)
    content_object_id: Mapped[int] = mapped_column(ForeignKey("sealed_objects.id"))
    content_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    state: Mapped[str] = mapped_column(String(20))
    decision: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    approved_by: Mapped[str | None] = mapped_column(String(80))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    wamid_token: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    record_id: Mapped[int | None] = mapped_column(ForeignKey("records.id"))
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_title: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        UniqueConstraint("account_id", "sender_id", "idempotency_key"),
        Index("ix_outbox_items_due", "state", "due_at"),
        Index("ix_outbox_items_account_sent", "account_id", "sent_at"),
        Index("ix_outbox_items_contact_sent", "contact_id", "sent_at"),
        Index("ix_outbox_items_account_wamid", "account_id", "wamid_token"),
        Index("ix_outbox_items_sender", "sender_id", "created_at"),
    )


class OutboxEvent(Base):
    """One move of an outbox item, as the item shows its history (the audit trail
    records each too)."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(BIGINT_PK, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("outbox_items.id"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(80))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    note: Mapped[str | None] = mapped_column(String(1000))


class NumberSendState(Base):
    """What dispatch keeps about one business number: when it first sent, whether
    Meta stopped it (368, 131031, 131048), and its throughput backoff."""

    __tablename__ = "number_send_states"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    first_send_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stopped_reason: Mapped[str | None] = mapped_column(String(200))
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    backoff_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    backoff_level: Mapped[int] = mapped_column(Integer, default=0)
    messaging_tier: Mapped[str | None] = mapped_column(String(20))


class PairBackoff(Base):
    """A recipient Meta said we sent to too fast (131056), and until when to wait."""

    __tablename__ = "pair_backoffs"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id"), primary_key=True)
    until: Mapped[datetime] = mapped_column(UTCDateTime())
    level: Mapped[int] = mapped_column(Integer, default=0)


class WindowClosure(Base):
    """Meta said the customer service window was closed (131047) although our
    records had it open: inbound messages up to ``closed_at`` no longer open it."""

    __tablename__ = "window_closures"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id"), primary_key=True)
    closed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PolicyCursor(Base):
    """How far a policy job has read an append-only table (the records it reacted to)."""

    __tablename__ = "policy_cursors"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    position: Mapped[int] = mapped_column(BIGINT_PK)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
