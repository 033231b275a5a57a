"""audit actor name

``audit_events.actor_name``: the username of the actor of an event, as they were
named when it happened, so the trail says who without a lookup in the users
table (whose rows change and go). The hash chain covers it only when it is set
(``archiver.audit.services``), so the events written before this revision, which
have none, verify as they were written.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.add_column(sa.Column("actor_name", sa.String(length=80), nullable=True))


def downgrade() -> None:
    # Not rebuilt on SQLite (whose ALTER TABLE drops a column since 3.35): a rebuilt
    # table would lose the triggers that keep it append-only.
    with op.batch_alter_table("audit_events", recreate="never") as batch_op:
        batch_op.drop_column("actor_name")
