"""Outbound governance's scheduled job: the webhook reactions' catch-up."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Final

from archiver.core.jobs import Job
from policy.reactions import Reactions

REACT_EVERY: Final = timedelta(seconds=2)


async def react(reactions: Reactions) -> str | None:
    """React to the records captured since the last run; say how many were read."""
    read = await reactions.catch_up()
    return f"reacted to {read} records" if read else None


def jobs(reactions: Reactions) -> list[Job]:
    """The reactions' job. A singleton: one cursor, read in order by one worker."""
    return [
        Job(
            name="policy_reactions",
            every=REACT_EVERY,
            run=partial(react, reactions),
            singleton=True,
        )
    ]
