"""Scheduled work of the record core."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.audit import AuditChainBroken, AuditLog
from archiver.vault import Vault, VerifyReport

log = structlog.get_logger("strongroom.jobs")


async def anchor_audit(audit: AuditLog) -> None:
    """Checkpoint the audit chain's head in the vault when it is due; a chain cut
    behind its last checkpoint is logged as an error each time, never checkpointed."""
    try:
        await audit.checkpoint_due()
    except AuditChainBroken as exc:
        log.error("audit chain cut; not checkpointed", problem=str(exc))


async def anchor_audit_until(stop: asyncio.Event, audit: AuditLog, poll_seconds: float) -> None:
    """Run :func:`anchor_audit` every ``poll_seconds`` until ``stop`` is set.

    A loop of its own rather than a scheduled job: the scheduler logs every run.
    """
    while not stop.is_set():
        try:
            await anchor_audit(audit)
        except Exception as exc:  # the database or the vault is away; the next look retries
            log.error("audit checkpoint failed", error=type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_seconds)


async def reconcile_vault(vault: Vault, sessions: async_sessionmaker[AsyncSession]) -> VerifyReport:
    """Re-read every sealed object's real lock state and hash; log any drift."""
    async with sessions() as session:
        report = await vault.verify(session)
    for drift in report.drift:
        log.error("vault drift", object_key=drift.object_key, problem=drift.problem)
    log.info(
        "vault reconciled",
        checked=report.checked,
        drift=len(report.drift),
        unrecorded=len(report.unrecorded),
    )
    return report
