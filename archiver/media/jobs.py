"""The media fetch's scheduled job."""

from __future__ import annotations

from datetime import timedelta

from archiver.core.jobs import Job
from archiver.media.services import MediaFetcher

FETCH_EVERY = timedelta(seconds=10)


def jobs(fetcher: MediaFetcher) -> list[Job]:
    """The media fetch's scheduled job. Not a singleton: each claim is a row lock,
    so workers share the queue."""
    return [Job(name="fetch_media", every=FETCH_EVERY, run=fetcher.fetch_due)]
