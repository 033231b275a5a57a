"""Turns a verified webhook body into the items Strongroom keeps.

This is a pure function of the parsed JSON: no database, no keys. Every item
carries the verbatim JSON Meta sent (with its ``metadata`` and ``contacts``
context) for sealing, plus the metadata the database may hold. Nothing is
dropped: every element of an array no reader knows becomes an ``event`` named
after its array, and a value with anything else is kept whole as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

# Where a record came from.
SOURCE_CLOUD_API = "cloud_api"
SOURCE_BUSINESS_APP = "business_app"
SOURCE_HISTORY = "history_sync"
SOURCE_IMPORT = "chat_import"
SOURCE_OUTBOX = "outbox"

MEDIA_TYPES = frozenset({"image", "audio", "video", "document", "sticker"})
_MAX_TYPE = 64
MAX_ID = 200  # longer ids are cut, and marked with a digest of the whole (see ``fit``)
_MAX_KEY = 300


@dataclass(frozen=True, slots=True)
class Identity:
    """One identity of a customer: ``wa_id`` (a phone number) or a business-scoped id."""

    kind: str
    value: str


@dataclass(slots=True)
class Item:
    """One thing to keep, with the metadata the database may hold."""

    field: str
    kind: str
    source: str
    direction: str
    item_type: str
    dedupe_key: str
    occurred_at: datetime
    sealed: dict[str, Any]
    phone_number_id: str | None = None
    wamid: str | None = None
    related_wamid: str | None = None
    status: str | None = None
    error_code: int | None = None  # a failed status's Meta error code, for search
    identities: list[Identity] = dataclasses.field(default_factory=list)
    text: str = ""
    media: dict[str, Any] | None = None
    attached: bool = False  # a file came with the item itself (a chat export's)
    forwarded: bool = False
    opens_window: bool = False


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _when(value: Any, fallback: datetime) -> datetime:
    """Meta's Unix-second timestamps (string or number); ``fallback`` if absent or absurd."""
    try:
        seconds = int(value)
        moment = datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return fallback
    return moment if 2009 <= moment.year <= 2200 else fallback


def _digest(value: Any) -> str:
    """A stable digest of a JSON value, for items that have no id of their own."""
    return hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()[:40]


def fit(value: str, width: int) -> str:
    """``value`` made safe for a database column of ``width`` characters: NUL (which
    PostgreSQL refuses) replaced, and anything too long cut and marked with a digest
    of the whole, so that distinct values stay distinct. The sealed item keeps the
    value exactly as sent."""
    value = value.replace("\x00", "\ufffd")
    if len(value) <= width:
        return value
    return (
        value[: width - 17]
        + "#"
        + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    )


def _id(value: Any, width: int = MAX_ID) -> str | None:
    text = _str(value)
    return fit(text, width) if text else None


def _key(prefix: str, wamid: str, item_type: str) -> str:
    """``prefix:wamid:type``; an id too long for the key column is replaced by its digest."""
    key = f"{prefix}:{wamid}:{item_type}"
    return key if len(key) <= _MAX_KEY else f"{prefix}:#{_digest(wamid)}:{item_type}"


def _type(value: Any, default: str) -> str:
    return fit(_str(value) or default, _MAX_TYPE)


def _identities(*pairs: tuple[str, Any]) -> list[Identity]:
    seen: list[Identity] = []
    for kind, value in pairs:
        text = _str(value)
        if text and Identity(kind, text) not in seen:
            seen.append(Identity(kind, text))
    return seen


def _contact_for(contacts: list[Any], wa_id: str | None, user_id: str | None) -> dict[str, Any]:
    for contact in contacts:
        c = _dict(contact)
        if (wa_id and c.get("wa_id") == wa_id) or (user_id and c.get("user_id") == user_id):
            return c
    return {}


def message_text(message: dict[str, Any]) -> str:
    """The searchable words of a message, in any of its documented shapes."""
    kind = message.get("type")
    body = _dict(message.get(kind)) if isinstance(kind, str) else {}
    parts: list[Any] = []
    if kind == "text":
        parts.append(body.get("body"))
    elif isinstance(kind, str) and kind in MEDIA_TYPES:
        parts += [body.get("caption"), body.get("filename")]
    elif kind == "interactive":
        for reply in ("button_reply", "list_reply"):
            parts += [
                _dict(body.get(reply)).get("title"),
                _dict(body.get(reply)).get("description"),
            ]
        parts.append(_dict(body.get("nfm_reply")).get("body"))
    elif kind == "button":
        parts.append(body.get("text"))
    elif kind == "location":
        parts += [body.get("name"), body.get("address")]
    elif kind == "reaction":
        parts.append(body.get("emoji"))
    elif kind == "order":
        parts.append(body.get("text"))
    elif kind == "edit":
        parts.append(message_text(_dict(body.get("message"))))
    elif kind == "contacts":
        for card in _list(message.get("contacts")):
            parts.append(_dict(_dict(card).get("name")).get("formatted_name"))
    referral = _dict(message.get("referral"))
    parts += [referral.get("headline"), referral.get("body")]
    return " ".join(p for p in parts if isinstance(p, str) and p)


def _media(message: dict[str, Any]) -> dict[str, Any] | None:
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in MEDIA_TYPES:
        return None
    media = _dict(message.get(kind))
    return media if (media.get("id") or media.get("url")) else None


def _related(message: dict[str, Any]) -> str | None:
    kind = message.get("type")
    body = _dict(message.get(kind)) if isinstance(kind, str) else {}
    if kind == "reaction":
        return _id(body.get("message_id"))
    if kind in ("edit", "revoke"):
        return _id(body.get("original_message_id"))
    return _id(_dict(message.get("context")).get("id"))


def item_ids(item: Any) -> tuple[str | None, str | None]:
    """A sealed item's own message id and the id it refers to (a reaction's, edit's
    or revoke's target, or the message a reply quotes), read as capture reads them."""
    item = _dict(item)
    return _id(item.get("id")), _related(item)


def _message_item(
    field_name: str,
    value: dict[str, Any],
    raw: Any,
    *,
    kind: str,
    source: str,
    business_number: str | None,
    received_at: datetime,
    extra: dict[str, Any] | None = None,
) -> Item:
    message = _dict(raw)  # read as an object; ``raw`` is sealed as sent, whatever it is
    contacts = _list(value.get("contacts"))
    wamid = _id(message.get("id"))
    item_type = _type(message.get("type"), "unknown")
    sender = _str(message.get("from"))
    outbound = kind == "echo" or (business_number is not None and sender == business_number)
    if outbound:
        identities = _identities(
            ("wa_id", message.get("to")), ("user_id", message.get("to_user_id"))
        )
    else:
        contact = _contact_for(contacts, sender, _str(message.get("from_user_id")))
        system = _dict(message.get("system"))
        identities = _identities(
            ("wa_id", sender),
            ("wa_id", contact.get("wa_id")),
            ("user_id", message.get("from_user_id")),
            ("user_id", contact.get("user_id")),
            ("parent_user_id", message.get("from_parent_user_id")),
            ("parent_user_id", contact.get("parent_user_id")),
            # A changed number or user id is the same person: link old and new.
            ("wa_id", system.get("wa_id") or system.get("new_wa_id")),
            ("user_id", system.get("user_id")),
        )
    context = _dict(message.get("context"))
    sealed = {
        "field": field_name,
        "metadata": value.get("metadata"),
        "contacts": value.get("contacts"),
        "item": raw,
    }
    if extra:
        sealed.update(extra)
    return Item(
        field=field_name,
        kind=kind,
        source=source,
        direction="outbound" if outbound else "inbound",
        item_type=item_type,
        dedupe_key=_key("m", wamid, item_type) if wamid else f"m:{_digest(raw)}",
        occurred_at=_when(message.get("timestamp"), received_at),
        sealed=sealed,
        wamid=wamid,
        related_wamid=_related(message),
        identities=identities,
        text=message_text(message),
        media=_media(message),
        forwarded=bool(context.get("forwarded") or context.get("frequently_forwarded")),
        opens_window=(
            kind == "message" and not outbound and item_type not in ("system", "unsupported")
        ),
    )


@dataclass(frozen=True, slots=True)
class DeliveryError:
    """Why Meta could not deliver a message: its error code and title."""

    code: int | None
    title: str


def delivery_error(item: Any) -> DeliveryError | None:
    """The first of a status item's ``errors`` (``None`` when it has none)."""
    errors = _list(_dict(item).get("errors"))
    if not errors:
        return None
    error = _dict(errors[0])
    code = error.get("code")
    title = _str(error.get("title")) or _str(error.get("message")) or ""
    valid = isinstance(code, int) and not isinstance(code, bool) and 0 <= code < 2**31
    return DeliveryError(code if valid else None, title)


def profile_name(sealed: dict[str, Any], wa_id: str | None) -> str | None:
    """The WhatsApp profile name a sealed record's ``contacts`` give the customer
    ``wa_id`` (the only contact, when ``wa_id`` is not known)."""
    contacts = _list(sealed.get("contacts"))
    contact = _contact_for(contacts, wa_id, None) if wa_id else {}
    if not contact and len(contacts) == 1:
        contact = _dict(contacts[0])
    return _str(_dict(contact.get("profile")).get("name"))


def _status_item(value: dict[str, Any], raw: Any, received_at: datetime) -> Item:
    status = _dict(raw)
    wamid = _id(status.get("id"))
    # Lower-case before cutting: lowering can lengthen a string (``İ`` becomes two).
    state = _type((_str(status.get("status")) or "unknown").lower(), "unknown")
    return Item(
        field="messages",
        kind="status",
        source=SOURCE_CLOUD_API,
        direction="outbound",
        item_type=state,
        dedupe_key=_key("s", wamid, state) if wamid else f"s:{_digest(raw)}",
        occurred_at=_when(status.get("timestamp"), received_at),
        sealed={
            "field": "messages",
            "metadata": value.get("metadata"),
            "contacts": value.get("contacts"),
            "item": raw,
        },
        wamid=wamid,
        status=fit(state, 20),
        error_code=error.code if (error := delivery_error(status)) else None,
        identities=_identities(
            ("wa_id", status.get("recipient_id")),
            ("user_id", status.get("recipient_user_id")),
        ),
    )


def _event(
    field_name: str,
    value: dict[str, Any],
    item: Any,
    item_type: str,
    received_at: datetime,
    identities: list[Identity] | None = None,
    when: Any = None,
) -> Item:
    return Item(
        field=field_name,
        kind="event",
        source=SOURCE_CLOUD_API,
        direction="none",
        item_type=_type(item_type, "event"),
        dedupe_key=f"e:{fit(field_name, 40)}:{_digest(item)}",
        occurred_at=_when(when, received_at),
        sealed={
            "field": field_name,
            "metadata": value.get("metadata"),
            "contacts": value.get("contacts"),
            "item": item,
        },
        identities=identities or [],
    )


def _history_items(
    value: dict[str, Any], business_number: str | None, received_at: datetime
) -> list[Item]:
    def history(message: Any, extra: dict[str, Any] | None = None) -> Item:
        return _message_item(
            "history",
            value,
            message,
            kind="history",
            source=SOURCE_HISTORY,
            business_number=business_number,
            received_at=received_at,
            extra=extra,
        )

    items: list[Item] = []
    for chunk in _list(value.get("history")):
        chunk = _dict(chunk)
        if chunk.get("errors"):
            items.append(_event("history", value, chunk, "history_declined", received_at))
            continue
        meta = _dict(chunk.get("metadata"))
        summary = {"metadata": meta, "threads": len(_list(chunk.get("threads")))}
        items.append(_event("history", value, summary, "history_chunk", received_at))
        for thread in _list(chunk.get("threads")):
            thread = _dict(thread)
            for message in _list(thread.get("messages")):
                item = history(
                    message, {"history": {"metadata": meta, "thread_id": thread.get("id")}}
                )
                if item.direction == "outbound" and not item.identities:
                    item.identities = _identities(("wa_id", thread.get("id")))
                items.append(item)
    # Media for an earlier placeholder arrives later under the same field.
    items.extend(history(message) for message in _list(value.get("messages")))
    return items


def _business_number(value: dict[str, Any]) -> str | None:
    number = _str(_dict(value.get("metadata")).get("display_phone_number"))
    return number.lstrip("+") if number else None


def extract(payload: Any, received_at: datetime) -> list[Item]:
    """Every item of a webhook body, in the order Meta sent them."""
    items: list[Item] = []
    entries = _list(_dict(payload).get("entry"))
    if not entries:
        return [_event("unknown", {}, payload, "unknown_payload", received_at)]
    for entry in entries:
        entry = _dict(entry)
        changes = _list(entry.get("changes"))
        if not changes:
            items.append(_event("unknown", {}, entry, "unknown_entry", received_at))
        for change in changes:
            change = _dict(change)
            field_name = _str(change.get("field")) or "unknown"
            value = _dict(change.get("value"))
            phone_number_id = _str(_dict(value.get("metadata")).get("phone_number_id"))
            found = _items_of(field_name, value, received_at)
            found += _other_arrays(field_name, value, received_at)
            if not found or _carries_more(value):
                found.append(_event(field_name, value, value, field_name, received_at))
            for item in found:
                item.phone_number_id = phone_number_id
            items.extend(found)
    return items


def _items_of(field_name: str, value: dict[str, Any], received_at: datetime) -> list[Item]:
    business = _business_number(value)
    items: list[Item] = []
    if field_name == "messages":
        for message in _list(value.get("messages")):
            items.append(
                _message_item(
                    field_name,
                    value,
                    message,
                    kind="message",
                    source=SOURCE_CLOUD_API,
                    business_number=business,
                    received_at=received_at,
                )
            )
        for status in _list(value.get("statuses")):
            items.append(_status_item(value, status, received_at))
    if field_name in ("messages", "smb_message_echoes"):
        for echo in _list(value.get("message_echoes")):
            items.append(
                _message_item(
                    field_name,
                    value,
                    echo,
                    kind="echo",
                    source=SOURCE_BUSINESS_APP,
                    business_number=business,
                    received_at=received_at,
                )
            )
    if field_name == "history":
        items = _history_items(value, business, received_at)
    elif field_name == "smb_app_state_sync":
        for sync in _list(value.get("state_sync")):
            sync = _dict(sync)
            contact = _dict(sync.get("contact"))
            action = _str(sync.get("action")) or "sync"
            items.append(
                _event(
                    field_name,
                    value,
                    sync,
                    f"contact_{action}",
                    received_at,
                    _identities(("wa_id", contact.get("phone_number"))),
                    _dict(sync.get("metadata")).get("timestamp"),
                )
            )
    elif field_name == "user_preferences":
        for pref in _list(value.get("user_preferences")):
            pref = _dict(pref)
            items.append(
                _event(
                    field_name,
                    value,
                    pref,
                    f"preference_{_str(pref.get('value')) or 'unknown'}",
                    received_at,
                    _identities(("wa_id", pref.get("wa_id")), ("user_id", pref.get("user_id"))),
                    pref.get("timestamp"),
                )
            )
    return items


# The arrays ``_items_of`` reads for each field; ``contacts`` is the context
# sealed with every item of a change.
_READ_ARRAYS = {
    "messages": {"messages", "statuses", "message_echoes"},
    "smb_message_echoes": {"message_echoes"},
    "history": {"history", "messages"},
    "smb_app_state_sync": {"state_sync"},
    "user_preferences": {"user_preferences"},
}


def _carries_more(value: dict[str, Any]) -> bool:
    """True when ``value`` holds something that no item of its arrays carries (any
    key but its arrays and the context sealed with each item): then the whole
    value is kept as one record too."""
    context = {"messaging_product", "metadata", "contacts"}
    return any(name not in context and not isinstance(part, list) for name, part in value.items())


def _other_arrays(field_name: str, value: dict[str, Any], received_at: datetime) -> list[Item]:
    """Every item of every other array of a change's ``value``, one event each, its
    type named after the array: what Meta adds (``calls``, ``errors``, next
    year's arrays) is kept as records, not only in the journal."""
    read = _READ_ARRAYS.get(field_name, set()) | {"contacts"}
    business = _business_number(value)
    items: list[Item] = []
    for name, array in value.items():
        if name in read or not isinstance(array, list):
            continue
        for element in array:
            item = _event(
                field_name,
                value,
                element,
                name,
                received_at,
                _parties(_dict(element), business),
                _dict(element).get("timestamp"),
            )
            item.dedupe_key = _element_key(field_name, name, element)
            items.append(item)
    return items


def _element_key(field_name: str, array: str, element: Any) -> str:
    """An element with an ``id`` is kept once per id and event: one call's
    ``connect`` and ``terminate`` share its id. Without an id, once per content."""
    fields = _dict(element)
    element_id = _id(fields.get("id"))
    prefix = f"e:{fit(field_name, 40)}:{fit(array, 40)}"
    if element_id is None:
        return f"{prefix}:{_digest(element)}"
    event = _str(fields.get("event")) or _str(fields.get("status")) or ""
    return _key(prefix, element_id, fit(event, 40))


def _parties(element: dict[str, Any], business: str | None) -> list[Identity]:
    """The customer an element of an unknown array names, by the keys Meta uses
    throughout: the other party of ``from``/``to``, ``wa_id``, ``recipient_id``."""
    sender = _str(element.get("from"))
    if sender is not None and sender == business:
        party = ("wa_id", element.get("to")), ("user_id", element.get("to_user_id"))
    else:
        party = ("wa_id", sender), ("user_id", element.get("from_user_id"))
    return _identities(
        *party,
        ("wa_id", element.get("wa_id")),
        ("wa_id", element.get("recipient_id")),
        ("user_id", element.get("user_id")),
    )


def outbound_item(
    *,
    payload: dict[str, Any],
    wamid: str,
    phone_number_id: str,
    recipient: str,
    text: str,
    sent_at: datetime,
    outbox: dict[str, Any],
) -> Item:
    """The record of a message the outbox sent: the ``payload`` posted to Graph,
    sealed verbatim with ``outbox`` (the item and its decision) and ``text``
    (what the customer reads, a template's filled in), keyed by its ``wamid`` as
    a captured message would be."""
    item_type = _type(payload.get("type"), "unknown")
    return Item(
        field="outbox",
        kind="message",
        source=SOURCE_OUTBOX,
        direction="outbound",
        item_type=item_type,
        dedupe_key=_key("m", fit(wamid, MAX_ID), item_type),
        occurred_at=sent_at,
        sealed={"field": "outbox", "item": payload, "outbox": {**outbox, "text": text}},
        phone_number_id=phone_number_id,
        wamid=fit(wamid, MAX_ID),
        identities=_identities(("wa_id", recipient)),
        text=text,
    )
