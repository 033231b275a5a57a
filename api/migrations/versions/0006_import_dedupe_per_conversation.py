"""imported messages are deduplicated per conversation

An imported message's dedupe key gains its contact (``x:<digest>:<n>`` becomes
``x:<digest>:<n>:<contact id>``), so that two customers' exports sharing a line
both keep it, and re-importing a file for its own contact still adds nothing.

The downgrade takes the contact off again. It fails, changing nothing, once two
conversations of one account hold the same lines: the old keys cannot tell them
apart.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE records SET dedupe_key = dedupe_key || ':' || contact_id "
        "WHERE source = 'chat_import' AND dedupe_key LIKE 'x:%' AND contact_id IS NOT NULL"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE records SET dedupe_key = "
        "substr(dedupe_key, 1, length(dedupe_key) - length(contact_id) - 1) "
        "WHERE source = 'chat_import' AND dedupe_key LIKE 'x:%' AND contact_id IS NOT NULL "
        "AND dedupe_key LIKE '%:' || contact_id"
    )
