"""Record binding: a keyed MAC that ties a record's metadata to its sealed object.

Someone with database access can move a record to another account, or change
its direction or time, and the envelope would still open: its associated data
is the object key, not the row. So each record carries ``binding``::

    binding = VERSION (one byte) ‖ HMAC-SHA256(key, DOMAIN ‖ msgpack([VERSION, *values]))

under the keyring key of subject ``binding:records`` (a subject key: it survives
root-key rotation unchanged). ``values`` are, in this order, the record's
:data:`RECORD_COLUMNS` (timestamps as microseconds since the epoch) and its sealed
object's :data:`OBJECT_COLUMNS`. Left out, as they legitimately change or say
nothing about the record: ``id`` (chosen by the database at insert; the object
key, unique to one record, keeps a binding from being moved to another row),
``revoked`` (set when a revoke arrives; the revoke record is bound itself),
``journal_entry_id`` (provenance, and the journal is kept only for weeks) and
``error_code`` (a search aid copied from the sealed status, which is what is shown).
"""

from __future__ import annotations

import hmac
from typing import Any, Final

import msgspec
from sqlalchemy import Row

from archiver.core.clock import time_key
from archiver.records.models import Record
from archiver.vault.models import SealedObject

BINDING_SUBJECT: Final = "binding:records"
VERSION: Final = 1
_DOMAIN: Final = b"strongroom record binding\n"
RECORD_COLUMNS: Final = (
    "account_id",
    "contact_id",
    "dedupe_token",
    "kind",
    "source",
    "direction",
    "item_type",
    "wamid_token",
    "related_wamid_token",
    "status",
    "occurred_at",
    "received_at",
    "has_media",
    "forwarded",
    "opens_window",
)
OBJECT_COLUMNS: Final = ("object_key", "version_id", "key_id", "sha256", "size")
_TIMES: Final = frozenset({"occurred_at", "received_at"})


class RecordBinding:
    """Computes and checks records' bindings under one key.

    ``record`` and ``obj`` are the ORM objects, or rows with the same columns (the
    migration that binds existing records reads rows).
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the binding key is 32 bytes")
        self._key = key

    def compute(self, record: Record | Row[Any], obj: SealedObject | Row[Any]) -> bytes:
        """The binding of ``record``, sealed as ``obj``."""
        values: list[Any] = [VERSION]
        for name in RECORD_COLUMNS:
            value = getattr(record, name)
            values.append(time_key(value) if name in _TIMES else value)
        values += [getattr(obj, name) for name in OBJECT_COLUMNS]
        mac = hmac.digest(self._key, _DOMAIN + msgspec.msgpack.encode(values), "sha256")
        return bytes((VERSION,)) + mac

    def matches(self, record: Record, obj: SealedObject) -> bool:
        """True when ``record.binding`` is the binding of ``record`` and ``obj``; a
        missing binding never matches."""
        binding = record.binding
        return binding is not None and hmac.compare_digest(binding, self.compute(record, obj))
