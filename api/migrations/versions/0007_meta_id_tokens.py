"""Meta's ids as blind tokens

A wamid embeds the customer's phone number (``wamid.`` and the base64 of a small
struct that starts with it). Records now keep only blind tokens of their dedupe
key, wamid and related wamid (``MetaIdIndex``: keyed per account, under the
keyring subject ``index:meta_ids``), delivery states are keyed by the wamid's
token, and media items no longer copy Meta's media id, which their record's
sealed item holds. The ids themselves stay only in the sealed objects.

Computing the tokens needs the root key: ``strongroom migrate`` hands its keyring
to the migrations. Without one, this revision refuses an archive that holds
records or delivery states, before it changes anything.

The ids cannot be written back (the database must not hold them), so going down
keeps each token, as ``tok:<hex>``, in the old columns, and coming up again turns
those back into the same tokens. Revision 0006's code then sees opaque ids: the
archive stays readable, but a redelivery of an item captured before the downgrade
is no longer recognised as a duplicate, and new statuses, edits and revokes do
not join the messages captured before it.

On PostgreSQL the update rewrites every row of ``records``: see the README for
the VACUUM that gives the space back.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

import archiver.core.db
from api.migrate import migration_keyring
from archiver.core.subjects import META_ID_SUBJECT
from archiver.search.blind_index import MetaIdIndex

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None

_BATCH = 5_000
_KEPT = "tok:"  # a token kept by a downgrade, as hex
_TOKEN = sa.LargeBinary(length=16)
# Each old column of records, and the token column that replaces it.
_OLD = {
    "dedupe_key": "dedupe_token",
    "wamid": "wamid_token",
    "related_wamid": "related_wamid_token",
}

_records = sa.table(
    "records",
    sa.column("id", sa.BigInteger()),
    sa.column("account_id", sa.String()),
    *(sa.column(name, sa.String()) for name in _OLD),
    *(sa.column(name, sa.LargeBinary()) for name in _OLD.values()),
)


def _delivery_table(name: str) -> sa.TableClause:
    """Delivery states as this revision moves them: by id, then by token."""
    return sa.table(
        name,
        sa.column("account_id", sa.String()),
        sa.column("wamid", sa.String()),
        sa.column("wamid_token", sa.LargeBinary()),
        sa.column("status", sa.String()),
        sa.column("updated_at", archiver.core.db.UTCDateTime(timezone=True)),
    )


_delivery_states = _delivery_table("delivery_states")
_staging = _delivery_table("delivery_states_staging")


def _meta_ids() -> MetaIdIndex | None:
    """The token index under the archive's own key, if the runner gave a keyring."""
    keyring = migration_keyring()
    if keyring is None:
        return None
    return MetaIdIndex(keyring.key_on(op.get_bind(), META_ID_SUBJECT))


def _pages(query: sa.Select[Any], *keys: sa.ColumnElement[Any]) -> Iterator[Sequence[sa.Row[Any]]]:
    """``query`` in keyset pages ordered by ``keys`` (PostgreSQL will not alter a
    table that an open cursor still reads)."""
    page = query.order_by(*keys).limit(_BATCH)
    after: tuple[Any, ...] | None = None
    while (
        rows := op.get_bind()
        .execute(page if after is None else page.where(sa.tuple_(*keys) > after))
        .all()
    ):
        yield rows
        after = tuple(rows[-1][: len(keys)])


def _tokenizer(index: MetaIdIndex | None) -> Callable[[str, str, str | None], bytes | None]:
    def token(account_id: str, column: str, value: str | None) -> bytes | None:
        if value is None:
            return None
        if value.startswith(_KEPT):
            return bytes.fromhex(value[len(_KEPT) :])
        assert index is not None  # checked before anything changed
        if column == "dedupe_key":
            return index.dedupe_token(account_id, value)
        return index.token(account_id, value)

    return token


def _rewrite_records(convert: Callable[[sa.Row[Any]], dict[str, Any]]) -> None:
    """Set the columns that ``convert`` gives for each record, a page at a time."""
    columns = [*_OLD, *_OLD.values()]
    update = (
        _records.update()
        .where(_records.c.id == sa.bindparam("rid"))
        .values({name: sa.bindparam(f"to_{name}") for name in columns})
    )
    query = sa.select(_records.c.id, _records.c.account_id, *(_records.c[n] for n in columns))
    for rows in _pages(query, _records.c.id):
        op.get_bind().execute(
            update,
            [
                {"rid": row.id}
                | {f"to_{name}": getattr(row, name) for name in columns}
                | {f"to_{name}": value for name, value in convert(row).items()}
                for row in rows
            ],
        )


def _kept(token: bytes | None) -> str | None:
    return None if token is None else _KEPT + token.hex()


def _delivery_states_table(key: sa.Column[Any]) -> None:
    op.create_table(
        "delivery_states",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        key,
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("updated_at", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_delivery_states_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", key.name, name=op.f("pk_delivery_states")),
    )


def _rekey_delivery_states(old: str, new: str, convert: Callable[[str, Any], Any]) -> None:
    """Copy delivery states through a staging table into a table keyed by ``new``."""
    key_type = sa.String(length=200) if new == "wamid" else _TOKEN
    op.create_table(
        "delivery_states_staging",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column(new, key_type, nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("updated_at", archiver.core.db.UTCDateTime(timezone=True), nullable=False),
    )
    source, key = _delivery_states.c, _delivery_states.c[old]
    query = sa.select(source.account_id, key, source.status, source.updated_at)
    for rows in _pages(query, source.account_id, key):
        op.get_bind().execute(
            _staging.insert(),
            [
                {
                    "account_id": row.account_id,
                    new: convert(row.account_id, getattr(row, old)),
                    "status": row.status,
                    "updated_at": row.updated_at,
                }
                for row in rows
            ],
        )
    op.drop_table("delivery_states")
    _delivery_states_table(sa.Column(new, key_type, nullable=False))
    columns = ["account_id", new, "status", "updated_at"]
    op.execute(
        _delivery_states.insert().from_select(
            columns, sa.select(*(_staging.c[name] for name in columns))
        )
    )
    op.drop_table("delivery_states_staging")


def upgrade() -> None:
    bind = op.get_bind()
    index = _meta_ids()
    holds_ids = bind.execute(
        sa.select(
            sa.exists(sa.select(_records.c.id))
            | sa.exists(sa.select(_delivery_states.c.account_id))
        )
    ).scalar()
    if holds_ids and index is None:
        raise RuntimeError(
            "revision 0007 turns Meta's ids into blind tokens, which needs the root key: "
            "run it with `strongroom migrate` (nothing was changed)"
        )
    token = _tokenizer(index)
    if bind.dialect.name == "sqlite":
        # Pages freed by the rebuilt tables and dropped indexes are zeroed, rather
        # than left in the file still holding the ids.
        op.execute("PRAGMA secure_delete = ON")

    with op.batch_alter_table("records", schema=None) as batch_op:
        for name in _OLD.values():
            batch_op.add_column(sa.Column(name, _TOKEN, nullable=True))

    def tokenised(row: sa.Row[Any]) -> dict[str, Any]:
        tokens = {new: token(row.account_id, old, getattr(row, old)) for old, new in _OLD.items()}
        # The ids leave the live rows now, not only when their columns are dropped
        # (PostgreSQL keeps a dropped column's values in the rows).
        return tokens | {old: _kept(tokens[new]) for old, new in _OLD.items()}

    _rewrite_records(tokenised)
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_constraint("uq_records_account_id", type_="unique")
        batch_op.drop_index("ix_records_wamid")
        batch_op.drop_index("ix_records_related_wamid")
        for old in _OLD:
            batch_op.drop_column(old)
        batch_op.alter_column("dedupe_token", existing_type=_TOKEN, nullable=False)
        batch_op.create_unique_constraint("uq_records_account_id", ["account_id", "dedupe_token"])
        batch_op.create_index("ix_records_wamid_token", ["wamid_token"], unique=False)
        batch_op.create_index(
            "ix_records_related_wamid_token", ["related_wamid_token"], unique=False
        )

    _rekey_delivery_states(
        "wamid", "wamid_token", lambda account_id, wamid: token(account_id, "wamid", wamid)
    )
    with op.batch_alter_table("media_items", schema=None) as batch_op:
        batch_op.drop_column("media_id")


def downgrade() -> None:
    with op.batch_alter_table("media_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("media_id", sa.String(length=200), nullable=True))
    _rekey_delivery_states("wamid_token", "wamid", lambda _, token: _kept(token))

    with op.batch_alter_table("records", schema=None) as batch_op:
        for old in _OLD:
            width = 300 if old == "dedupe_key" else 200
            batch_op.add_column(sa.Column(old, sa.String(length=width), nullable=True))
    _rewrite_records(lambda row: {old: _kept(getattr(row, new)) for old, new in _OLD.items()})
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_constraint("uq_records_account_id", type_="unique")
        batch_op.drop_index("ix_records_wamid_token")
        batch_op.drop_index("ix_records_related_wamid_token")
        for new in _OLD.values():
            batch_op.drop_column(new)
        batch_op.alter_column("dedupe_key", existing_type=sa.String(length=300), nullable=False)
        batch_op.create_unique_constraint("uq_records_account_id", ["account_id", "dedupe_key"])
        batch_op.create_index("ix_records_wamid", ["wamid"], unique=False)
        batch_op.create_index("ix_records_related_wamid", ["related_wamid"], unique=False)
