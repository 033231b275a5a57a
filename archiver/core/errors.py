"""Errors raised by the record core: one tree, whose root is :class:`ArchiverError`.

A class is defined here unless the tree names its module. ``api.errors`` maps
each of them that can reach a request to its HTTP status.

::

    ArchiverError
    ├── InvalidInput              a value given to a service is invalid (names it)
    │   └── InvalidCursor         (archiver.records.queries) a cursor no page gave out
    ├── CryptoError
    │   ├── KeyDestroyed          the subject key was destroyed (crypto-shredded)
    │   ├── KeyNotFound           no such subject key, or wrapped by an unknown root key
    │   └── CorruptionDetected    stored bytes are malformed, forged or altered
    │       └── AuditChainBroken  (archiver.audit.services) events were cut from the audit chain
    ├── VaultError
    │   ├── ObjectExists          create-exclusive write refused: the key is taken
    │   ├── ObjectNotFound        no object (or version) under that key
    │   ├── RetentionViolation    shortening retention, or deleting a retained/held object
    │   └── StoreUnavailable      the backend could not be reached or answered wrongly
    ├── CaptureError
    │   ├── AccountExists         that phone number id is already registered
    │   ├── AccountNotFound       no such account
    │   ├── RecordNotFound        no such captured record
    │   ├── IntegrityFailed       a record or its media failed its integrity check
    │   └── SignatureInvalid      (archiver.capture.services) a webhook's signature does not verify
    ├── AuditUnavailable          (archiver.audit.services) an audit event could not be committed
    ├── ChatExportError           (archiver.imports.chat_export) an export file cannot be read
    │   └── DateOrderAmbiguous    its dates could be day-first or month-first
    ├── SearchError               (archiver.search.services) a query cannot be run
    ├── GraphError                (archiver.whatsapp.graph) the Graph API refused or failed
    │   ├── GraphTransient        worth retrying
    │   └── GraphPermanent        not worth retrying
    │       └── MediaTooLarge     a media file over the size limit
    └── IdentityError             (archiver.identity.services) users, sessions and tokens
        ├── InvalidCredentials    wrong username, password or code
        ├── AccountLocked         too many failed sign-ins
        ├── MfaRequired           a second factor is needed
        ├── NotPermitted          the actor may not do this
        ├── IdentityConflict      the change collides with the current state
        └── UnknownUser           no such user (or, for its owner, no such token)
"""

from __future__ import annotations


class ArchiverError(Exception):
    """Root of every error the record core raises."""


class InvalidInput(ArchiverError, ValueError):
    """A value given to a service is invalid; the message names it and why.

    Also a ``ValueError``, so that callers outside HTTP (the CLI, the console's
    forms) that catch ``ValueError`` keep working; HTTP maps only this class to 400,
    and a bare ``ValueError`` is a bug (500)."""


class CryptoError(ArchiverError):
    """A key or envelope problem."""


class KeyDestroyed(CryptoError):
    """The subject key was destroyed; its objects can never be read again."""


class KeyNotFound(CryptoError):
    """The subject key does not exist, or its root key is not loaded."""


class CorruptionDetected(CryptoError):
    """Stored bytes are malformed, failed authentication or differ from their digest."""


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
    (``archiver.records.services`` lists the reasons)."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} failed its integrity check: {reason}")
        self.reason = reason
