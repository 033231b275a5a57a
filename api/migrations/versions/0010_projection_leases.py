"""projection leases and account-keyed message-id indexes

``journal_entries.leased_until``: a projector claims the entries it is about to
project until then, so that several workers share the journal without doing the
same work twice; an entry whose worker died is claimed again once it passes.

The records' message-id tokens are indexed with their account, as every lookup
of them is made: alone, SQLite chose the account's time index for
``account_id = ? AND related_wamid_token IN (…)`` and read every record of the
account, once per projected batch.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import archiver.core.db

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("journal_entries") as batch_op:
        batch_op.add_column(
            sa.Column("leased_until", archiver.core.db.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("records") as batch_op:
        batch_op.drop_index("ix_records_wamid_token")
        batch_op.drop_index("ix_records_related_wamid_token")
        batch_op.create_index("ix_records_account_wamid", ["account_id", "wamid_token"])
        batch_op.create_index(
            "ix_records_account_related_wamid", ["account_id", "related_wamid_token"]
        )


def downgrade() -> None:
    with op.batch_alter_table("records") as batch_op:
        batch_op.drop_index("ix_records_account_related_wamid")
        batch_op.drop_index("ix_records_account_wamid")
        batch_op.create_index("ix_records_related_wamid_token", ["related_wamid_token"])
        batch_op.create_index("ix_records_wamid_token", ["wamid_token"])
    with op.batch_alter_table("journal_entries") as batch_op:
        batch_op.drop_column("leased_until")
