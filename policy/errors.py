"""Errors raised by outbound governance.

::

    PolicyError
    ├── LexiconError
    │   ├── InvalidTerm          empty, nothing searchable, too long, or an unknown action
    │   ├── DuplicateTerm        the same term (once normalised) is already active
    │   ├── TermNotFound         no lexicon term has that id
    │   └── TermAlreadyRemoved   the term was removed before
    ├── OutboxError
    │   ├── InvalidMessage       the item cannot be accepted as given (names why)
    │   ├── UnknownTemplate      no such template is registered for the business account
    │   ├── IdempotencyConflict  the key was used for a different message
    │   ├── ItemNotFound         no outbox item has that id (or not within the caller's accounts)
    │   └── StateConflict        the item's state does not allow the move (or the
    │                            supervisor is its sender)
    ├── InvalidPolicy            a send policy setting cannot work, or no such account
    ├── ConsentError
    │   ├── InvalidConsent       a bad phone number, category, action, method or evidence
    │   ├── ContactNotFound      no contact has that id
    │   └── ConsentAlreadyRecorded  that source record already gave this category's consent
    └── TemplateError
        ├── InvalidTemplate      a bad name, language, category, components or parameters
        ├── DuplicateTemplate    the account's WABA already has that name and language
        ├── TemplateNotFound     no template (or account) with that id within the caller's
        ├── TemplateStateError   the step does not apply to the template's status
        └── SelfApproval         the checker is the template's maker or its submitter
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


class OutboxError(PolicyError):
    """A problem with an outbox item or one of its moves."""


class InvalidMessage(OutboxError):
    """The item cannot be accepted as given; nothing was queued."""


class UnknownTemplate(OutboxError):
    """No template of that name and language is registered for the business account."""


class IdempotencyConflict(OutboxError):
    """The sender used that idempotency key for a different message."""


class ItemNotFound(OutboxError):
    """No outbox item has that id within the caller's accounts."""


class StateConflict(OutboxError):
    """The item's state does not allow the move asked for."""


class InvalidPolicy(PolicyError):
    """A send policy setting cannot work (names it), or the account is unknown."""


class ConsentError(PolicyError):
    """A problem with a consent ledger entry; nothing was recorded."""


class InvalidConsent(ConsentError, ValueError):
    """A value of the entry cannot be accepted (the message names which, never the
    number or the evidence)."""


class ContactNotFound(ConsentError):
    """No contact has that id."""


class ConsentAlreadyRecorded(ConsentError):
    """The source record already gave this category's consent (a replay)."""


class TemplateError(PolicyError):
    """A problem with a template or a step of its approval; nothing was changed."""


class InvalidTemplate(TemplateError, ValueError):
    """The template's name, language, category, components or parameters are invalid."""


class DuplicateTemplate(TemplateError):
    """The WhatsApp Business Account already has a template of that name and language."""


class TemplateNotFound(TemplateError):
    """No template (or account) with that id within the caller's accounts."""


class TemplateStateError(TemplateError):
    """The step does not apply in the template's current status (say, approving a draft)."""


class SelfApproval(TemplateError):
    """The checker is the template's maker or its submitter: maker and checker differ."""
