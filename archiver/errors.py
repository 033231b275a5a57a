"""Errors raised by the record core.

::

    ArchiverError
    ├── CryptoError
    │   ├── KeyDestroyed          the subject key was destroyed (crypto-shredded)
    │   ├── KeyNotFound           no such subject key, or wrapped by an unknown root key
    │   └── IntegrityError        an envelope failed authentication or is malformed
    ├── VaultError
    │   ├── ObjectExists          create-exclusive write refused: the key is taken
    │   ├── ObjectNotFound        no object (or version) under that key
    │   ├── RetentionViolation    shortening retention, or deleting a retained/held object
    │   └── StoreUnavailable      the backend could not be reached or answered wrongly
    └── CaptureError
        ├── AccountExists         that phone number id is already registered
        ├── AccountNotFound       no such account
        ├── RecordNotFound        no such captured record
        └── IntegrityFailed       a record or its media failed its integrity check
"""

from __future__ import annotations


class ArchiverError(Exception):
    """Root of every error the record core raises."""


class CryptoError(ArchiverError):
    """A key or envelope problem."""


class KeyDestroyed(CryptoError):
    """The subject key was destroyed; its objects can never be read again."""


class KeyNotFound(CryptoError):
    """The subject key does not exist, or its root key is not loaded."""


class IntegrityError(CryptoError):
    """An envelope is malformed or failed authentication."""


class VaultError(ArchiverError):
    """An object store problem."""


class ObjectExists(VaultError):
    """A create-exclusive write found the key already taken."""


class ObjectNotFound(VaultError):
    """No object (or version) is stored under that key."""


class RetentionViolation(VaultError):
    """The request would shorten retention or remove a retained or held object."""


class StoreUnavailable(VaultError):
    """The backend could not be reached or gave an answer we cannot trust."""


class CaptureError(ArchiverError):
    """A capture, account or record problem."""


class AccountExists(CaptureError):
    """That phone number id is already registered."""


class AccountNotFound(CaptureError):
    """No such account."""


class RecordNotFound(CaptureError):
    """No such captured record."""


class IntegrityFailed(CaptureError):
    """A record or its media failed its integrity check; ``reason`` says how
    (``archiver.records`` lists the reasons)."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} failed its integrity check: {reason}")
        self.reason = reason
