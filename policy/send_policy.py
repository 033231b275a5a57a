"""Each account's send policy: quiet hours, rates, the messaging tier, marketing
caps, duplicate spacing and which consent covers which category.

An account without a stored policy has the defaults of
:class:`policy.decision.PolicySettings`. Every change is one audited unit of work
that bumps the policy's version; each decision names the versions it saw.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime

import msgspec
import phonenumbers
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.accounts.models import Account
from archiver.audit.services import Actor, AuditLog
from archiver.core.clock import Clock
from archiver.core.db import Writer
from policy.decision import MAX_MESSAGES_PER_SECOND, MESSAGING_TIERS, Category, PolicySettings
from policy.errors import InvalidPolicy, PolicyError
from policy.models import PolicySettingsRow
from policy.snapshots import decode_settings


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """An account's policy, its version (0: the defaults, never changed) and who
    changed it last."""

    account_id: str
    settings: PolicySettings
    version: int
    updated_by: str | None
    updated_at: datetime | None


def check_settings(settings: PolicySettings) -> None:
    """Raise ``InvalidPolicy`` naming the first setting that cannot work."""
    quiet = settings.quiet_hours
    if quiet.start == quiet.end:
        raise InvalidPolicy("quiet_hours: start and end must differ")
    if not 1 <= settings.messages_per_second <= MAX_MESSAGES_PER_SECOND:
        raise InvalidPolicy(f"messages_per_second must be 1 to {MAX_MESSAGES_PER_SECOND}")
    if settings.messaging_tier not in MESSAGING_TIERS:
        tiers = ", ".join("unlimited" if t is None else str(t) for t in MESSAGING_TIERS)
        raise InvalidPolicy(f"messaging_tier must be one of {tiers}")
    days = [step.from_day for step in settings.warmup]
    if days != sorted(set(days)) or any(d < 0 for d in days):
        raise InvalidPolicy("warmup: steps must start on distinct days, in order, from day 0 on")
    if any(not 1 <= step.per_second <= MAX_MESSAGES_PER_SECOND for step in settings.warmup):
        raise InvalidPolicy(f"warmup: per_second must be 1 to {MAX_MESSAGES_PER_SECOND}")
    if settings.pair_interval_seconds <= 0 or settings.pair_burst < 1:
        raise InvalidPolicy("pair_interval_seconds must be positive and pair_burst at least 1")
    if settings.marketing_cap < 0 or settings.marketing_cap_days < 1:
        raise InvalidPolicy("marketing_cap must be 0 or more, over at least 1 day")
    if settings.duplicate_interval_minutes < 0:
        raise InvalidPolicy("duplicate_interval_minutes must be 0 or more")
    regions = phonenumbers.SUPPORTED_REGIONS
    for region, zone in settings.region_zones.items():
        if region not in regions:
            raise InvalidPolicy(f"region_zones: {region!r} is not an ISO region code")
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise InvalidPolicy(f"region_zones: {zone!r} is not an IANA time zone") from None
    names = {c.value for c in Category}
    for category, covering in settings.consent_covers.items():
        if category not in names or any(c not in names for c in covering):
            raise InvalidPolicy(f"consent_covers: categories are {', '.join(sorted(names))}")


class SendPolicies:
    """Reads and changes accounts' send policies."""

    def __init__(
        self,
        clock: Clock,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        audit: AuditLog,
    ) -> None:
        self._clock = clock
        self._sessions = sessions
        self._writer = writer
        self._audit = audit

    async def get(self, account_id: str) -> StoredPolicy:
        """The account's policy (the defaults when never set); raise ``InvalidPolicy``
        for an unknown account."""
        async with self._sessions() as session:
            if await session.get(Account, account_id) is None:
                raise InvalidPolicy("no business number has that account id")
            row = await session.get(PolicySettingsRow, account_id)
        if row is None:
            return StoredPolicy(account_id, PolicySettings(), 0, None, None)
        return StoredPolicy(
            account_id, decode_settings(row.settings), row.version, row.updated_by, row.updated_at
        )

    async def update(self, actor: Actor, account_id: str, settings: PolicySettings) -> StoredPolicy:
        """Replace the account's policy, audited as ``policy.update`` with the old and
        new settings; raise ``InvalidPolicy`` (audited as denied, nothing changed)."""
        try:
            check_settings(settings)
            async with self._writer.transaction() as session:
                if await session.get(Account, account_id) is None:
                    raise InvalidPolicy("no business number has that account id")
                row = await session.get(PolicySettingsRow, account_id, with_for_update=True)
                before = row.settings if row else msgspec.json.encode(PolicySettings()).decode()
                encoded = msgspec.json.encode(settings).decode()
                now = self._clock.now()
                if row is None:
                    row = PolicySettingsRow(
                        account_id=account_id,
                        settings=encoded,
                        version=1,
                        updated_by=actor.id,
                        updated_at=now,
                    )
                    session.add(row)
                else:
                    row.settings, row.version = encoded, row.version + 1
                    row.updated_by, row.updated_at = actor.id, now
                await session.flush()
                await self._audit.record_in(
                    session,
                    actor.entry(
                        "policy.update",
                        target=f"policy:{account_id} version:{row.version}",
                        scope=account_id,
                        details={
                            "before": msgspec.json.decode(before),
                            "after": msgspec.json.decode(encoded),
                        },
                    ),
                )
                version = row.version
        except PolicyError as exc:
            await self._audit.record_durable(
                actor.entry(
                    "policy.update",
                    outcome="denied",
                    target=f"policy:{account_id}",
                    scope=account_id,
                    reason="invalid policy",
                    details={"error": str(exc)},
                )
            )
            raise
        return StoredPolicy(account_id, settings, version, actor.id, now)
