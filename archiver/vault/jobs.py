"""The vault's scheduled job: reconciling the lock state of every object."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.core.jobs import Job
from archiver.vault.services import Vault

log = structlog.get_logger("strongroom.vault")

RECONCILE_EVERY = timedelta(hours=6)


async def reconcile_vault(vault: Vault, sessions: async_sessionmaker[AsyncSession]) -> str:
    """Re-read every sealed object's real lock state and hash; log any drift;
    return the counts."""
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
    return (
        f"objects checked: {report.checked}, drifted: {len(report.drift)}, "
        f"unrecorded: {len(report.unrecorded)}"
    )


def jobs(vault: Vault, sessions: async_sessionmaker[AsyncSession]) -> list[Job]:
    """The vault's scheduled job: reconciling the lock state, one worker at a time
    (it reads every object)."""
    run = partial(reconcile_vault, vault, sessions)
    return [Job(name="reconcile_vault", every=RECONCILE_EVERY, run=run, singleton=True)]
