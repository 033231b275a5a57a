"""The envelope format: authenticated, bound to its object key and key id."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archiver.core.errors import CorruptionDetected
from archiver.crypto import envelope

KEY = secrets.token_bytes(32)


@given(st.binary(max_size=4096), st.text(min_size=1, max_size=80))
def test_roundtrip(plaintext: bytes, object_key: str) -> None:
    sealed = envelope.seal(KEY, "sk_abc", object_key, plaintext)
    assert envelope.read_header(sealed).key_id == "sk_abc"
    assert envelope.open_(KEY, object_key, sealed) == plaintext


def test_ciphertext_hides_plaintext() -> None:
    sealed = envelope.seal(KEY, "sk_abc", "k", b"+4915123456789 hello")
    assert b"hello" not in sealed
    assert b"4915123456789" not in sealed


def test_bound_to_object_key() -> None:
    sealed = envelope.seal(KEY, "sk_abc", "journal/a", b"data")
    with pytest.raises(CorruptionDetected):
        envelope.open_(KEY, "journal/b", sealed)


def test_any_flipped_bit_is_detected() -> None:
    sealed = bytearray(envelope.seal(KEY, "sk_abc", "k", b"data"))
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(CorruptionDetected):
            envelope.open_(KEY, "k", bytes(tampered))


def test_wrong_key_is_refused() -> None:
    sealed = envelope.seal(KEY, "sk_abc", "k", b"data")
    with pytest.raises(CorruptionDetected):
        envelope.open_(secrets.token_bytes(32), "k", sealed)


@pytest.mark.parametrize(
    "blob",
    [b"", b"XYZ\x01", b"SRE\x02\x03abc" + bytes(40), b"SRE\x01\x00" + bytes(40), b"SRE\x01\x05abc"],
)
def test_malformed_headers_are_refused(blob: bytes) -> None:
    with pytest.raises(CorruptionDetected):
        envelope.read_header(blob)


def test_key_size_is_checked() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        envelope.seal(b"short", "sk", "k", b"x")
