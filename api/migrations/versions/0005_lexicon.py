"""compliance lexicon

Sensitive terms that flag archived messages and will hold or block outbound
ones. Removal keeps the row; only active terms are unique once normalised.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import archiver.core.db

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None

_ACTIVE = "removed_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "lexicon_terms",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("term", sa.String(length=200), nullable=False),
        sa.Column("normalized", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("added_by", sa.String(length=80), nullable=False),
        sa.Column("added_at", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("removed_by", sa.String(length=80), nullable=True),
        sa.Column("removed_at", archiver.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "action IN ('flag', 'hold', 'block')", name=op.f("ck_lexicon_terms_action")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lexicon_terms")),
    )
    with op.batch_alter_table("lexicon_terms", schema=None) as batch_op:
        batch_op.create_index(
            "uq_lexicon_terms_active_normalized",
            ["normalized"],
            unique=True,
            sqlite_where=sa.text(_ACTIVE),
            postgresql_where=sa.text(_ACTIVE),
        )


def downgrade() -> None:
    with op.batch_alter_table("lexicon_terms", schema=None) as batch_op:
        batch_op.drop_index("uq_lexicon_terms_active_normalized")
    op.drop_table("lexicon_terms")
