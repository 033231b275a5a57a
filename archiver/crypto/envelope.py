"""The sealed-object envelope: AES-256-GCM with a small versioned header.

Layout (all lengths in bytes)::

    magic "SRE" (3) | version (1) | key-id length (1) | key id (ASCII) | nonce (12) | ciphertext+tag

The header and the object key are the associated data, so an envelope cannot be
moved to another object key, nor its key id swapped, without failing to open.
Nonces are random: with 96-bit nonces a single key stays well inside GCM's
safety bound up to about 2**32 envelopes, far beyond one subject's messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from archiver.core.errors import CorruptionDetected

MAGIC = b"SRE"
VERSION = 1
NONCE_SIZE = 12
KEY_SIZE = 32
_MAX_KEY_ID = 255


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """The parsed, not yet authenticated, header of an envelope."""

    version: int
    key_id: str
    nonce: bytes
    length: int


def seal(key: bytes, key_id: str, object_key: str, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` for ``object_key`` under ``key`` (identified by ``key_id``)."""
    if len(key) != KEY_SIZE:
        raise ValueError("envelope keys are 32 bytes")
    kid = key_id.encode("ascii")
    if not 0 < len(kid) <= _MAX_KEY_ID:
        raise ValueError("key id must be 1-255 ASCII characters")
    nonce = os.urandom(NONCE_SIZE)
    header = MAGIC + bytes((VERSION, len(kid))) + kid + nonce
    return header + AESGCM(key).encrypt(nonce, plaintext, header + object_key.encode("utf-8"))


def read_header(envelope: bytes) -> EnvelopeHeader:
    """Parse the header so the caller can find the key; raise ``CorruptionDetected``."""
    if len(envelope) < len(MAGIC) + 2 or not envelope.startswith(MAGIC):
        raise CorruptionDetected("not a Strongroom envelope")
    version = envelope[3]
    if version != VERSION:
        raise CorruptionDetected(f"unsupported envelope version {version}")
    kid_len = envelope[4]
    end = 5 + kid_len + NONCE_SIZE
    if kid_len == 0 or len(envelope) < end + 16:
        raise CorruptionDetected("truncated envelope")
    try:
        key_id = envelope[5 : 5 + kid_len].decode("ascii")
    except UnicodeDecodeError as exc:
        raise CorruptionDetected("malformed key id in envelope") from exc
    return EnvelopeHeader(version, key_id, envelope[5 + kid_len : end], end)


def open_(key: bytes, object_key: str, envelope: bytes) -> bytes:
    """Authenticate and decrypt an envelope sealed for ``object_key``."""
    header = read_header(envelope)
    aad = envelope[: header.length] + object_key.encode("utf-8")
    try:
        return AESGCM(key).decrypt(header.nonce, envelope[header.length :], aad)
    except InvalidTag as exc:
        raise CorruptionDetected("envelope failed authentication") from exc
