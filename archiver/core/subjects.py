"""Names of keyring subjects. A subject never contains personal data."""

from __future__ import annotations

from typing import Protocol

# The key of the Meta id tokens (see ``MetaIdIndex``): a subject key, so that it
# survives root key rotation unchanged.
META_ID_SUBJECT = "index:meta_ids"


def contact_subject(contact_id: str) -> str:
    """The subject whose key seals everything about one contact."""
    return f"contact:{contact_id}"


def account_subject(account_id: str) -> str:
    """The subject whose key seals an account's secrets and account-level events."""
    return f"account:{account_id}"


def journal_subject(account_id: str) -> str:
    """The subject whose key seals an account's capture journal."""
    return f"journal:{account_id}"


class _Owned(Protocol):
    """What a record's subject depends on (a record row, or anything shaped like one)."""

    @property
    def account_id(self) -> str: ...
    @property
    def contact_id(self) -> str | None: ...


def record_subject(record: _Owned) -> str:
    """The subject a record (and its media) is sealed under."""
    if record.contact_id is not None:
        return contact_subject(record.contact_id)
    return account_subject(record.account_id)
