"""Fuzzing the webhook: hypothesis-generated bodies, signed correctly, never get a
5xx, and every acknowledged body is projected whole (never partly, never failing).

The strategies here are shared with ``tests/unit/test_items_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from archiver.capture.services import MAX_JSON_DEPTH, MAX_WEBHOOK_BYTES, nesting_depth
from tests.e2e.server import DISPLAY_NUMBER, PHONE_NUMBER_ID, Server

# -- strategies ------------------------------------------------------------

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",
    "مرحبا بالعالم",
    "שלום עולם",
    "明日の会議は10時からです",
    "👩\u200d💻👍🏽🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "\ufeff\u200b\u00ad",
    "İ" * 70,
    "ß",
    "x" * 400,
    "null",
    "NaN",
    "-1",
    "1e10",
    "9" * 40,
    "../../etc/passwd",
    "' OR 1=1 --",
    "%s%n{0}",
]

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(ODD_STRINGS),
)
META_KEYS = st.sampled_from(
    ["id", "type", "from", "to", "timestamp", "text", "body", "status", "messages", "entry"]
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | META_KEYS, children, max_size=4)
    ),
    max_leaves=12,
)
junk = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=2) | st.dictionaries(META_KEYS, children),
    max_leaves=4,
)


@st.composite
def odd(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    """Mostly ``strategy``; one time in eight any JSON value (a number, null, a list...)
    where Meta would send a string or an object."""
    return draw(junk if draw(st.integers(0, 7)) == 7 else strategy)


def some(strategy: st.SearchStrategy[Any], max_size: int = 4) -> st.SearchStrategy[Any]:
    """A short list of (mostly) ``strategy``, or now and then not a list at all."""
    return odd(st.lists(odd(strategy), max_size=max_size))


PHONES = [
    "16505551234",
    "+16505551234",
    "1 650 555 1234",
    "+1 (650) 555-1234",
    "819012345678",
    DISPLAY_NUMBER,
    "+" + DISPLAY_NUMBER,
    "0",
    "not a number",
    "",
]
MESSAGE_TYPES = [
    "text",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "button",
    "reaction",
    "order",
    "system",
    "unsupported",
    "edit",
    "revoke",
    "request_welcome",
    "ephemeral",
    "unknown",
    "TEXT",
]
FIELDS = [
    "messages",
    "smb_message_echoes",
    "history",
    "smb_app_state_sync",
    "user_preferences",
    "account_update",
    "message_template_status_update",
    "calls",
]
STATUSES = ["sent", "delivered", "read", "played", "failed", "deleted", "SENT", "x" * 30]

FULLWIDTH = "1763700000".translate({48 + d: 0xFF10 + d for d in range(10)})
timestamps = st.one_of(
    st.integers(1_600_000_000, 1_900_000_000).map(str),
    st.integers(1_600_000_000, 1_900_000_000),
    st.integers(-(10**30), 10**30),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "abc", "1e10", " 1763700000 ", FULLWIDTH, "9" * 5000]),
    junk,
)
words = st.text(max_size=30) | st.sampled_from(ODD_STRINGS)


@dataclass(frozen=True)
class Pools:
    """Small per-body pools, so that ids and numbers repeat inside one body."""

    ids: st.SearchStrategy[Any]
    phones: st.SearchStrategy[Any]
    user_ids: st.SearchStrategy[Any]


def pools(draw: st.DrawFn) -> Pools:
    ids = draw(
        st.lists(
            st.text(max_size=12).map("wamid.".__add__)
            | st.integers()
            | st.sampled_from(["w" * 600, "wamid.\x00", "", "wamid.A"]),
            min_size=1,
            max_size=4,
        )
    )
    phones = draw(st.lists(st.sampled_from(PHONES) | st.integers(), min_size=1, max_size=3))
    users = draw(st.lists(st.sampled_from(["US.1", "US.2", "US.ENT.9"]), min_size=1, max_size=2))
    return Pools(
        odd(st.sampled_from(ids)), odd(st.sampled_from(phones)), odd(st.sampled_from(users))
    )


def contents(p: Pools) -> st.SearchStrategy[Any]:
    """The body under a message's ``type`` key, in any of its documented shapes."""
    replies = odd(st.fixed_dictionaries({}, optional={"id": p.ids, "title": words}))
    return odd(
        st.fixed_dictionaries(
            {},
            optional={
                "body": words,
                "caption": words,
                "filename": words,
                "text": words,
                "emoji": words,
                "id": p.ids,
                "url": words,
                "mime_type": words,
                "sha256": words,
                "message_id": p.ids,
                "original_message_id": p.ids,
                "button_reply": replies,
                "list_reply": replies,
                "nfm_reply": odd(st.fixed_dictionaries({"body": words})),
                "name": words,
                "address": words,
                "message": st.deferred(lambda: messages(p)),
            },
        )
    )


@st.composite
def messages(draw: st.DrawFn, p: Pools) -> Any:
    """One message or echo: documented keys (any may be missing), random type."""
    kind = draw(odd(st.sampled_from(MESSAGE_TYPES) | st.text(max_size=70)))
    message = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "from": p.phones,
                "to": p.phones,
                "id": p.ids,
                "timestamp": timestamps,
                "type": st.just(kind),
                "from_user_id": p.user_ids,
                "to_user_id": p.user_ids,
                "from_parent_user_id": p.user_ids,
                "context": odd(
                    st.fixed_dictionaries(
                        {},
                        optional={"id": p.ids, "forwarded": junk, "frequently_forwarded": junk},
                    )
                ),
                "referral": odd(st.fixed_dictionaries({"headline": words, "body": words})),
                "system": odd(
                    st.fixed_dictionaries(
                        {},
                        optional={"wa_id": p.phones, "new_wa_id": p.phones, "user_id": p.user_ids},
                    )
                ),
                "contacts": junk,
                "errors": junk,
                "history_context": odd(st.fixed_dictionaries({"status": words})),
            },
        )
    )
    if isinstance(kind, str) and draw(st.booleans()):
        message[kind] = draw(contents(p))
    return message


def statuses(p: Pools) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {},
        optional={
            "id": p.ids,
            "status": odd(st.sampled_from(STATUSES)),
            "timestamp": timestamps,
            "recipient_id": p.phones,
            "recipient_user_id": p.user_ids,
            "errors": junk,
            "pricing": junk,
        },
    )


def history_chunks(p: Pools) -> st.SearchStrategy[Any]:
    threads = st.fixed_dictionaries(
        {}, optional={"id": p.phones, "messages": some(messages(p)), "extra": junk}
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "metadata": odd(
                st.fixed_dictionaries(
                    {}, optional={"phase": junk, "chunk_order": junk, "progress": junk}
                )
            ),
            "threads": some(threads),
            "errors": junk,
        },
    )


def field_values(p: Pools, field: str) -> st.SearchStrategy[Any]:
    """A change's ``value`` for ``field``, with the metadata of the registered number."""
    metadata = st.fixed_dictionaries(
        {},
        optional={
            "display_phone_number": odd(st.sampled_from([DISPLAY_NUMBER, "+" + DISPLAY_NUMBER])),
            "phone_number_id": odd(st.sampled_from([PHONE_NUMBER_ID, "999"])),
        },
    )
    contacts = st.fixed_dictionaries(
        {},
        optional={
            "wa_id": p.phones,
            "user_id": p.user_ids,
            "parent_user_id": p.user_ids,
            "profile": odd(st.fixed_dictionaries({"name": words})),
        },
    )
    common: dict[str, st.SearchStrategy[Any]] = {
        "messaging_product": odd(st.just("whatsapp")),
        "metadata": odd(metadata),
        "contacts": some(contacts),
        "unknown_key": json_values,
    }
    specific: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "messages": {
            "messages": some(messages(p)),
            "statuses": some(statuses(p)),
            "errors": junk,
        },
        "smb_message_echoes": {"message_echoes": some(messages(p))},
        "history": {"history": some(history_chunks(p), 3), "messages": some(messages(p))},
        "smb_app_state_sync": {
            "state_sync": some(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "type": odd(st.just("contact")),
                        "contact": odd(
                            st.fixed_dictionaries(
                                {}, optional={"full_name": words, "phone_number": p.phones}
                            )
                        ),
                        "action": odd(st.sampled_from(["add", "remove", "edit"])),
                        "metadata": odd(st.fixed_dictionaries({"timestamp": timestamps})),
                    },
                )
            )
        },
        "user_preferences": {
            "user_preferences": some(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "wa_id": p.phones,
                        "user_id": p.user_ids,
                        "value": odd(st.sampled_from(["stop", "resume"])),
                        "category": words,
                        "timestamp": timestamps,
                    },
                )
            )
        },
    }
    return st.fixed_dictionaries({}, optional=common | specific.get(field, {"event": json_values}))


@st.composite
def changes(draw: st.DrawFn, p: Pools) -> Any:
    field = draw(odd(st.sampled_from(FIELDS) | st.text(max_size=50)))
    # Now and then a value of another field's shape, as a misrouted delivery would be.
    shape = draw(st.sampled_from(FIELDS)) if draw(st.booleans()) else field
    value = odd(field_values(p, shape if isinstance(shape, str) else ""))
    return draw(st.fixed_dictionaries({}, optional={"field": st.just(field), "value": value}))


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    """A webhook body shaped like Meta's, with wrong types and missing keys mixed in."""
    p = pools(draw)
    entries = st.fixed_dictionaries(
        {}, optional={"id": odd(st.just("102290129340398")), "changes": some(changes(p), 3)}
    )
    return draw(
        st.fixed_dictionaries(
            {"entry": some(entries, 3)},
            optional={"object": odd(st.just("whatsapp_business_account"))},
        )
    )


@st.composite
def deep_bodies(draw: st.DrawFn) -> bytes:
    """A JSON text nested far deeper than any real delivery (built as text: too deep for
    the stdlib encoder)."""
    depth = draw(st.integers(1, 3000) | st.integers(900, 1010))
    style = draw(st.sampled_from([["["], ['{"a":'], ["[", '{"a":']]))
    openers = [style[i % len(style)] for i in range(depth)]
    closers = "".join("]" if o == "[" else "}" for o in reversed(openers))
    return ("".join(openers) + json.dumps(draw(leaves)) + closers).encode()


# -- what counts as JSON ---------------------------------------------------


def _reject(token: str) -> Any:
    raise ValueError(f"not JSON: {token}")


def _finite(token: str) -> float:
    number = float(token)
    if number in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return number


def strict_json(body: bytes) -> bool | None:
    """Whether ``body`` is strict UTF-8 JSON (I-JSON: no lone surrogates, finite
    numbers); ``None`` when it is nested too deep for a plain parser to say."""
    try:
        value = json.loads(body.decode(), parse_constant=_reject, parse_float=_finite)
        json.dumps(value, ensure_ascii=False).encode()
    except RecursionError:
        return None
    except ValueError:  # UnicodeError and JSONDecodeError included
        return False
    return True


@dataclass(frozen=True)
class Body:
    """A body to post, and the statuses it may get."""

    raw: bytes
    statuses: frozenset[int]


def as_body(raw: bytes) -> Body:
    """``raw`` with the statuses it may get: 200 if JSON, 400 if not or if nested
    deeper than the documented limit."""
    if nesting_depth(raw) > MAX_JSON_DEPTH:
        return Body(raw, frozenset({400}))
    verdict = strict_json(raw)
    return Body(raw, frozenset({200} if verdict else {400} if verdict is False else {200, 400}))


not_json = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b"NaN",
            b'{"a": NaN}',
            b"-Infinity",
            b'{"a": 1}trailing',
            b'{"a": 1,}',
            b"{'a': 1}",
            b"[1 2]",
            b'"\\ud800"',
            b'"\xc3\x28"',
            b"\xef\xbb\xbf{}",
            b"\x00",
            b"1e400",
            b"9" * 5000,
        ]
    ),
    st.builds(json.dumps, json_values).map(lambda s: s.encode()[: len(s) // 2]),
)


@st.composite
def json_bodies(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> bytes:
    """``values`` as JSON text, ASCII-escaped or not, compact or indented."""
    return json.dumps(
        draw(values),
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 0, 2])),
    ).encode()


meta_bodies = json_bodies(payloads())
bodies = (
    st.one_of(meta_bodies, meta_bodies, json_bodies(json_values), deep_bodies(), not_json)
    .filter(lambda raw: len(raw) < MAX_WEBHOOK_BYTES)
    .map(as_body)
)


# -- the store, read directly ----------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One journal entry, as far as projection goes."""

    id: int
    body_sha256: str
    projected: bool
    last_error: str | None
    attempts: int
    records: int


class Store:
    """The server's journal and records, read-only, straight from its database."""

    def __init__(self, server: Server) -> None:
        url = server.env.get("STRONGROOM_DATABASE_URL")
        args: dict[str, Any] = {}
        if url is None:
            url = f"sqlite+aiosqlite:///file:{server.data_dir / 'strongroom.db'}?mode=ro&uri=true"
        else:
            args = {"server_settings": {"default_transaction_read_only": "on"}}
        self.account_id = server.account_id
        self._runner = asyncio.Runner()
        self._engine: AsyncEngine = create_async_engine(url, poolclass=NullPool, connect_args=args)

    def close(self) -> None:
        self._runner.run(self._engine.dispose())
        self._runner.close()

    def entries(self, body_sha256: str | None = None) -> list[Entry]:
        """Journal entries (of one body, or all), with how many records cite each."""
        query = (
            "SELECT e.id, e.body_sha256, e.projected_at IS NOT NULL, e.last_error, e.attempts,"
            " (SELECT count(*) FROM records r WHERE r.journal_entry_id = e.id)"
            " FROM journal_entries e WHERE e.account_id = :account"
        )
        params = {"account": self.account_id}
        if body_sha256 is not None:
            query += " AND e.body_sha256 = :sha"
            params["sha"] = body_sha256
        return self._runner.run(self._rows(query + " ORDER BY e.id", params))

    async def _rows(self, query: str, params: dict[str, str]) -> list[Entry]:
        async with self._engine.connect() as conn:
            result = await conn.execute(text(query), params)
            return [Entry(r[0], r[1], bool(r[2]), r[3], r[4], r[5]) for r in result]


@pytest.fixture
def store(server: Server) -> Iterator[Store]:
    reader = Store(server)
    yield reader
    reader.close()


def settle(store: Store, body_sha256: str | None = None, timeout: float = 5) -> list[Entry]:
    """Entries once each is projected or has failed (bounded: projection is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = store.entries(body_sha256)
        if all(e.projected or e.last_error for e in entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.01)


def problems(entries: list[Entry]) -> list[str]:
    """Every way ``entries`` fall short of a whole, error-free projection."""
    found = []
    for e in entries:
        if e.last_error:
            found.append(f"entry {e.id}: projection failed ({e.attempts}x): {e.last_error}")
        if not e.projected:
            found.append(f"entry {e.id}: not projected, {e.records} records cite it")
    return found


# -- the properties ----------------------------------------------------------


def test_signed_bodies_never_fail_and_project_whole(server: Server, store: Store) -> None:
    """No signed body gets a 5xx; each acknowledged one is projected, whole, without error."""
    posted: dict[str, bytes] = {}

    @settings(
        max_examples=150,
        deadline=None,
        # Meta-shaped bodies are slow to generate; the fixtures are the server's, not per example.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=bodies)
    def post(body: Body) -> None:
        sha = hashlib.sha256(body.raw).hexdigest()
        response = server.post_webhook(body.raw)
        note(f"response: {response.status_code} {response.text[:200]}")
        assert response.status_code < 500
        assert response.status_code in body.statuses
        entries = settle(store, sha)
        if response.status_code != 200:
            assert entries == [], "a refused body was journaled"
            return
        posted[sha] = body.raw
        assert entries, "an acknowledged body is not in the journal"
        # Older stuck entries can starve this one; the count tells that case apart.
        assert problems(entries) == [], (
            f"{sum(not e.projected for e in store.entries())} entries wait for projection in all"
        )

    post()
    entries = settle(store)
    assert entries, "nothing was journaled"
    failed = {e.body_sha256 for e in entries if e.last_error or not e.projected}
    assert problems(entries) == [], [posted.get(sha, b"?")[:500] for sha in failed]
