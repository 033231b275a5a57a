"""search tokens in time order

The blind index is keyed ``(token, at, record_id)``, ``at`` being the record's
time in microseconds since the epoch, so that a search reads a term's records
in time order instead of collecting and sorting all of them. Existing tokens
are kept, each given its record's time. Records get an index in time order for
searches by filters alone.

The rows go through a plain staging table because the new table reuses the old
one's constraint names, which PostgreSQL keeps per schema.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

import archiver.core.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_COPY_BATCH = 10_000

_records = sa.table(
    "records",
    sa.column("id", sa.BigInteger()),
    sa.column("occurred_at", archiver.core.db.UTCDateTime(timezone=True)),
)
_staging = sa.table(
    "search_tokens_staging",
    sa.column("token", sa.LargeBinary()),
    sa.column("at", sa.BigInteger()),
    sa.column("record_id", sa.BigInteger()),
)
_tokens = sa.table(
    "search_tokens",
    sa.column("token", sa.LargeBinary()),
    sa.column("at", sa.BigInteger()),
    sa.column("record_id", sa.BigInteger()),
)


def _create_tokens(*, timed: bool) -> None:
    op.create_table(
        "search_tokens",
        sa.Column("token", sa.LargeBinary(length=8), nullable=False),
        *([sa.Column("at", sa.BigInteger(), autoincrement=False, nullable=False)] if timed else []),
        sa.Column(
            "record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["record_id"], ["records.id"], name=op.f("fk_search_tokens_record_id_records")
        ),
        sa.PrimaryKeyConstraint(
            *(("token", "at", "record_id") if timed else ("token", "record_id")),
            name=op.f("pk_search_tokens"),
        ),
        **({"sqlite_with_rowid": False} if timed else {}),
    )


def _create_staging() -> None:
    op.create_table(
        "search_tokens_staging",
        sa.Column("token", sa.LargeBinary(length=8), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=True),
        sa.Column("record_id", sa.BigInteger(), nullable=False),
    )


def upgrade() -> None:
    _create_staging()
    bind = op.get_bind()
    page = (
        sa.select(_tokens.c.token, _tokens.c.record_id, _records.c.occurred_at)
        .join(_records, _records.c.id == _tokens.c.record_id)
        .order_by(_tokens.c.token, _tokens.c.record_id)
        .limit(_COPY_BATCH)
    )
    after: tuple[bytes, int] | None = None
    # Keyset pages rather than one streamed cursor: PostgreSQL will not drop a
    # table that an open cursor still reads.
    while batch := bind.execute(
        page
        if after is None
        else page.where(sa.tuple_(_tokens.c.token, _tokens.c.record_id) > after)
    ).all():
        bind.execute(
            _staging.insert(),
            [
                {"token": token, "at": (when - _EPOCH) // _MICROSECOND, "record_id": record_id}
                for token, record_id, when in batch
            ],
        )
        after = (batch[-1][0], batch[-1][1])
    op.drop_table("search_tokens")
    _create_tokens(timed=True)
    op.execute(_tokens.insert().from_select(["token", "at", "record_id"], sa.select(_staging)))
    op.drop_table("search_tokens_staging")
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.create_index("ix_records_time", ["occurred_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_index("ix_records_time")
    _create_staging()
    op.execute(
        _staging.insert().from_select(
            ["token", "record_id"], sa.select(_tokens.c.token, _tokens.c.record_id)
        )
    )
    op.drop_table("search_tokens")
    _create_tokens(timed=False)
    op.execute(
        _tokens.insert().from_select(
            ["token", "record_id"], sa.select(_staging.c.token, _staging.c.record_id)
        )
    )
    op.drop_table("search_tokens_staging")
