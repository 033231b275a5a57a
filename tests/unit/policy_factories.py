"""Small factories of drafts and snapshots for the policy decision's unit tests (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
from phonenumbers import timezone

from policy.decision import (
    Category,
    ConsentState,
    ContentKind,
    Decision,
    Draft,
    NumberState,
    PolicySettings,
    Snapshot,
    Source,
    TemplateParameter,
    TemplateView,
)
from policy.matching import LexiconMatcher

# 12:00 UTC: 12:00 in London, 21:00 in Tokyo, 07:00 in New York (EST).
NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
ACCOUNT = "acc-1"
PORTFOLIO = "pf-1"
CONTACT = "ct-1"
AGENT = "agent-1"
SUPERVISOR = "sup-1"
TEMPLATE = 7

TERMS = [
    (1, "guaranteed returns", "block"),
    (2, "insider", "hold"),
    (3, "promise", "flag"),
    (4, "元本保証", "block"),  # "principal guaranteed"
    (5, "必ず儲かる", "hold"),  # "sure to profit"
]


def zone_for(e164: str) -> str | None:
    """The recipient's zone as the loader finds it: the number's one zone, else ``None``."""
    zones = timezone.time_zones_for_number(phonenumbers.parse(e164))
    return zones[0] if len(zones) == 1 and zones[0] != "Etc/Unknown" else None


def template(**overrides: Any) -> TemplateView:
    fields: dict[str, Any] = {
        "id": TEMPLATE,
        "name": "order_update",
        "language": "en",
        "category": Category.UTILITY,
        "our_status": "approved",
        "meta_status": "APPROVED",
        "parameters": (TemplateParameter("name"), TemplateParameter("order", "number")),
    }
    return TemplateView(**(fields | overrides))


def draft(**overrides: Any) -> Draft:
    """A free-form service reply from a permitted agent, inside the window, at noon in London."""
    fields: dict[str, Any] = {
        "item_id": "item-1",
        "account_id": ACCOUNT,
        "portfolio_id": PORTFOLIO,
        "source": Source.AGENT,
        "sender_id": AGENT,
        "contact_id": CONTACT,
        "recipient_region": "GB",
        "recipient_zone": "Europe/London",
        "kind": ContentKind.TEXT,
        "category": Category.SERVICE,
        "text": "Your card has been sent.",
        "content_digest": b"digest-1",
        "created_at": NOW,
    }
    return Draft(**(fields | overrides))


def template_draft(**overrides: Any) -> Draft:
    """A utility template with its variables filled (the contact opted in to utility)."""
    fields: dict[str, Any] = {
        "kind": ContentKind.TEMPLATE,
        "category": Category.UTILITY,
        "text": "",
        "template_id": TEMPLATE,
        "variables": {"name": "Ana", "order": "1234"},
    }
    return draft(**(fields | overrides))


def opted_in(
    at: datetime = NOW - timedelta(days=10), how: str = "through the web form"
) -> ConsentState:
    return ConsentState(opted_in_at=at, opted_in_how=how)


def snapshot(**overrides: Any) -> Snapshot:
    """A snapshot in which the default ``draft()`` and ``template_draft()`` are allowed."""
    fields: dict[str, Any] = {
        "version": "v1",
        "now": NOW,
        "settings": {ACCOUNT: PolicySettings()},
        "senders": {ACCOUNT: frozenset({AGENT})},
        "approvers": {ACCOUNT: frozenset({SUPERVISOR})},
        "consent": {(CONTACT, Category.UTILITY): opted_in()},
        "last_inbound": {(ACCOUNT, CONTACT): NOW - timedelta(hours=1)},
        "templates": {TEMPLATE: template()},
        "lexicon": LexiconMatcher(TERMS),
        "numbers": {ACCOUNT: NumberState(first_send_at=NOW - timedelta(days=30))},
    }
    return Snapshot(**(fields | overrides))


def codes(decision: Decision) -> list[str]:
    return [reason.code for reason in decision.reasons]
