"""Errors raised by outbound governance.

::

    PolicyError
    └── LexiconError
        ├── InvalidTerm          empty, nothing searchable, too long, or an unknown action
        ├── DuplicateTerm        the same term (once normalised) is already active
        ├── TermNotFound         no lexicon term has that id
        └── TermAlreadyRemoved   the term was removed before
"""

from __future__ import annotations


class PolicyError(Exception):
    """Root of every error outbound governance raises."""


class LexiconError(PolicyError):
    """A problem with a lexicon change."""


class InvalidTerm(LexiconError):
    """The term or its action cannot be accepted; nothing was changed."""


class DuplicateTerm(LexiconError):
    """An active term already has the same normalised form (``existing_id``, when known)."""

    def __init__(self, message: str, existing_id: int | None = None) -> None:
        super().__init__(message)
        self.existing_id = existing_id


class TermNotFound(LexiconError):
    """No lexicon term has that id."""


class TermAlreadyRemoved(LexiconError):
    """The term is no longer active."""
