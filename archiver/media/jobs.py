"""The media fetch's scheduled job."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from archiver.core.jobs import Job
from archiver.media.services import MediaFetcher

FETCH_EVERY = timedelta(seconds=10)


async def fetch_media(fetcher: MediaFetcher) -> str | None:
    """Process the due media items; say how many, if any."""
    processed = await fetcher.fetch_due()
    return f"processed {processed} due media items" if processed else None


def jobs(fetcher: MediaFetcher) -> list[Job]:
    """The media fetch's scheduled job. Not a singleton: each claim is a row lock,
    so workers share the queue."""
    return [Job(name="fetch_media", every=FETCH_EVERY, run=partial(fetch_media, fetcher))]
