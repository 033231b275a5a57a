"""Protocols for the record core's seams."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What a backend reports about one object version."""

    key: str
    version_id: str
    sha256: str
    size: int
    retain_until: datetime
    legal_hold: bool


@dataclass(frozen=True, slots=True)
class NewObject:
    """One object to store with :meth:`ObjectStore.put_many`."""

    key: str
    data: bytes
    retain_until: datetime
    legal_hold: bool = False


@dataclass(frozen=True, slots=True)
class LockState:
    """The real lock state of one object version, as the backend reports it."""

    retain_until: datetime | None
    legal_hold: bool


class ObjectStore(Protocol):
    """A write-once object store with per-object retention and legal hold.

    Implementations are blocking; the vault calls them from a worker thread.
    Every method translates backend errors into :mod:`archiver.core.errors`.
    """

    def put(
        self, key: str, data: bytes, *, retain_until: datetime, legal_hold: bool = False
    ) -> StoredObject:
        """Store ``data`` under a new ``key``; raise ``ObjectExists`` if it is taken."""
        ...

    def put_many(self, objects: Sequence[NewObject]) -> list[StoredObject]:
        """Store several new objects, in order, as :meth:`put` would each.

        Faster than one ``put`` after another. If it raises, some of the objects
        may be stored all the same: an object nobody recorded is harmless, and the
        vault's ``verify`` lists it.
        """
        ...

    def get(self, key: str, version_id: str) -> bytes:
        """Return the bytes of one version; raise ``ObjectNotFound``."""
        ...

    def lock_state(self, key: str, version_id: str) -> LockState:
        """Read the real retention and legal hold of one version."""
        ...

    def extend_retention(self, key: str, version_id: str, retain_until: datetime) -> None:
        """Move retain-until later; raise ``RetentionViolation`` if it is earlier."""
        ...

    def set_legal_hold(self, key: str, version_id: str, on: bool) -> None:
        """Set or clear the legal hold flag of one version."""
        ...

    def delete(self, key: str, version_id: str) -> None:
        """Remove one version; raise ``RetentionViolation`` while retained or held."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Yield every stored key under ``prefix``."""
        ...

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store is reachable and usable."""
        ...
