"""What a send decision sees and what it returns.

``policy.rules.decide(item, snapshot)`` is a pure function of the two types
below: a :class:`Draft` (one outbox item, its content in memory) and a
:class:`Snapshot` (the state every rule needs, read for a whole batch in one
query round by ``policy.snapshots``). It returns a :class:`Decision` with every
reason that applies, not only the first.

Outcomes, strongest first: ``block`` (never sent), ``hold`` (a supervisor must
approve), ``defer`` (a rate or timing rule passes later, at ``defer_until``),
``allow``. A ``flag`` reason does not change the outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from policy.matching import LexiconMatcher


class Category(StrEnum):
    """Meta's message categories, which consent is given for."""

    MARKETING = "marketing"
    UTILITY = "utility"
    AUTHENTICATION = "authentication"
    SERVICE = "service"


class Outcome(StrEnum):
    """What a decision does to an item (``OUTCOME_RANK`` orders them)."""

    ALLOW = "allow"
    DEFER = "defer"
    HOLD = "hold"
    BLOCK = "block"


class Effect(StrEnum):
    """What one reason asks for; the strongest effect is the decision's outcome."""

    FLAG = "flag"  # noted, sent anyway
    DEFER = "defer"
    HOLD = "hold"
    BLOCK = "block"


OUTCOME_RANK = {Outcome.ALLOW: 0, Outcome.DEFER: 1, Outcome.HOLD: 2, Outcome.BLOCK: 3}


class Source(StrEnum):
    """Where an outbox item came from."""

    AGENT = "agent"
    CAMPAIGN = "campaign"
    AUTO_REPLY = "auto_reply"
    API = "api"


class ContentKind(StrEnum):
    TEXT = "text"
    TEMPLATE = "template"
    MEDIA = "media"
    INTERACTIVE = "interactive"


@dataclass(frozen=True, slots=True)
class Draft:
    """One outbox item as the rules see it. Its text lives only in memory.

    ``text`` is what the customer reads apart from a template's fixed parts: a
    free-form body, a media caption or an interactive message's texts. For a
    template, ``variables`` are the values given for its parameters.
    ``content_digest`` is a keyed digest of the content (same content, same
    digest), for duplicate spacing. ``recipient_zone`` is the IANA zone of the
    recipient's number, or ``None`` when the number's country has several zones
    (then the account's default for ``recipient_region`` applies).
    """

    item_id: str
    account_id: str
    portfolio_id: str  # the business portfolio the account's messaging tier belongs to
    source: Source
    sender_id: str
    contact_id: str
    recipient_region: str | None
    recipient_zone: str | None
    kind: ContentKind
    category: Category
    text: str = ""
    template_id: int | None = None
    variables: Mapping[str, str] = field(default_factory=dict)
    content_digest: bytes = b""
    answers_customer: bool = False  # a reply to the customer's message (not business-initiated)
    created_at: datetime | None = None
    send_at: datetime | None = None
    expires_at: datetime | None = None
    approved_by: str | None = None  # the supervisor who approved a held item


class QuietHours(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """No sends before ``start`` or from ``end`` on, in the recipient's local time."""

    start: time = time(8, 0)
    end: time = time(22, 0)


class WarmupStep(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """From ``from_day`` days after a number's first send, at most ``per_second``."""

    from_day: int
    per_second: int


class PolicySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An account's send policy; every field has the default a careful firm starts from."""

    quiet_hours: QuietHours = QuietHours()
    # Zone used for a number whose country has several (ISO region -> IANA zone).
    region_zones: dict[str, str] = msgspec.field(default_factory=dict)
    # Which other categories' opt-in also covers a category (utility -> [marketing]).
    consent_covers: dict[str, list[str]] = msgspec.field(default_factory=dict)
    messages_per_second: int = 80
    warmup: list[WarmupStep] = msgspec.field(
        default_factory=lambda: [
            WarmupStep(0, 10),
            WarmupStep(3, 40),
            WarmupStep(7, 80),
        ]
    )
    pair_interval_seconds: float = 6.0
    pair_burst: int = 3
    marketing_cap: int = 2
    marketing_cap_days: int = 30
    duplicate_interval_minutes: int = 60
    # Unique business-initiated recipients per rolling 24 hours (None: unlimited).
    messaging_tier: int | None = 250


MESSAGING_TIERS = (250, 2_000, 10_000, 100_000, None)
MAX_MESSAGES_PER_SECOND = 1_000


@dataclass(frozen=True, slots=True)
class ConsentState:
    """The latest opt-in and opt-out of one contact for one category.

    A ``*_how`` text completes "opted out of marketing on 2026-11-03 ...", for
    example "by replying STOP" or "through the web form".
    """

    opted_in_at: datetime | None = None
    opted_in_how: str | None = None
    opted_out_at: datetime | None = None
    opted_out_how: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateParameter:
    """One variable of a template: its name and type (``text``, ``number``,
    ``currency``, ``date``, ``url``)."""

    name: str
    type: str = "text"


@dataclass(frozen=True, slots=True)
class TemplateView:
    """A registered template as the rules need it."""

    id: int
    name: str
    language: str
    category: Category
    our_status: str  # draft, submitted, approved, rejected
    meta_status: str | None  # APPROVED, PENDING, PAUSED, ...
    parameters: tuple[TemplateParameter, ...] = ()


@dataclass(frozen=True, slots=True)
class LexiconHit:
    """A lexicon term found in an item's text, and what the term does."""

    term_id: int
    term: str
    action: str  # flag, hold, block
    where: str  # text, variable:<name>, caption


@dataclass(frozen=True, slots=True)
class NumberState:
    """What dispatch has learnt about one business number."""

    first_send_at: datetime | None = None
    stopped_reason: str | None = None  # 368, 131031, 131048: all sending stopped
    backoff_until: datetime | None = None


@dataclass(slots=True)
class Snapshot:
    """The state a batch of drafts is decided against.

    Filled by ``policy.snapshots`` in one query round per batch; every map is
    keyed as its comment says and holds only the batch's accounts and contacts.
    The rate histories are lists of send times, oldest first; the batch decider
    appends each allowed draft's (``note_allowed``), so that the batch's own
    items count against the limits, while ``decide`` itself never mutates it.
    """

    version: str
    now: datetime
    settings: dict[str, PolicySettings]  # account id ->
    senders: dict[str, frozenset[str]]  # account id -> principal ids that may send from it
    approvers: dict[str, frozenset[str]]  # account id -> principal ids that may approve
    consent: dict[tuple[str, Category], ConsentState]  # (contact id, category) ->
    last_inbound: dict[tuple[str, str], datetime]  # (account id, contact id) -> window opener
    templates: dict[int, TemplateView]
    lexicon: LexiconMatcher  # the active terms; find(text) -> (term id, term, action)
    numbers: dict[str, NumberState]  # account id ->
    number_sends: dict[str, list[datetime]] = field(default_factory=dict)  # account id -> last 1 s
    # (account id, contact id) -> sends from that number to that recipient (pair rate)
    pair_sends: dict[tuple[str, str], list[datetime]] = field(default_factory=dict)
    pair_backoff: dict[tuple[str, str], datetime] = field(default_factory=dict)
    # portfolio id -> {contact id: first business-initiated send in the last 24 h}
    tier_recipients: dict[str, dict[str, datetime]] = field(default_factory=dict)
    marketing_sends: dict[str, list[datetime]] = field(default_factory=dict)  # contact id ->
    # (contact id, content digest) -> last time that content went to the contact
    recent_content: dict[tuple[str, bytes], datetime] = field(default_factory=dict)

    def settings_for(self, account_id: str) -> PolicySettings:
        return self.settings.get(account_id) or PolicySettings()


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a rule objected (or flagged): a stable ``code``, the rule, what it asks
    for, its parameters and a sentence a person can read."""

    code: str
    rule: str
    effect: Effect
    message: str
    params: Mapping[str, Any] = field(default_factory=dict)
    until: datetime | None = None  # for a defer: when the rule would pass

    def as_dict(self) -> dict[str, Any]:
        """The reason as JSON-ready data (times in ISO 8601)."""
        # By hand: dataclasses.asdict deep-copies every parameter, which cost more
        # than the decision itself over a batch.
        return {
            "code": self.code,
            "rule": self.rule,
            "effect": self.effect.value,
            "message": self.message,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "until": self.until.isoformat() if self.until else None,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of every rule for one draft, and the snapshot it was made on."""

    outcome: Outcome
    reasons: tuple[Reason, ...]
    snapshot_version: str
    decided_at: datetime
    defer_until: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "reasons": [r.as_dict() for r in self.reasons],
            "snapshot_version": self.snapshot_version,
            "decided_at": self.decided_at.isoformat(),
            "defer_until": self.defer_until.isoformat() if self.defer_until else None,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple | list | set | frozenset):
        return [_jsonable(v) for v in value]
    return value
