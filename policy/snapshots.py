"""The state a batch of drafts is decided against, read in one query round.

Each kind of state is one query for the whole batch (its accounts, contacts,
templates and content digests), however many drafts and rules there are: a
batch of 10,000 items costs the same dozen queries as a batch of one.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from archiver.accounts.models import Account
from archiver.core.clock import Clock
from archiver.identity.services import Permission, permission_holders
from archiver.records.models import Record
from archiver.whatsapp.items import SOURCE_BUSINESS_APP, SOURCE_CLOUD_API
from policy.decision import (
    Category,
    ConsentState,
    Draft,
    NumberState,
    PolicySettings,
    Snapshot,
    TemplateView,
)
from policy.matching import LexiconMatcher
from policy.models import (
    LexiconTerm,
    NumberSendState,
    OutboxItem,
    PairBackoff,
    PolicySettingsRow,
    WindowClosure,
)
from policy.rules import WINDOW

# Inbound messages from these sources open the customer service window; history
# sync and chat imports never do.
WINDOW_SOURCES = (SOURCE_CLOUD_API, SOURCE_BUSINESS_APP)
# Items that count as sent for the rate rules (dispatching: Graph may have it).
SENT_STATES = ("dispatching", "sent", "delivered", "read")
TIERS = {
    "TIER_250": 250,
    "TIER_1K": 1_000,
    "TIER_2K": 2_000,
    "TIER_10K": 10_000,
    "TIER_100K": 100_000,
    "TIER_UNLIMITED": None,
}


class ConsentSource(Protocol):
    """The consent ledger's batch read."""

    async def latest(
        self, session: AsyncSession, contact_ids: Sequence[str]
    ) -> dict[tuple[str, Category], ConsentState]: ...


class TemplateSource(Protocol):
    """The template registry's batch read."""

    async def views(
        self, session: AsyncSession, template_ids: Sequence[int]
    ) -> dict[int, TemplateView]: ...


def decode_settings(raw: str | bytes) -> PolicySettings:
    """An account's stored settings."""
    return msgspec.json.decode(raw, type=PolicySettings)


class SnapshotLoader:
    """Reads a :class:`Snapshot` for a batch of drafts."""

    def __init__(self, clock: Clock, consent: ConsentSource, templates: TemplateSource) -> None:
        self._clock = clock
        self._consent = consent
        self._templates = templates
        self._lexicon_key: tuple[object, ...] | None = None
        self._lexicon: LexiconMatcher = LexiconMatcher([])

    async def load(self, session: AsyncSession, drafts: Sequence[Draft]) -> Snapshot:
        """The snapshot for ``drafts``, as of now."""
        now = self._clock.now()
        accounts = sorted({d.account_id for d in drafts})
        contacts = sorted({d.contact_id for d in drafts})
        settings = await self._settings(session, accounts)
        versions = {a: v for a, (_, v) in settings.items()}
        resolved = {a: s for a, (s, _) in settings.items()}
        longest_pair = max(
            (s.pair_interval_seconds * max(s.pair_burst, 1) for s in resolved.values()),
            default=PolicySettings().pair_interval_seconds * PolicySettings().pair_burst,
        )
        longest_cap = max((s.marketing_cap_days for s in resolved.values()), default=30)
        longest_dup = max((s.duplicate_interval_minutes for s in resolved.values()), default=60)
        portfolios = await self._portfolios(session, accounts)
        numbers, tiers = await self._numbers(session, accounts)
        for account_id, tier in tiers.items():
            # Meta's current limit, from its webhooks, wins over the configured one.
            resolved[account_id] = msgspec.structs.replace(
                resolved[account_id], messaging_tier=tier
            )
        lexicon, lexicon_version = await self._matcher(session)
        snapshot = Snapshot(
            version="",
            now=now,
            settings=resolved,
            senders=await permission_holders(session, Permission.OUTBOX_SEND, accounts),
            approvers=await permission_holders(session, Permission.OUTBOX_APPROVE, accounts),
            consent=await self._consent.latest(session, contacts),
            last_inbound=await self._last_inbound(session, accounts, contacts, now),
            templates=await self._templates.views(
                session, sorted({d.template_id for d in drafts if d.template_id is not None})
            ),
            lexicon=lexicon,
            numbers=numbers,
            number_sends=await self._number_sends(session, accounts, now),
            pair_sends=await self._pair_sends(
                session, contacts, now - timedelta(seconds=longest_pair)
            ),
            pair_backoff=await self._pair_backoff(session, contacts, now),
            tier_recipients=await self._tier_recipients(session, portfolios, now),
            marketing_sends=await self._marketing_sends(
                session, contacts, now - timedelta(days=longest_cap)
            ),
            recent_content=await self._recent_content(
                session, drafts, now - timedelta(minutes=longest_dup)
            ),
        )
        snapshot.version = _version(versions, lexicon_version, now)
        return snapshot

    async def portfolios(self, session: AsyncSession, account_ids: Sequence[str]) -> dict[str, str]:
        """The business portfolio (WhatsApp Business Account) of each account; an
        account without one is its own."""
        return await self._portfolios(session, account_ids)

    async def _settings(
        self, session: AsyncSession, accounts: Sequence[str]
    ) -> dict[str, tuple[PolicySettings, int]]:
        found: dict[str, tuple[PolicySettings, int]] = {a: (PolicySettings(), 0) for a in accounts}
        rows = await session.scalars(
            select(PolicySettingsRow).where(PolicySettingsRow.account_id.in_(accounts))
        )
        for row in rows:
            found[row.account_id] = (decode_settings(row.settings), row.version)
        return found

    async def _portfolios(self, session: AsyncSession, accounts: Sequence[str]) -> dict[str, str]:
        rows = await session.execute(
            select(Account.id, Account.waba_id).where(Account.id.in_(accounts))
        )
        return {account_id: waba or account_id for account_id, waba in rows}

    async def _numbers(
        self, session: AsyncSession, accounts: Sequence[str]
    ) -> tuple[dict[str, NumberState], dict[str, int | None]]:
        states: dict[str, NumberState] = {}
        tiers: dict[str, int | None] = {}
        rows = await session.scalars(
            select(NumberSendState).where(NumberSendState.account_id.in_(accounts))
        )
        for row in rows:
            states[row.account_id] = NumberState(
                first_send_at=row.first_send_at,
                stopped_reason=row.stopped_reason,
                backoff_until=row.backoff_until,
            )
            if row.messaging_tier in TIERS:
                tiers[row.account_id] = TIERS[row.messaging_tier]
        return states, tiers

    async def _matcher(self, session: AsyncSession) -> tuple[LexiconMatcher, str]:
        """The active lexicon's matcher, rebuilt only when the lexicon changed."""
        key = tuple(
            (
                await session.execute(
                    select(
                        func.count(LexiconTerm.id),
                        func.max(LexiconTerm.id),
                        func.max(LexiconTerm.removed_at),
                    )
                )
            ).one()
        )
        if key != self._lexicon_key:
            rows = await session.execute(
                select(LexiconTerm.id, LexiconTerm.term, LexiconTerm.action)
                .where(LexiconTerm.removed_at.is_(None))
                .order_by(LexiconTerm.id)
            )
            self._lexicon = LexiconMatcher([(i, term, action) for i, term, action in rows])
            self._lexicon_key = key
        return self._lexicon, f"{key[0]}.{key[1]}.{key[2]}"

    async def _last_inbound(
        self, session: AsyncSession, accounts: Sequence[str], contacts: Sequence[str], now: datetime
    ) -> dict[tuple[str, str], datetime]:
        rows = await session.execute(
            select(Record.account_id, Record.contact_id, func.max(Record.occurred_at))
            .where(
                Record.account_id.in_(accounts),
                Record.contact_id.in_(contacts),
                Record.opens_window.is_(True),
                Record.source.in_(WINDOW_SOURCES),
                Record.occurred_at > now - WINDOW,
            )
            .group_by(Record.account_id, Record.contact_id)
        )
        found = {(a, c): when for a, c, when in rows if c is not None}
        if found:
            closures = await session.execute(
                select(
                    WindowClosure.account_id, WindowClosure.contact_id, WindowClosure.closed_at
                ).where(WindowClosure.contact_id.in_(sorted({c for _, c in found})))
            )
            for account_id, contact_id, closed_at in closures:
                opened = found.get((account_id, contact_id))
                if opened is not None and opened <= closed_at:
                    del found[(account_id, contact_id)]  # Meta said it was closed
        return found

    async def _number_sends(
        self, session: AsyncSession, accounts: Sequence[str], now: datetime
    ) -> dict[str, list[datetime]]:
        rows = await session.execute(
            select(OutboxItem.account_id, OutboxItem.sent_at)
            .where(
                OutboxItem.account_id.in_(accounts),
                OutboxItem.state.in_(SENT_STATES),
                OutboxItem.sent_at > now - timedelta(seconds=1),
            )
            .order_by(OutboxItem.sent_at)
        )
        found: dict[str, list[datetime]] = defaultdict(list)
        for account_id, sent_at in rows:
            found[account_id].append(_when(sent_at))
        return dict(found)

    async def _pair_sends(
        self, session: AsyncSession, contacts: Sequence[str], since: datetime
    ) -> dict[tuple[str, str], list[datetime]]:
        rows = await session.execute(
            select(OutboxItem.account_id, OutboxItem.contact_id, OutboxItem.sent_at)
            .where(
                OutboxItem.contact_id.in_(contacts),
                OutboxItem.state.in_(SENT_STATES),
                OutboxItem.sent_at > since,
            )
            .order_by(OutboxItem.sent_at)
        )
        found: dict[tuple[str, str], list[datetime]] = defaultdict(list)
        for account_id, contact_id, sent_at in rows:
            found[(account_id, contact_id)].append(_when(sent_at))
        return dict(found)

    async def _pair_backoff(
        self, session: AsyncSession, contacts: Sequence[str], now: datetime
    ) -> dict[tuple[str, str], datetime]:
        rows = await session.scalars(
            select(PairBackoff).where(PairBackoff.contact_id.in_(contacts), PairBackoff.until > now)
        )
        return {(row.account_id, row.contact_id): row.until for row in rows}

    async def _tier_recipients(
        self, session: AsyncSession, portfolios: dict[str, str], now: datetime
    ) -> dict[str, dict[str, datetime]]:
        """Per portfolio, each recipient of a business-initiated message in the last
        24 hours, with the first such send (when it stops counting, 24 hours on)."""
        members: dict[str, list[str]] = defaultdict(list)
        for account_id, portfolio in portfolios.items():
            members[portfolio].append(account_id)
        if not members:
            return {}
        # Every account of each portfolio, those outside the batch included.
        rows = await session.execute(
            select(Account.id, Account.waba_id).where(
                Account.waba_id.in_([p for p in members if p not in portfolios])
            )
        )
        for account_id, waba in rows:
            if waba is not None and account_id not in members[waba]:
                members[waba].append(account_id)
        portfolio_of = {a: p for p, accounts in members.items() for a in accounts}
        sent = await session.execute(
            select(OutboxItem.account_id, OutboxItem.contact_id, func.min(OutboxItem.sent_at))
            .where(
                OutboxItem.account_id.in_(list(portfolio_of)),
                OutboxItem.state.in_(SENT_STATES),
                OutboxItem.answers_customer.is_(False),
                OutboxItem.sent_at > now - WINDOW,
            )
            .group_by(OutboxItem.account_id, OutboxItem.contact_id)
        )
        found: dict[str, dict[str, datetime]] = {p: {} for p in members}
        for account_id, contact_id, first in sent:
            seen = found[portfolio_of[account_id]]
            if contact_id not in seen or _when(first) < seen[contact_id]:
                seen[contact_id] = _when(first)
        return found

    async def _marketing_sends(
        self, session: AsyncSession, contacts: Sequence[str], since: datetime
    ) -> dict[str, list[datetime]]:
        rows = await session.execute(
            select(OutboxItem.contact_id, OutboxItem.sent_at)
            .where(
                OutboxItem.contact_id.in_(contacts),
                OutboxItem.category == Category.MARKETING.value,
                OutboxItem.state.in_(SENT_STATES),
                OutboxItem.sent_at > since,
            )
            .order_by(OutboxItem.sent_at)
        )
        found: dict[str, list[datetime]] = defaultdict(list)
        for contact_id, sent_at in rows:
            found[contact_id].append(_when(sent_at))
        return dict(found)

    async def _recent_content(
        self, session: AsyncSession, drafts: Sequence[Draft], since: datetime
    ) -> dict[tuple[str, bytes], datetime]:
        # By contact and time, then by digest here: few messages reach one contact
        # within the interval, and a row-value IN of a whole batch's pairs is too
        # deep for PostgreSQL's parser.
        wanted = {(d.contact_id, d.content_digest) for d in drafts if d.content_digest}
        if not wanted:
            return {}
        rows = await session.execute(
            select(OutboxItem.contact_id, OutboxItem.content_digest, OutboxItem.sent_at).where(
                OutboxItem.contact_id.in_(sorted({c for c, _ in wanted})),
                OutboxItem.state.in_(SENT_STATES),
                OutboxItem.sent_at > since,
            )
        )
        found: dict[tuple[str, bytes], datetime] = {}
        for contact_id, digest, sent_at in rows:
            key = (contact_id, digest)
            if key in wanted and (key not in found or _when(sent_at) > found[key]):
                found[key] = _when(sent_at)
        return found


def _when(value: datetime | None) -> datetime:
    """A ``sent_at`` the query's filter already proved is set."""
    assert value is not None
    return value


def _version(settings: dict[str, int], lexicon: str, now: datetime) -> str:
    """Names what a decision saw: each account's settings version and the lexicon's,
    with a short digest of the whole, and when."""
    parts = ";".join(f"{a}={v}" for a, v in sorted(settings.items()))
    digest = hashlib.sha256(f"{parts}|{lexicon}".encode()).hexdigest()[:12]
    return f"{now.isoformat()}#{digest}"
