"""The send rules and the pure decision over them.

``decide(draft, snapshot)`` runs every rule below and keeps every reason any
of them gives; the outcome is the strongest effect (block > hold > defer >
allow; a flag changes nothing). ``note_allowed`` adds an allowed draft to the
snapshot's rate histories, so that a batch's own items count against the limits.

Choices the issue leaves open:

* The service window is open while ``now < last inbound + 24 h``; a draft is
  business-initiated unless it is sent inside an open window.
* Meta's statuses a template may be sent under are ``APPROVED`` and
  ``REINSTATED`` (back in service after a pause or an appeal). ``FLAGGED``
  (quality low, about to be paused), ``PAUSED``, ``PENDING`` and the rest are not.
* When the template's category differs from the draft's, the template's wins
  (Meta bills and enforces by it) and a ``template.category_mismatch`` flag says so.
* Quiet hours are judged at the time the draft would go: ``send_at`` if it is
  later than now. ``start == end`` means no quiet hours.
* A rate history entry counts while it is inside its window (``t > now - window``).
* An approval (``approved_by``) counts only from a principal in
  ``snapshot.approvers`` for the account who is not the sender; it turns hold
  reasons into flags marked ``approved_by``; blocks still block.
* ``defer_until`` is set when the outcome is defer or hold (a held draft still
  waits for its rates once approved); a defer past ``expires_at``, or a draft
  already expired, blocks with ``expired``.
"""

from __future__ import annotations

import bisect
import heapq
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policy.decision import (
    OUTCOME_RANK,
    Category,
    ConsentState,
    ContentKind,
    Decision,
    Draft,
    Effect,
    Outcome,
    PolicySettings,
    Reason,
    Snapshot,
    TemplateView,
)

__all__ = ["META_SENDABLE", "WINDOW", "decide", "note_allowed"]

WINDOW = timedelta(hours=24)
TIER_WINDOW = timedelta(hours=24)
NUMBER_WINDOW = timedelta(seconds=1)
META_SENDABLE = frozenset({"APPROVED", "REINSTATED"})
_EFFECT_OUTCOME = {
    Effect.BLOCK: Outcome.BLOCK,
    Effect.HOLD: Outcome.HOLD,
    Effect.DEFER: Outcome.DEFER,
    Effect.FLAG: Outcome.ALLOW,
}
# Meta refuses a text parameter with a line break or tab, or more than four spaces in a row.
_BAD_TEXT = re.compile(r"[\n\t]| {5}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_AMOUNT = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d{1,3})?"
_CURRENCY = re.compile(rf"(?:[A-Z]{{3}} ?{_AMOUNT}|{_AMOUNT}(?: ?[A-Z]{{3}})?)")
_UTC = ZoneInfo("UTC")


@dataclass(frozen=True, slots=True)
class _Case:
    """One draft with what several rules derive from it, computed once."""

    draft: Draft
    snapshot: Snapshot
    settings: PolicySettings
    now: datetime
    template: TemplateView | None
    category: Category  # the template's when there is one
    last_inbound: datetime | None
    in_window: bool

    @property
    def business_initiated(self) -> bool:
        return not self.in_window

    @property
    def pair(self) -> tuple[str, str]:
        return (self.draft.account_id, self.draft.contact_id)


def _case(draft: Draft, snapshot: Snapshot) -> _Case:
    template = None
    if draft.kind is ContentKind.TEMPLATE and draft.template_id is not None:
        template = snapshot.templates.get(draft.template_id)
    last = snapshot.last_inbound.get((draft.account_id, draft.contact_id))
    now = snapshot.now
    return _Case(
        draft=draft,
        snapshot=snapshot,
        settings=snapshot.settings_for(draft.account_id),
        now=now,
        template=template,
        category=template.category if template is not None else draft.category,
        last_inbound=last,
        in_window=last is not None and now < last + WINDOW,
    )


def _reason(
    code: str,
    rule: str,
    effect: Effect,
    message: str,
    *,
    until: datetime | None = None,
    **params: Any,
) -> Reason:
    return Reason(code=code, rule=rule, effect=effect, message=message, params=params, until=until)


def _day(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d}"


def _stamp(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


# -- permission ---------------------------------------------------------------------


def _permission(case: _Case) -> Iterator[Reason]:
    draft = case.draft
    if draft.sender_id not in case.snapshot.senders.get(draft.account_id, frozenset()):
        yield _reason(
            "permission.not_granted",
            "permission",
            Effect.BLOCK,
            "the sender may not send from this business number (no outbox.send for it)",
            sender_id=draft.sender_id,
            account_id=draft.account_id,
        )


# -- consent ------------------------------------------------------------------------


def _granted(state: ConsentState | None) -> bool:
    """An opt-in with no opt-out at or after it (resuming is a later opt-in)."""
    if state is None or state.opted_in_at is None:
        return False
    return state.opted_out_at is None or state.opted_out_at < state.opted_in_at


def _opted_out(state: ConsentState | None) -> bool:
    return (
        state is not None
        and state.opted_out_at is not None
        and (state.opted_in_at is None or state.opted_out_at >= state.opted_in_at)
    )


def _opt_out_reason(category: str, state: ConsentState, of: Category) -> Reason:
    assert state.opted_out_at is not None
    how = f" {state.opted_out_how}" if state.opted_out_how else ""
    return _reason(
        "consent.opted_out",
        "consent",
        Effect.BLOCK,
        f"the customer opted out of {category} on {_day(state.opted_out_at)}{how}",
        category=of,
        opted_out_at=state.opted_out_at,
        how=state.opted_out_how,
    )


def _consent(case: _Case) -> Iterator[Reason]:
    category = case.category
    if category is Category.SERVICE:
        return
    contact = case.draft.contact_id
    consent = case.snapshot.consent
    own = consent.get((contact, category))
    if _opted_out(own):
        assert own is not None
        yield _opt_out_reason(category.value, own, category)
        return
    covering: list[Category] = [category]
    if category is not Category.MARKETING:
        for name in case.settings.consent_covers.get(category.value, []):
            try:
                covering.append(Category(name))
            except ValueError:
                continue  # a settings typo covers nothing
    if any(_granted(consent.get((contact, c))) for c in covering):
        return
    for other in covering[1:]:
        state = consent.get((contact, other))
        if _opted_out(state):
            assert state is not None
            yield _opt_out_reason(f"{other.value} (which covers {category.value})", state, other)
            return
    covered = " or ".join(c.value for c in covering)
    yield _reason(
        f"consent.{category.value}_no_opt_in",
        "consent",
        Effect.BLOCK,
        f"the customer has no recorded opt-in to {covered} messages",
        category=category,
        accepted=[c.value for c in covering],
    )


# -- the customer service window ------------------------------------------------------


def _window(case: _Case) -> Iterator[Reason]:
    if case.draft.kind is ContentKind.TEMPLATE or case.in_window:
        return
    last = case.last_inbound
    if last is None:
        message = "the customer has never opened a service window (no inbound message)"
    else:
        message = (
            f"the customer service window closed at {_stamp(last + WINDOW)}, 24 hours "
            f"after the customer's last message"
        )
    yield _reason(
        "window.closed_free_form",
        "window",
        Effect.BLOCK,
        message + "; outside it only an approved template may be sent",
        last_inbound_at=last,
        closed_at=None if last is None else last + WINDOW,
    )


# -- templates ----------------------------------------------------------------------


def _check_value(kind: str, value: str) -> str | None:
    """What is wrong with ``value`` for a parameter of type ``kind``, or ``None``."""
    if kind == "text":
        if not value.strip():
            return "it is blank"
        if _BAD_TEXT.search(value):
            return "Meta refuses line breaks, tabs or more than four spaces in a row"
        return None
    if kind == "number":
        return None if _NUMBER.fullmatch(value) else "it is not a number"
    if kind == "currency":
        return None if _CURRENCY.fullmatch(value) else "it is not an amount (like 'USD 12.50')"
    if kind == "date":
        try:
            if len(value) == 10:
                date.fromisoformat(value)
            else:
                datetime.fromisoformat(value)
        except ValueError:
            return "it is not an ISO 8601 date (like 2026-11-03)"
        return None
    if kind == "url":
        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or any(c.isspace() for c in value)
        ):
            return "it is not an http(s) address"
        return None
    return f"the template declares an unknown parameter type {kind!r}"


def _template(case: _Case) -> Iterator[Reason]:
    draft = case.draft
    if draft.kind is not ContentKind.TEMPLATE:
        return
    template = case.template
    if template is None:
        yield _reason(
            "template.unknown",
            "template",
            Effect.BLOCK,
            "the template is not in the registry",
            template_id=draft.template_id,
        )
        return
    ids: dict[str, Any] = {"template_id": template.id, "template": template.name}
    if template.our_status != "approved":
        yield _reason(
            "template.not_approved_by_us",
            "template",
            Effect.BLOCK,
            f"the template {template.name!r} is {template.our_status} here, not approved",
            status=template.our_status,
            **ids,
        )
    meta = (template.meta_status or "").upper()
    if meta not in META_SENDABLE:
        yield _reason(
            "template.not_approved_by_meta",
            "template",
            Effect.BLOCK,
            f"Meta's status of the template {template.name!r} is "
            f"{template.meta_status or 'unknown'}, not APPROVED",
            meta_status=template.meta_status,
            **ids,
        )
    if template.category is not draft.category:
        yield _reason(
            "template.category_mismatch",
            "template",
            Effect.FLAG,
            f"the item says {draft.category.value} but the template is "
            f"{template.category.value}; the template's category applies",
            item_category=draft.category,
            template_category=template.category,
            **ids,
        )
    declared = set()
    for parameter in template.parameters:
        declared.add(parameter.name)
        value = draft.variables.get(parameter.name)
        if value is None or value == "":
            yield _reason(
                "template.variable_missing",
                "template",
                Effect.BLOCK,
                f"the template's variable {parameter.name!r} is not filled",
                name=parameter.name,
                **ids,
            )
            continue
        problem = _check_value(parameter.type, value)
        if problem is not None:
            yield _reason(
                "template.variable_invalid",
                "template",
                Effect.BLOCK,
                f"the value of {parameter.name!r} is not a valid {parameter.type}: {problem}",
                name=parameter.name,
                type=parameter.type,
                problem=problem,
                **ids,
            )
    for name in sorted(set(draft.variables) - declared):
        yield _reason(
            "template.variable_unknown",
            "template",
            Effect.BLOCK,
            f"the template has no variable {name!r} (Meta refuses extra parameters)",
            name=name,
            **ids,
        )


# -- sensitive words ------------------------------------------------------------------

_LEXICON_EFFECT = {"block": Effect.BLOCK, "hold": Effect.HOLD, "flag": Effect.FLAG}


def _lexicon(case: _Case) -> Iterator[Reason]:
    draft = case.draft
    places = []
    if draft.text:
        places.append(("caption" if draft.kind is ContentKind.MEDIA else "text", draft.text))
    places.extend((f"variable:{name}", value) for name, value in draft.variables.items())
    find = case.snapshot.lexicon.find
    for where, text in places:
        for hit in find(text):
            # An unknown action is treated as the strongest: the lexicon refuses those anyway.
            effect = _LEXICON_EFFECT.get(hit.action, Effect.BLOCK)
            # The term stays out of the reason (the lexicon keeps it sealed); its id names it.
            yield _reason(
                f"lexicon.{effect.value}",
                "lexicon",
                effect,
                f"the {where.replace(':', ' ')} holds lexicon term {hit.term_id}, "
                f"which {'flags' if effect is Effect.FLAG else effect.value + 's'} a message",
                term_id=hit.term_id,
                action=hit.action,
                where=where,
            )


# -- quiet hours ----------------------------------------------------------------------


def _zone(case: _Case) -> tuple[ZoneInfo, bool]:
    """The recipient's zone, and whether it is known (else UTC)."""
    draft = case.draft
    name = draft.recipient_zone
    if name is None and draft.recipient_region:
        name = case.settings.region_zones.get(draft.recipient_region.upper())
    if name:
        try:
            return ZoneInfo(name), True
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return _UTC, False


def _quiet_hours(case: _Case) -> Iterator[Reason]:
    draft = case.draft
    if case.category is Category.AUTHENTICATION or (draft.answers_customer and case.in_window):
        return
    hours = case.settings.quiet_hours
    start, end = hours.start, hours.end
    if start == end:
        return
    at = max(case.now, draft.send_at) if draft.send_at is not None else case.now
    zone, known = _zone(case)
    local = at.astimezone(zone)
    now_t = local.time().replace(tzinfo=None)
    allowed = start <= now_t < end if start < end else (now_t >= start or now_t < end)
    if allowed:
        return
    next_start = datetime.combine(local.date(), start, tzinfo=zone)
    if next_start <= local:
        next_start = datetime.combine(local.date() + timedelta(days=1), start, tzinfo=zone)
    until = next_start.astimezone(UTC)
    where = zone.key if known else "UTC (the recipient's zone is unknown)"
    yield _reason(
        "quiet_hours",
        "quiet_hours",
        Effect.DEFER,
        f"it is {now_t:%H:%M} for the recipient ({where}), outside the sending hours "
        f"{start:%H:%M}-{end:%H:%M}; it waits until {next_start:%H:%M} their time",
        until=until,
        zone=zone.key,
        zone_known=known,
        local_time=now_t,
        start=start,
        end=end,
    )


# -- scheduling -----------------------------------------------------------------------


def _scheduled(case: _Case) -> Iterator[Reason]:
    send_at = case.draft.send_at
    if send_at is not None and send_at > case.now:
        yield _reason(
            "scheduled",
            "scheduled",
            Effect.DEFER,
            f"the item is scheduled for {_stamp(send_at)}",
            until=send_at,
            send_at=send_at,
        )


# -- rates ----------------------------------------------------------------------------


def _recent(history: list[datetime], since: datetime) -> list[datetime]:
    """The entries of a sorted history strictly after ``since``."""
    return history[bisect.bisect_right(history, since) :]


def _passes_at(recent: list[datetime], limit: int, window: timedelta) -> datetime:
    """When fewer than ``limit`` of the sorted ``recent`` sends are inside ``window``."""
    return recent[len(recent) - limit] + window if limit > 0 else datetime.max.replace(tzinfo=UTC)


def _number(case: _Case) -> Iterator[Reason]:
    draft = case.draft
    state = case.snapshot.numbers.get(draft.account_id)
    if state is not None and state.stopped_reason is not None:
        yield _reason(
            "number.stopped",
            "rate",
            Effect.BLOCK,
            f"all sending from this business number is stopped (Meta error {state.stopped_reason})",
            stopped_reason=state.stopped_reason,
        )
    if state is not None and state.backoff_until is not None and state.backoff_until > case.now:
        yield _reason(
            "number.backoff",
            "rate",
            Effect.DEFER,
            f"this business number is backing off after Meta's throughput errors until "
            f"{_stamp(state.backoff_until)}",
            until=state.backoff_until,
            backoff_until=state.backoff_until,
        )


def _warmup_limit(case: _Case) -> tuple[int | None, int]:
    """The warm-up schedule's per-second limit today (``None``: none), and the day."""
    state = case.snapshot.numbers.get(case.draft.account_id)
    first = state.first_send_at if state is not None else None
    day = max((case.now - first).days, 0) if first is not None else 0
    limit = None
    for step in sorted(case.settings.warmup, key=lambda s: s.from_day):
        if step.from_day <= day:
            limit = step.per_second
    return limit, day


def _number_rate(case: _Case) -> Iterator[Reason]:
    settings = case.settings
    warmup, day = _warmup_limit(case)
    limit = settings.messages_per_second
    code = "rate.number"
    if warmup is not None and warmup < limit:
        limit, code = warmup, "rate.warmup"
    history = case.snapshot.number_sends.get(case.draft.account_id, [])
    recent = _recent(history, case.now - NUMBER_WINDOW)
    if len(recent) < limit:
        return
    why = f"the warm-up limit on day {day}" if code == "rate.warmup" else "the number's rate"
    yield _reason(
        code,
        "rate",
        Effect.DEFER,
        f"this business number sent {len(recent)} messages in the last second; "
        f"{why} is {limit} per second",
        until=_passes_at(recent, limit, NUMBER_WINDOW),
        limit=limit,
        sent=len(recent),
        days_since_first_send=day,
    )


def _pair_rate(case: _Case) -> Iterator[Reason]:
    settings = case.settings
    interval = settings.pair_interval_seconds
    burst = settings.pair_burst
    history = case.snapshot.pair_sends.get(case.pair, [])
    if history and interval > 0:
        # A token bucket: full (``burst``) before the first send, one token back per interval.
        tokens = float(burst)
        last = history[0]
        for sent in history:
            tokens = min(float(burst), tokens + (sent - last).total_seconds() / interval) - 1
            last = sent
        now_tokens = min(float(burst), tokens + (case.now - last).total_seconds() / interval)
        if now_tokens < 1 - 1e-9:
            until = last + timedelta(seconds=math.ceil((1 - tokens) * interval * 1e6) / 1e6)
            yield _reason(
                "rate.pair",
                "rate",
                Effect.DEFER,
                f"this recipient may get {burst} messages at once from this number, then one "
                f"every {interval:g} seconds",
                until=until,
                burst=burst,
                interval_seconds=interval,
            )
    backoff = case.snapshot.pair_backoff.get(case.pair)
    if backoff is not None and backoff > case.now:
        yield _reason(
            "rate.pair_backoff",
            "rate",
            Effect.DEFER,
            f"sending to this recipient is backing off after Meta's pair-rate error until "
            f"{_stamp(backoff)}",
            until=backoff,
            backoff_until=backoff,
        )


def _tier(case: _Case) -> Iterator[Reason]:
    tier = case.settings.messaging_tier
    if tier is None or not case.business_initiated:
        return
    since = case.now - TIER_WINDOW
    recipients = case.snapshot.tier_recipients.get(case.draft.portfolio_id, {})
    first = recipients.get(case.draft.contact_id)
    if (first is not None and first > since) or len(recipients) < tier:
        return
    count = sum(1 for t in recipients.values() if t > since)
    if count < tier:
        return
    # Only the oldest entries say when one slot frees: no full sort of a large tier.
    oldest = heapq.nsmallest(count - tier + 1, (t for t in recipients.values() if t > since))
    yield _reason(
        "rate.tier",
        "rate",
        Effect.DEFER,
        f"the business portfolio has reached its messaging limit of {tier:,} recipients "
        f"outside a service window in 24 hours",
        until=oldest[-1] + TIER_WINDOW,
        tier=tier,
        recipients=count,
    )


def _marketing_cap(case: _Case) -> Iterator[Reason]:
    if case.category is not Category.MARKETING:
        return
    settings = case.settings
    window = timedelta(days=settings.marketing_cap_days)
    history = case.snapshot.marketing_sends.get(case.draft.contact_id, [])
    recent = _recent(history, case.now - window)
    if len(recent) < settings.marketing_cap:
        return
    yield _reason(
        "rate.marketing_cap",
        "rate",
        Effect.DEFER,
        f"the customer has had {len(recent)} marketing messages in {settings.marketing_cap_days} "
        f"days; the cap is {settings.marketing_cap}",
        until=_passes_at(recent, settings.marketing_cap, window),
        cap=settings.marketing_cap,
        days=settings.marketing_cap_days,
        sent=len(recent),
    )


def _duplicate(case: _Case) -> Iterator[Reason]:
    draft = case.draft
    if not draft.content_digest:
        return
    last = case.snapshot.recent_content.get((draft.contact_id, draft.content_digest))
    minutes = case.settings.duplicate_interval_minutes
    if last is None or case.now - last >= timedelta(minutes=minutes):
        return
    yield _reason(
        "duplicate_content",
        "duplicate_content",
        Effect.HOLD,
        f"the same content went to this customer at {_stamp(last)}, less than {minutes} "
        f"minutes ago",
        last_sent_at=last,
        interval_minutes=minutes,
    )


RULES: tuple[Callable[[_Case], Iterator[Reason]], ...] = (
    _permission,
    _consent,
    _window,
    _template,
    _lexicon,
    _quiet_hours,
    _scheduled,
    _number,
    _number_rate,
    _pair_rate,
    _tier,
    _marketing_cap,
    _duplicate,
)


# -- the decision ---------------------------------------------------------------------


def _approval(case: _Case, reasons: list[Reason]) -> list[Reason]:
    """Hold reasons waived by a valid approval (as flags marked ``approved_by``)."""
    draft = case.draft
    approver = draft.approved_by
    if approver is None:
        return reasons
    may = case.snapshot.approvers.get(draft.account_id, frozenset())
    if approver not in may or approver == draft.sender_id:
        why = "approved their own item" if approver == draft.sender_id else "may not approve"
        reasons.append(
            _reason(
                "approval.not_valid",
                "approval",
                Effect.FLAG,
                f"the approval does not count: {approver} {why} here",
                approved_by=approver,
            )
        )
        return reasons
    return [
        replace(
            r,
            effect=Effect.FLAG,
            params={**r.params, "approved_by": approver},
            message=f"{r.message} (approved by {approver})",
        )
        if r.effect is Effect.HOLD
        else r
        for r in reasons
    ]


def decide(draft: Draft, snapshot: Snapshot) -> Decision:
    """Every rule's verdict on ``draft`` against ``snapshot`` (which it does not change)."""
    case = _case(draft, snapshot)
    reasons = [reason for rule in RULES for reason in rule(case)]
    reasons = _approval(case, reasons)
    defers = [r.until for r in reasons if r.effect is Effect.DEFER and r.until is not None]
    defer_until = max(defers) if defers else None
    expires = draft.expires_at
    if expires is not None and (case.now >= expires or (defer_until and defer_until > expires)):
        message = (
            f"the item expired at {_stamp(expires)}"
            if case.now >= expires
            else f"the item could not go before it expires at {_stamp(expires)}"
        )
        reasons.append(
            _reason(
                "expired",
                "expiry",
                Effect.BLOCK,
                message,
                expires_at=expires,
                defer_until=defer_until,
            )
        )
    outcome = max(
        (_EFFECT_OUTCOME[r.effect] for r in reasons),
        key=OUTCOME_RANK.__getitem__,
        default=Outcome.ALLOW,
    )
    return Decision(
        outcome=outcome,
        reasons=tuple(reasons),
        snapshot_version=snapshot.version,
        decided_at=snapshot.now,
        defer_until=defer_until if outcome in (Outcome.DEFER, Outcome.HOLD) else None,
    )


def note_allowed(draft: Draft, snapshot: Snapshot, at: datetime) -> None:
    """Count ``draft``, allowed to go at ``at``, in ``snapshot``'s rate histories."""
    case = _case(draft, snapshot)
    bisect.insort(snapshot.number_sends.setdefault(draft.account_id, []), at)
    bisect.insort(snapshot.pair_sends.setdefault(case.pair, []), at)
    if case.business_initiated:
        recipients = snapshot.tier_recipients.setdefault(draft.portfolio_id, {})
        first = recipients.get(draft.contact_id)
        if first is None or first <= at - TIER_WINDOW:
            recipients[draft.contact_id] = at
    if case.category is Category.MARKETING:
        bisect.insort(snapshot.marketing_sends.setdefault(draft.contact_id, []), at)
    if draft.content_digest:
        key = (draft.contact_id, draft.content_digest)
        last = snapshot.recent_content.get(key)
        if last is None or last < at:
            snapshot.recent_content[key] = at
