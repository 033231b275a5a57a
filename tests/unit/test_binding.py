"""The record binding: every bound column changes it, the columns that change
legitimately later do not, and its encoding stays the one archives were bound with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from archiver.records.binding import OBJECT_COLUMNS, RECORD_COLUMNS, RecordBinding
from archiver.records.models import Record
from archiver.vault.models import SealedObject

KEY = bytes(range(32))
WHEN = datetime(2026, 11, 22, 9, 30, 15, 123456, tzinfo=UTC)


def _record(**changes: Any) -> Record:
    values: dict[str, Any] = {
        "id": 7,
        "account_id": "acc_1",
        "contact_id": "ct_1",
        "dedupe_token": bytes(range(16)),
        "kind": "message",
        "source": "cloud_api",
        "direction": "inbound",
        "item_type": "text",
        "wamid_token": bytes(range(16, 32)),
        "related_wamid_token": None,
        "status": None,
        "occurred_at": WHEN,
        "received_at": WHEN + timedelta(seconds=1),
        "has_media": False,
        "forwarded": False,
        "revoked": False,
        "opens_window": True,
        "journal_entry_id": 3,
        "object_id": 11,
    }
    return Record(**(values | changes))


def _object(**changes: Any) -> SealedObject:
    values: dict[str, Any] = {
        "id": 11,
        "object_key": "record/2026/11/22/abc",
        "version_id": "null",
        "kind": "record",
        "key_id": "sk_1",
        "sha256": "0" * 64,
        "size": 100,
        "retain_until": WHEN + timedelta(days=2557),
        "legal_hold": False,
        "sealed_at": WHEN,
    }
    return SealedObject(**(values | changes))


def _other(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, int):
        return value + 1
    if isinstance(value, bytes):
        return value + b"x"
    return f"{value}x" if value is not None else "set"


def test_the_encoding_is_the_one_archives_were_bound_with() -> None:
    # Changing the columns, their order or their encoding breaks every stored
    # binding: such a change needs a new VERSION and a migration that rebinds.
    assert RecordBinding(KEY).compute(_record(), _object()).hex() == (
        "01bd668ac1ec4577890928137383544474138f59104ca5a8b6e3311c9427404159"
    )


def test_every_column_of_a_record_is_bound_or_deliberately_left_out() -> None:
    # A column added to records later must be bound, or named here with the reason.
    left_out = {
        "id",  # chosen by the database at insert; the object key is unique to a record
        "object_id",  # stands for the object, whose own columns are bound
        "revoked",  # set when a revoke arrives (the revoke record is bound itself)
        "journal_entry_id",  # provenance; the journal is kept only for weeks
        "error_code",  # a search aid copied from the sealed status, which is what is shown
        "binding",
    }
    assert set(Record.__table__.c.keys()) - left_out == set(RECORD_COLUMNS)
    assert {"object_key", "sha256", "size", "key_id", "version_id"} == set(OBJECT_COLUMNS)


@pytest.mark.parametrize("column", RECORD_COLUMNS)
def test_every_bound_record_column_changes_the_binding(column: str) -> None:
    binding = RecordBinding(KEY)
    record = _record()
    record.binding = binding.compute(record, _object())
    setattr(record, column, _other(getattr(record, column)))
    assert not binding.matches(record, _object())


@pytest.mark.parametrize("column", OBJECT_COLUMNS)
def test_every_bound_object_column_changes_the_binding(column: str) -> None:
    binding = RecordBinding(KEY)
    record = _record()
    record.binding = binding.compute(record, _object())
    moved = _object(**{column: _other(getattr(_object(), column))})
    assert not binding.matches(record, moved)


def test_what_changes_legitimately_later_is_not_bound() -> None:
    binding = RecordBinding(KEY)
    record = _record()
    record.binding = binding.compute(record, _object())
    record.revoked = True  # a revoke arrived
    record.journal_entry_id = None  # the journal entry was purged
    kept = _object(retain_until=WHEN + timedelta(days=4000), legal_hold=True, kind="x", id=12)
    assert binding.matches(record, kept)


def test_no_binding_and_another_key_never_match() -> None:
    record = _record()
    assert not RecordBinding(KEY).matches(record, _object())
    record.binding = RecordBinding(bytes(32)).compute(record, _object())
    assert not RecordBinding(KEY).matches(record, _object())
