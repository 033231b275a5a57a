"""The audit trail's scheduled job (the timed checkpoint of the chain's head) and
the recorder of every job's runs in the trail."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Final

import structlog

from archiver.audit.services import SYSTEM, AuditChainBroken, AuditLog
from archiver.core.jobs import Job, JobRun, RunRecorder

log = structlog.get_logger("strongroom.audit")

# How often the worker asks whether the head is due a checkpoint (``anchor_seconds``
# after the last one): the bound of an event's wait for its anchor is the sum.
ANCHOR_POLL: Final = timedelta(seconds=1)


async def anchor_audit(audit: AuditLog) -> None:
    """Checkpoint the audit chain's head in the vault when it is due; a chain cut
    behind its last checkpoint is logged as an error each time, never checkpointed.

    Reports nothing, so a checkpoint written is no event: an event would move the
    head it anchors, and the next checkpoint would anchor that event, for ever. The
    checkpoint is recorded instead in the vault (write-once) and ``audit_checkpoints``.
    """
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


def record_runs(audit: AuditLog) -> RunRecorder:
    """Record each job run handed over as a ``job.<name>`` event of the system:
    ``ok`` with the run's summary as reason, or ``failed`` with its kind of error."""

    async def record(run: JobRun) -> None:
        if run.error is not None:
            entry = SYSTEM.entry(f"job.{run.job}", outcome="failed", reason=f"failed: {run.error}")
        else:
            entry = SYSTEM.entry(f"job.{run.job}", reason=run.summary)
        await audit.record(entry)

    return record
