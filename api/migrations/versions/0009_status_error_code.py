"""status error code

``records.error_code``: a failed status's Meta error code (131050, …), copied
from its sealed item at capture so that search can find failures by code. It is a
number from Meta's published list, never personal data; what the conversation
shows is read from the sealed item. Statuses captured before this revision have
no code here: search by code does not find them, the conversation still shows it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("records") as batch_op:
        batch_op.add_column(sa.Column("error_code", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_records_error_code"), ["error_code"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("records") as batch_op:
        batch_op.drop_index(batch_op.f("ix_records_error_code"))
        batch_op.drop_column("error_code")
