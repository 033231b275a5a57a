"""The audit trail's scheduled job: the timed checkpoint of the chain's head."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Final

import structlog

from archiver.audit.services import AuditChainBroken, AuditLog
from archiver.core.jobs import Job

log = structlog.get_logger("strongroom.audit")

# How often the worker asks whether the head is due a checkpoint (``anchor_seconds``
# after the last one): the bound of an event's wait for its anchor is the sum.
ANCHOR_POLL: Final = timedelta(seconds=1)


async def anchor_audit(audit: AuditLog) -> None:
    """Checkpoint the audit chain's head in the vault when it is due; a chain cut
    behind its last checkpoint is logged as an error each time, never checkpointed."""
    try:
        await audit.checkpoint_due()
    except AuditChainBroken as exc:
        log.error("audit chain cut; not checkpointed", problem=str(exc))


def jobs(audit: AuditLog) -> list[Job]:
    """The audit trail's scheduled job: the timed checkpoint of the chain's head."""
    return [
        Job(
            name="audit_checkpoint",
            every=ANCHOR_POLL,
            run=partial(anchor_audit, audit),
            singleton=True,
        )
    ]
