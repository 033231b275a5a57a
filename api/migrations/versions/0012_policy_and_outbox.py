"""policy and outbox

The outbound pipeline's tables: each account's send policy, the consent
ledger (each entry's who, how and evidence sealed under the contact's key),
the template registry with our approval and Meta's status, outbox items (their
content sealed under the recipient's key) with the history of their moves, and
what dispatch keeps per business number and per recipient.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import archiver.core.db

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_templates",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("waba_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("language", sa.String(length=20), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("components", sa.Text(), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("meta_status", sa.String(length=20), nullable=True),
        sa.Column("meta_template_id", sa.String(length=64), nullable=True),
        sa.Column("quality", sa.String(length=20), nullable=True),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("submitted_by", sa.String(length=80), nullable=True),
        sa.Column("decided_by", sa.String(length=80), nullable=True),
        sa.Column("decision_comment", sa.String(length=1000), nullable=True),
        sa.Column("created_at", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('draft', 'submitted', 'approved', 'rejected')",
            name=op.f("ck_message_templates_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_templates")),
        sa.UniqueConstraint(
            "waba_id", "name", "language", name=op.f("uq_message_templates_waba_id")
        ),
    )
    op.create_table(
        "number_send_states",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("first_send_at", archiver.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("stopped_reason", sa.String(length=200), nullable=True),
        sa.Column("stopped_at", archiver.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("backoff_until", archiver.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("backoff_level", sa.Integer(), nullable=False),
        sa.Column("messaging_tier", sa.String(length=20), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_number_send_states_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_number_send_states")),
    )
    op.create_table(
        "pair_backoffs",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("contact_id", sa.String(length=40), nullable=False),
        sa.Column("until", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_pair_backoffs_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_pair_backoffs_contact_id_contacts")
        ),
        sa.PrimaryKeyConstraint("account_id", "contact_id", name=op.f("pk_pair_backoffs")),
    )
    op.create_table(
        "policy_settings",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.String(length=80), nullable=False),
        sa.Column("updated_at", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_policy_settings_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_policy_settings")),
    )
    op.create_table(
        "consent_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("contact_id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=True),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("method", sa.String(length=30), nullable=False),
        sa.Column("recorded_by", sa.String(length=80), nullable=False),
        sa.Column("occurred_at", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "source_record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "object_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.CheckConstraint(
            "action IN ('opt_in', 'opt_out')", name=op.f("ck_consent_entries_action")
        ),
        sa.CheckConstraint(
            "category IN ('marketing', 'utility', 'authentication', 'service')",
            name=op.f("ck_consent_entries_category"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_consent_entries_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_consent_entries_contact_id_contacts")
        ),
        sa.ForeignKeyConstraint(
            ["object_id"],
            ["sealed_objects.id"],
            name=op.f("fk_consent_entries_object_id_sealed_objects"),
        ),
        sa.ForeignKeyConstraint(
            ["source_record_id"],
            ["records.id"],
            name=op.f("fk_consent_entries_source_record_id_records"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_entries")),
    )
    with op.batch_alter_table("consent_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_consent_entries_contact", ["contact_id", "category", "occurred_at"], unique=False
        )
        batch_op.create_index(
            "uq_consent_entries_source",
            ["source_record_id", "category"],
            unique=True,
            sqlite_where=sa.text("source_record_id IS NOT NULL"),
            postgresql_where=sa.text("source_record_id IS NOT NULL"),
        )

    op.create_table(
        "outbox_items",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("sender_id", sa.String(length=80), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("contact_id", sa.String(length=40), nullable=False),
        sa.Column("recipient_region", sa.String(length=4), nullable=True),
        sa.Column("recipient_zone", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column(
            "template_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("answers_customer", sa.Boolean(), nullable=False),
        sa.Column(
            "content_object_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("content_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("decision", sa.Text(), nullable=True),
        sa.Column("created_at", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("send_at", archiver.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("expires_at", archiver.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("due_at", archiver.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("approved_by", sa.String(length=80), nullable=True),
        sa.Column("sent_at", archiver.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("wamid_token", sa.LargeBinary(length=16), nullable=True),
        sa.Column("record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_title", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_outbox_items_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_outbox_items_contact_id_contacts")
        ),
        sa.ForeignKeyConstraint(
            ["content_object_id"],
            ["sealed_objects.id"],
            name=op.f("fk_outbox_items_content_object_id_sealed_objects"),
        ),
        sa.ForeignKeyConstraint(
            ["record_id"], ["records.id"], name=op.f("fk_outbox_items_record_id_records")
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["message_templates.id"],
            name=op.f("fk_outbox_items_template_id_message_templates"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_items")),
        sa.UniqueConstraint(
            "account_id", "sender_id", "idempotency_key", name=op.f("uq_outbox_items_account_id")
        ),
    )
    with op.batch_alter_table("outbox_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_items_account_sent", ["account_id", "sent_at"], unique=False
        )
        batch_op.create_index(
            "ix_outbox_items_account_wamid", ["account_id", "wamid_token"], unique=False
        )
        batch_op.create_index(
            "ix_outbox_items_contact_sent", ["contact_id", "sent_at"], unique=False
        )
        batch_op.create_index("ix_outbox_items_due", ["state", "due_at"], unique=False)
        batch_op.create_index("ix_outbox_items_sender", ["sender_id", "created_at"], unique=False)

    op.create_table(
        "outbox_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("item_id", sa.String(length=40), nullable=False),
        sa.Column("from_state", sa.String(length=20), nullable=True),
        sa.Column("to_state", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("at", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("note", sa.String(length=1000), nullable=True),
        sa.ForeignKeyConstraint(
            ["item_id"], ["outbox_items.id"], name=op.f("fk_outbox_events_item_id_outbox_items")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
    )
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_events_item_id"), ["item_id"], unique=False)
    op.create_table(
        "policy_cursors",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("updated_at", archiver.core.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_policy_cursors")),
    )
    op.create_table(
        "window_closures",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("contact_id", sa.String(length=40), nullable=False),
        sa.Column("closed_at", archiver.core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_window_closures_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_window_closures_contact_id_contacts")
        ),
        sa.PrimaryKeyConstraint("account_id", "contact_id", name=op.f("pk_window_closures")),
    )


def downgrade() -> None:
    op.drop_table("window_closures")
    op.drop_table("policy_cursors")
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_events_item_id"))

    op.drop_table("outbox_events")
    with op.batch_alter_table("outbox_items", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_items_sender")
        batch_op.drop_index("ix_outbox_items_due")
        batch_op.drop_index("ix_outbox_items_contact_sent")
        batch_op.drop_index("ix_outbox_items_account_wamid")
        batch_op.drop_index("ix_outbox_items_account_sent")

    op.drop_table("outbox_items")
    with op.batch_alter_table("consent_entries", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_consent_entries_source",
            sqlite_where=sa.text("source_record_id IS NOT NULL"),
            postgresql_where=sa.text("source_record_id IS NOT NULL"),
        )
        batch_op.drop_index("ix_consent_entries_contact")

    op.drop_table("consent_entries")
    op.drop_table("policy_settings")
    op.drop_table("pair_backoffs")
    op.drop_table("number_send_states")
    op.drop_table("message_templates")
