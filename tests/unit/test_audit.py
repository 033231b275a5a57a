"""The audit chain's pure parts: canonical encoding, hashes, signed exports."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from archiver.audit.models import AuditEvent
from archiver.audit.services import (
    ZERO_HASH,
    canonical_bytes,
    chain_hash,
    checkpoint_message,
    export_line,
    format_time,
    verify_export,
)
from archiver.core.errors import InvalidInput

WHEN = datetime(2026, 11, 21, 9, 30, 5, 120, tzinfo=UTC)


def _event(seq: int = 1, prev_hash: str = ZERO_HASH, **overrides: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "seq": seq,
        "occurred_at": WHEN,
        "actor": "us_1",
        "role": "auditor",
        "action": "http.GET /api/v1/messages/{id}",
        "target": "record:42",
        "scope": "account:ac_1",
        "outcome": "allowed",
        "reason": None,
        "request_id": "req-1",
        "client_ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0",
        "details_sealed": None,
        "prev_hash": prev_hash,
        "hash": "",
    }
    values.update(overrides)
    event = AuditEvent(**values)
    event.hash = chain_hash(event.prev_hash, canonical_bytes(event))
    return event


def _pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_canonical_bytes_are_fixed() -> None:
    event = _event(details_sealed=b"\x01\x02")
    assert canonical_bytes(event) == (
        b'{"action":"http.GET /api/v1/messages/{id}","actor":"us_1",'
        b'"client_ip":"203.0.113.7","details_sha256":"'
        + hashlib.sha256(b"\x01\x02").hexdigest().encode()
        + b'","occurred_at":"2026-11-21T09:30:05.000120Z","outcome":"allowed",'
        b'"reason":null,"request_id":"req-1","role":"auditor","scope":"account:ac_1",'
        b'"seq":1,"target":"record:42","user_agent":"Mozilla/5.0","v":1}'
    )


def test_an_actor_name_is_encoded_only_when_there_is_one() -> None:
    # Events written before revision 0011 have none: their bytes, and hashes, stay.
    unnamed = canonical_bytes(_event())
    assert b"actor_name" not in unnamed
    named = canonical_bytes(_event(actor_name="ana"))
    assert named == unnamed.replace(b'"actor":"us_1",', b'"actor":"us_1","actor_name":"ana",')


def test_time_is_utc_with_microseconds() -> None:
    tokyo = timezone(timedelta(hours=9))
    assert format_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=tokyo)) == (
        "2026-01-01T18:04:05.000000Z"
    )
    naive = datetime(2026, 1, 2)  # noqa: DTZ001 - the naive value is what is being refused
    with pytest.raises(ValueError, match="naive"):
        format_time(naive)


def test_every_field_is_covered() -> None:
    base = canonical_bytes(_event())
    changes: dict[str, Any] = {
        "seq": 2,
        "occurred_at": WHEN + timedelta(microseconds=1),
        "actor": "us_2",
        "actor_name": "ana",
        "role": None,
        "action": "job.fetch_media",
        "target": "record:43",
        "scope": None,
        "outcome": "denied",
        "reason": "no grant",
        "request_id": "req-2",
        "client_ip": "::1",
        "user_agent": "curl",
        "details_sealed": b"",
    }
    for name, value in changes.items():
        assert canonical_bytes(_event(**{name: value})) != base, name


def test_seq_can_be_substituted() -> None:
    assert canonical_bytes(_event(seq=1), seq=5) == canonical_bytes(_event(seq=5))


@given(
    st.text(min_size=1, max_size=40),
    st.one_of(st.none(), st.text(max_size=60)),
    st.one_of(st.none(), st.text(max_size=60)),
)
def test_stdlib_json_reproduces_the_encoding(
    actor: str, target: str | None, agent: str | None
) -> None:
    # An auditor's own verifier needs nothing but the standard library.
    event = _event(actor=actor, target=target, user_agent=agent)
    fields = json.loads(canonical_bytes(event))
    stdlib = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert stdlib.encode() == canonical_bytes(event)


def test_chain_hash_and_checkpoint_message() -> None:
    assert chain_hash(ZERO_HASH, b"x") == hashlib.sha256(bytes(32) + b"x").hexdigest()
    assert checkpoint_message(12, "ab" * 32) == (b"strongroom-audit-checkpoint\n12\n" + b"ab" * 32)


def _export(key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    first = _event(1)
    second = _event(2, first.hash, actor="système", details_sealed=b"sealed")
    third = _event(3, second.hash, actor_name="zoë")
    jsonl = export_line(first) + export_line(second) + export_line(third)
    return jsonl, key.sign(jsonl)


def test_export_verifies_and_any_changed_byte_fails() -> None:
    key = Ed25519PrivateKey.generate()
    jsonl, signature = _export(key)
    assert verify_export(jsonl, signature, _pem(key))
    assert b"sealed" not in jsonl
    for i in range(len(jsonl)):
        tampered = bytearray(jsonl)
        tampered[i] ^= 0x01
        assert not verify_export(bytes(tampered), signature, _pem(key)), i
    assert not verify_export(jsonl, signature[:-1] + bytes([signature[-1] ^ 1]), _pem(key))
    assert not verify_export(jsonl, signature, _pem(Ed25519PrivateKey.generate()))


def test_export_lines_must_hash_to_their_content() -> None:
    key = Ed25519PrivateKey.generate()
    lines = json.loads(export_line(_event()))
    lines["actor"] = "someone else"
    forged = json.dumps(lines, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    assert not verify_export(forged, key.sign(forged), _pem(key))
    unnamed, named = (
        json.loads(export_line(_event())),
        json.loads(export_line(_event(actor_name="zoë"))),
    )
    del named["actor_name"]  # taken away
    for line in (unnamed | {"actor_name": "ana"}, unnamed | {"actor_name": None}, named):
        forged = json.dumps(line, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        assert not verify_export(forged, key.sign(forged), _pem(key)), line
    assert verify_export(b"", key.sign(b""), _pem(key))


def test_export_key_must_be_ed25519() -> None:
    other = X25519PrivateKey.generate().public_key()
    pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    with pytest.raises(InvalidInput, match="Ed25519"):
        verify_export(b"", b"", pem)
