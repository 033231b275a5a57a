"""``archiver.whatsapp.items.extract`` on changes whose arrays no reader knows."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from archiver.whatsapp.items import extract
from tests.e2e.server import fixture

RECEIVED = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
METADATA = {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}


def change(field: str, value: dict[str, Any]) -> dict[str, Any]:
    value = {"messaging_product": "whatsapp", "metadata": METADATA} | value
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": field, "value": value}]}],
    }


def test_each_item_of_an_unknown_array_is_an_item_named_after_its_array() -> None:
    holograms = [
        {"id": f"holo.{n}", "timestamp": "1763701000", "from": "447700900123"} for n in range(3)
    ]
    items = extract(change("messages", {"holograms": holograms}), RECEIVED)

    assert [(i.kind, i.item_type, i.field) for i in items] == [
        ("event", "holograms", "messages")
    ] * 3
    assert [i.sealed["item"] for i in items] == holograms
    assert all(i.sealed["metadata"] == METADATA for i in items)
    assert len({i.dedupe_key for i in items}) == 3
    assert [i.identities[0].value for i in items] == ["447700900123"] * 3
    assert items[0].occurred_at == datetime.fromtimestamp(1763701000, UTC)


def test_items_with_an_id_are_kept_once_per_id_and_event() -> None:
    connect = fixture("calls_connect")
    terminate = fixture("calls_terminate")
    (connected,) = extract(connect, RECEIVED)
    (terminated,) = extract(terminate, RECEIVED)
    (again,) = extract(copy.deepcopy(connect), RECEIVED)
    call = connect["entry"][0]["changes"][0]["value"]["calls"][0]

    assert (connected.kind, connected.item_type, connected.field) == ("event", "calls", "calls")
    assert connected.sealed["item"] == call
    assert connected.identities[0].value == call["from"]  # the customer, not the business
    assert again.dedupe_key == connected.dedupe_key  # a redelivery adds nothing
    assert terminated.dedupe_key != connected.dedupe_key  # same call id, another event


def test_an_item_without_an_id_is_kept_once_per_content() -> None:
    first = extract(change("messages", {"errors": [{"code": 1}, {"code": 2}]}), RECEIVED)
    again = extract(change("messages", {"errors": [{"code": 1}]}), RECEIVED)
    assert [i.item_type for i in first] == ["errors", "errors"]
    assert first[0].dedupe_key == again[0].dedupe_key != first[1].dedupe_key


def test_echoes_under_the_messages_field_are_echoes() -> None:
    echo = fixture("smb_message_echo_text")["entry"][0]["changes"][0]["value"]
    items = extract(change("messages", {"message_echoes": echo["message_echoes"]}), RECEIVED)
    assert [(i.kind, i.direction) for i in items] == [("echo", "outbound")]


def test_a_value_with_more_than_arrays_is_also_kept_whole() -> None:
    value = {"event": "PARTNER_ADDED", "partners": [{"id": "p1"}]}
    items = extract(change("account_update", value), RECEIVED)
    assert [i.item_type for i in items] == ["partners", "account_update"]
    assert items[1].sealed["item"]["event"] == "PARTNER_ADDED"


def test_a_value_with_no_array_is_one_record_of_its_field() -> None:
    (item,) = extract(fixture("template_status_update"), RECEIVED)
    assert (item.kind, item.item_type, item.field) == (
        "event",
        "message_template_status_update",
        "message_template_status_update",
    )
