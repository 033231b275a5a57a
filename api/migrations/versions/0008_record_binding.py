"""record binding

Every record gets ``binding``, a keyed MAC of its metadata and its sealed object
(``archiver.records.binding``), so that moving a record to another account, or changing
its direction or time, is found on read and by ``vault verify``. Existing
records are bound here, which needs the root key: ``strongroom migrate`` passes
the keyring in (``keyring`` in the Alembic config's attributes). What the rows
say when this runs is what gets bound, so run it on a database you trust.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

import archiver.core.db
from api.migrate import migration_keyring
from archiver.records.binding import BINDING_SUBJECT, OBJECT_COLUMNS, RECORD_COLUMNS, RecordBinding

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels = None
depends_on = None

_BATCH = 1_000
_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "occurred_at": archiver.core.db.UTCDateTime(timezone=True),
    "received_at": archiver.core.db.UTCDateTime(timezone=True),
    "has_media": sa.Boolean(),
    "forwarded": sa.Boolean(),
    "opens_window": sa.Boolean(),
    "size": sa.BigInteger(),
    "dedupe_token": sa.LargeBinary(),
    "wamid_token": sa.LargeBinary(),
    "related_wamid_token": sa.LargeBinary(),
}
_records = sa.table(
    "records",
    sa.column("id", sa.BigInteger()),
    sa.column("object_id", sa.BigInteger()),
    sa.column("binding", sa.LargeBinary()),
    *(sa.column(name, _TYPES.get(name, sa.String())) for name in RECORD_COLUMNS),
)
_objects = sa.table(
    "sealed_objects",
    sa.column("id", sa.BigInteger()),
    *(sa.column(name, _TYPES.get(name, sa.String())) for name in OBJECT_COLUMNS),
)


def _binding() -> RecordBinding | None:
    """The binding under the archive's key; ``None`` when there is nothing to bind."""
    bind = op.get_bind()
    if bind.execute(sa.select(_records.c.id).limit(1)).first() is None:
        return None
    keyring = migration_keyring()
    if keyring is None:
        raise RuntimeError(
            "revision 0008 binds the existing records and needs the root key: "
            "run it with `strongroom migrate`"
        )
    return RecordBinding(keyring.key_on(bind, BINDING_SUBJECT))


def _bind_existing(binding: RecordBinding) -> None:
    page = (
        sa.select(
            _records.c.id,
            *(_records.c[name] for name in RECORD_COLUMNS),
            *(_objects.c[name] for name in OBJECT_COLUMNS),
        )
        .join(_objects, _objects.c.id == _records.c.object_id)
        .order_by(_records.c.id)
        .limit(_BATCH)
    )
    update = (
        _records.update()
        .where(_records.c.id == sa.bindparam("record_id"))
        .values(binding=sa.bindparam("value"))
    )
    bind = op.get_bind()
    last = 0
    while rows := bind.execute(page.where(_records.c.id > last)).all():
        bind.execute(
            update, [{"record_id": row.id, "value": binding.compute(row, row)} for row in rows]
        )
        last = rows[-1].id


def upgrade() -> None:
    binding = _binding()  # before any change: without the key, nothing changes
    # Nullable, so that SQLite need not rebuild the table; a record without a
    # binding fails its integrity check like one whose binding does not match.
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("binding", sa.LargeBinary(), nullable=True))
    if binding is not None:
        _bind_existing(binding)


def downgrade() -> None:
    # Not in batch mode: SQLite (3.35 on) drops a column in place, where rebuilding
    # the table would break the foreign keys that point at records.
    op.drop_column("records", "binding")
