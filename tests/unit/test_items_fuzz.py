"""Properties of ``archiver.whatsapp.items.extract`` over any JSON value a webhook may carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import String

from archiver.records.models import Record
from archiver.whatsapp.items import MAX_ID, extract
from tests.e2e.test_fuzz import deep_bodies, json_bodies, json_values, payloads

RECEIVED = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
MESSAGE_KINDS = ("message", "echo", "history", "status")


def decoded(raw: bytes) -> Any:
    """``raw`` as the capture decodes it; skips what the webhook would refuse."""
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        assume(False)


# As the webhook receives them: encoded by Meta, decoded by msgspec.
webhook_values = st.one_of(json_bodies(payloads()), json_bodies(json_values), deep_bodies()).map(
    decoded
)


def width(column: str) -> int:
    """How many characters the records table holds in ``column``."""
    kind = Record.__table__.c[column].type
    assert isinstance(kind, String)
    assert kind.length is not None
    return kind.length


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def message_inputs(payload: Any) -> list[Any]:
    """What Meta sent as messages, echoes, history messages and statuses, in order."""
    found: list[Any] = []
    for entry in _list(_dict(payload).get("entry")):
        for change in _list(_dict(entry).get("changes")):
            field, value = _dict(change).get("field"), _dict(_dict(change).get("value"))
            if field == "messages":
                found += _list(value.get("messages")) + _list(value.get("statuses"))
            if field in ("messages", "smb_message_echoes"):
                found += _list(value.get("message_echoes"))
            if field == "history":
                for chunk in _list(value.get("history")):
                    if isinstance(chunk, dict) and not chunk.get("errors"):
                        for thread in _list(chunk.get("threads")):
                            found += _list(_dict(thread).get("messages"))
                found += _list(value.get("messages"))
    return found


@settings(max_examples=500)
@given(webhook_values)
def test_extract_keeps_every_message_and_fits_the_record_row(payload: Any) -> None:
    """Never raises; at least one item; keys and types fit; every message sealed as sent."""
    items = extract(payload, RECEIVED)
    assert items
    for item in items:
        assert len(item.item_type) <= width("item_type")
        assert item.occurred_at.utcoffset() == timedelta(0)
    sealed = [item.sealed["item"] for item in items if item.kind in MESSAGE_KINDS]
    expected = message_inputs(payload)
    assert len(sealed) == len(expected)
    for kept, sent in zip(sealed, expected, strict=True):
        assert kept is sent


@settings(max_examples=500)
@given(webhook_values)
def test_every_column_of_an_item_fits(payload: Any) -> None:
    """States fit their columns too: PostgreSQL refuses a longer string, and any
    string holding NUL. Ids are stored as tokens, of ids cut as a lookup cuts them."""
    columns = ("status", "kind", "source", "direction")
    for item in extract(payload, RECEIVED):
        for name in columns:
            value = getattr(item, name)
            assert value is None or len(value) <= width(name), name
        for name in (*columns, "item_type"):
            value = getattr(item, name)
            assert value is None or "\x00" not in value, name
        for meta_id in (item.wamid, item.related_wamid):
            assert meta_id is None or len(meta_id) <= MAX_ID


READ_ARRAYS = {
    "messages": {"messages", "statuses", "message_echoes"},
    "smb_message_echoes": {"message_echoes"},
    "history": {"history", "messages"},
    "smb_app_state_sync": {"state_sync"},
    "user_preferences": {"user_preferences"},
}
CONTEXT = {"messaging_product", "metadata", "contacts"}


@settings(max_examples=500)
@given(webhook_values)
def test_nothing_of_a_change_is_left_only_in_the_journal(payload: Any) -> None:
    """Every element of every array that no reader takes is sealed as its own item,
    and a value holding anything else is also sealed whole."""
    sealed = [item.sealed["item"] for item in extract(payload, RECEIVED)]
    for entry in _list(_dict(payload).get("entry")):
        for change in _list(_dict(entry).get("changes")):
            field, value = _dict(change).get("field"), _dict(_dict(change).get("value"))
            read = READ_ARRAYS.get(field, set()) if isinstance(field, str) else set()
            for name, part in value.items():
                if isinstance(part, list) and name not in read | {"contacts"}:
                    assert all(any(kept is e for kept in sealed) for e in part), name
            if any(n not in CONTEXT and not isinstance(p, list) for n, p in value.items()):
                assert any(kept is value for kept in sealed)
