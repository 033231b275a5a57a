"""Media fetch: download the media a record refers to and seal it in the vault.

A captured media message holds only a reference (a media id, sometimes a
direct URL). ``MediaFetcher.fetch_due`` claims due ``MediaItem`` rows one at a
time in a short transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
several workers share the queue), downloads the bytes with the account's access
token with no transaction open, checks them against the advertised SHA-256, and
seals them under the record's subject in a second transaction. One failure
never undoes another; a claim whose worker died expires and is retried.

Outcomes: ``fetched``; still ``pending`` with a later ``next_attempt_at``
(network trouble, throttling, server errors, a hash mismatch in the first
tries); or ``failed`` with a ``last_error`` written for a compliance officer.
Tokens, media URLs and plaintext are never logged or stored in errors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from archiver.accounts.services import AccountService
from archiver.core.clock import Clock
from archiver.core.db import Writer
from archiver.core.errors import ArchiverError, KeyDestroyed
from archiver.core.subjects import record_subject
from archiver.records.models import MediaItem, Record
from archiver.vault.models import SealedObject
from archiver.vault.services import Vault
from archiver.whatsapp.graph import (
    GraphClient,
    GraphPermanent,
    GraphTransient,
    MediaInfo,
    MediaTooLarge,
)

log = structlog.get_logger("strongroom.media")

# Meta keeps the media of a webhook for 7 days; after that its id is gone for good.
MEDIA_ID_LIFETIME = timedelta(days=7)
FIRST_RETRY = timedelta(seconds=30)
LONGEST_RETRY = timedelta(hours=1)
LONGEST_RETRY_AFTER = timedelta(days=1)
# A claimed item is due again after this long, so a worker that died mid-download
# leaves it to be retried; a download is cut off well before that.
CLAIM_LEASE = timedelta(minutes=15)
DOWNLOAD_DEADLINE = timedelta(minutes=10)
# A hash mismatch may be a truncated transfer; after this many tries it is the data.
HASH_MISMATCH_TRIES = 3
_ERROR_LIMIT = 500
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class _MediaRef:
    media_id: str | None
    url: str | None
    mime_type: str | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class _Claim:
    """A claimed item and what its download needs, read in the claiming transaction."""

    item_id: int
    attempt: int
    ref: _MediaRef
    token: str
    expected_sha256: str | None
    expired: bool


@dataclass(frozen=True, slots=True)
class _Downloaded:
    data: bytes
    mime_type: str | None


class _Retry(Exception):
    """This try failed; try again later."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _GiveUp(Exception):
    """This media can never be fetched; ``reason`` is for a compliance officer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MediaFetcher:
    """Fetches pending media items and seals them in the vault."""

    def __init__(
        self,
        graph: GraphClient,
        vault: Vault,
        writer: Writer,
        accounts: AccountService,
        clock: Clock,
        *,
        retention: timedelta,
        max_bytes: int = 100 * 2**20,
        max_attempts: int = 8,
    ) -> None:
        self._graph = graph
        self._vault = vault
        self._writer = writer
        self._accounts = accounts
        self._clock = clock
        self._retention = retention
        self._max_bytes = max_bytes
        self._max_attempts = max_attempts

    async def fetch_due(self, limit: int = 20) -> int:
        """Process up to ``limit`` due items, one at a time.

        Each item is claimed in one short transaction, downloaded with no
        transaction open and recorded in another, so that slow downloads never
        hold a row lock or a database connection. Returns how many items were
        processed (fetched, rescheduled or failed).
        """
        tokens: dict[str, str | None] | None = None
        processed = 0
        while processed < limit:
            async with self._writer.transaction() as session:
                if tokens is None:
                    tokens = {
                        s.account_id: s.access_token for s in await self._accounts.secrets(session)
                    }
                claimed = await self._claim(session, tokens)
            if claimed is None:
                break
            if isinstance(claimed, _Claim):
                outcome = await self._download_claimed(claimed)
                async with self._writer.transaction() as session:
                    await self._settle(session, claimed, outcome)
            processed += 1
        return processed

    async def _claim(
        self, session: AsyncSession, tokens: dict[str, str | None]
    ) -> _Claim | bool | None:
        """Claim the next due item: ``None`` when there is none, ``True`` when it
        was settled at once (nothing to download), else what to download.

        The claim is a lease: the item stays pending, due again only after
        ``CLAIM_LEASE``, so a worker that dies mid-download leaves it to be retried.
        """
        now = self._clock.now()
        item = await session.scalar(
            select(MediaItem)
            .where(MediaItem.state == "pending", MediaItem.next_attempt_at <= now)
            .order_by(MediaItem.next_attempt_at, MediaItem.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if item is None:
            return None
        item.attempts += 1
        item.next_attempt_at = now + CLAIM_LEASE
        try:
            record = await session.get(Record, item.record_id)
            if record is None:
                raise _GiveUp("the record this media belongs to is missing")
            sealed_record = await session.get(SealedObject, record.object_id)
            if sealed_record is None:
                raise _GiveUp("the record's sealed object is missing")
            ref = await self._media_ref(session, sealed_record)
            token = tokens.get(record.account_id)
            if not token:
                raise _GiveUp("account has no access token")
        except (_GiveUp, _Retry) as exc:
            self._conclude(item, exc, now)
            return True
        return _Claim(
            item_id=item.id,
            attempt=item.attempts,
            ref=ref,
            token=token,
            expected_sha256=item.expected_sha256,
            expired=now - record.received_at > MEDIA_ID_LIFETIME,
        )

    async def _download_claimed(self, claim: _Claim) -> _Downloaded | _GiveUp | _Retry:
        """Download and check the claimed media; no database work happens here."""
        try:
            async with asyncio.timeout(DOWNLOAD_DEADLINE.total_seconds()):
                data, info = await self._download(claim.ref, claim.token, claim.expired)
        except TimeoutError:
            return _Retry(f"the download took longer than {DOWNLOAD_DEADLINE}")
        except (_GiveUp, _Retry) as exc:
            return exc
        expected = claim.expected_sha256 or claim.ref.sha256 or (info.sha256 if info else None)
        if expected is not None and not sha256_matches(expected, data):
            reason = "downloaded bytes do not match the SHA-256 Meta advertised"
            if claim.attempt >= HASH_MISMATCH_TRIES:
                return _GiveUp(f"{reason} (after {claim.attempt} downloads)")
            return _Retry(reason)
        mime_type = claim.ref.mime_type or (info.mime_type if info else None)
        return _Downloaded(data, mime_type)

    async def _settle(
        self, session: AsyncSession, claim: _Claim, outcome: _Downloaded | _GiveUp | _Retry
    ) -> None:
        """Record the outcome of a claimed download, unless the claim was lost."""
        now = self._clock.now()
        # A write first: SQLite then takes its write lock here, waiting for it,
        # where a read first would make the later writes fail at once whenever
        # another writer committed in between ("database is locked").
        still_ours = await session.execute(
            update(MediaItem)
            .where(
                MediaItem.id == claim.item_id,
                MediaItem.state == "pending",
                MediaItem.attempts == claim.attempt,
            )
            .values(last_error=None)
        )
        if cast("CursorResult[Any]", still_ours).rowcount == 0:
            # The lease ran out and another worker took the item over; its result stands.
            log.warning("media fetch claim lost", media_item=claim.item_id)
            return
        item = await session.get(MediaItem, claim.item_id, populate_existing=True)
        assert item is not None  # updated just now, in this transaction
        if isinstance(outcome, _Downloaded):
            try:
                await self._seal(session, item, outcome, now)
                return
            except _Retry as exc:
                outcome = exc
        self._conclude(item, outcome, now)

    async def _seal(
        self, session: AsyncSession, item: MediaItem, media: _Downloaded, now: datetime
    ) -> None:
        record = await session.get(Record, item.record_id)
        sealed_record = await session.get(SealedObject, record.object_id) if record else None
        if record is None or sealed_record is None:
            raise _Retry("the record this media belongs to is no longer readable")
        retain_until = max(sealed_record.retain_until, now + self._retention)
        try:
            async with session.begin_nested():
                sealed = await self._vault.seal(
                    session,
                    kind="media",
                    subject=record_subject(record),
                    plaintext=media.data,
                    retain_until=retain_until,
                )
        except ArchiverError as exc:
            raise _Retry(f"could not seal the media in the vault ({type(exc).__name__})") from exc
        item.state = "fetched"
        item.object_id = sealed.id
        item.size = len(media.data)
        item.mime_type = media.mime_type or item.mime_type
        item.last_error = None
        item.next_attempt_at = now
        log.info("media fetched", media_item=item.id, record_id=record.id, size=len(media.data))

    def _conclude(self, item: MediaItem, exc: _GiveUp | _Retry, now: datetime) -> None:
        if isinstance(exc, _GiveUp):
            self._fail(item, exc.reason)
        elif item.attempts >= self._max_attempts:
            self._fail(item, f"gave up after {item.attempts} attempts; {exc.reason}")
        else:
            self._reschedule(item, exc, now)

    async def _media_ref(self, session: AsyncSession, sealed_record: SealedObject) -> _MediaRef:
        try:
            plaintext = await self._vault.open(session, sealed_record)
        except KeyDestroyed:
            raise _GiveUp(
                "the record was erased (its key was destroyed); media not fetched"
            ) from None
        except ArchiverError as exc:
            raise _Retry(f"could not open the record ({type(exc).__name__})") from exc
        return _parse_media_ref(plaintext)

    async def _download(
        self, ref: _MediaRef, token: str, expired: bool
    ) -> tuple[bytes, MediaInfo | None]:
        try:
            if ref.url is not None:
                try:
                    return await self._graph.download(ref.url, token, self._max_bytes), None
                except MediaTooLarge:
                    raise
                except GraphPermanent:
                    # A direct URL lives only minutes; the id may still resolve to a fresh one.
                    if ref.media_id is None:
                        raise
            if ref.media_id is None:
                raise _GiveUp("the record holds no media reference")
            info = await self._graph.media_info(ref.media_id, token)
            if info.file_size is not None and info.file_size > self._max_bytes:
                raise _GiveUp(_too_large(self._max_bytes))
            return await self._graph.download(info.url, token, self._max_bytes), info
        except MediaTooLarge:
            raise _GiveUp(_too_large(self._max_bytes)) from None
        except GraphPermanent as exc:
            raise _GiveUp(_explain(exc, expired)) from None
        except GraphTransient as exc:
            if expired:
                # Retrying cannot help: the id no longer resolves, whatever the error says.
                raise _GiveUp(
                    f"media id expired (Meta keeps media 7 days); last try: {exc}"
                ) from None
            raise _Retry(str(exc), exc.retry_after) from None

    def _fail(self, item: MediaItem, reason: str) -> None:
        item.state = "failed"
        item.last_error = _short(reason)
        log.warning(
            "media fetch failed", media_item=item.id, attempts=item.attempts, reason=item.last_error
        )

    def _reschedule(self, item: MediaItem, exc: _Retry, now: datetime) -> None:
        delay = min(FIRST_RETRY * 2 ** (item.attempts - 1), LONGEST_RETRY)
        if exc.retry_after is not None:
            delay = max(delay, min(timedelta(seconds=exc.retry_after), LONGEST_RETRY_AFTER))
        item.next_attempt_at = now + delay
        item.last_error = _short(exc.reason)
        log.info(
            "media fetch will retry",
            media_item=item.id,
            attempts=item.attempts,
            retry_in_seconds=delay.total_seconds(),
            reason=item.last_error,
        )


def sha256_matches(advertised: str, data: bytes) -> bool:
    """True when ``advertised`` (hex or base64, as Meta sends either) is ``data``'s
    SHA-256; an unreadable value never matches."""
    value = advertised.strip()
    if _HEX_SHA256.fullmatch(value):
        expected = bytes.fromhex(value)
    else:
        padded = value + "=" * (-len(value) % 4)
        altchars = b"-_" if ("-" in value or "_" in value) else None
        try:
            expected = base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            return False
    return hmac.compare_digest(expected, hashlib.sha256(data).digest())


def _parse_media_ref(plaintext: bytes) -> _MediaRef:
    """The media object of a sealed record: ``item[item["type"]]``; empty if absent."""
    try:
        document = json.loads(plaintext)
    except ValueError:
        document = None
    item = document.get("item") if isinstance(document, dict) else None
    kind = item.get("type") if isinstance(item, dict) else None
    media: Any = item.get(kind) if isinstance(item, dict) and isinstance(kind, str) else None
    if not isinstance(media, dict):
        media = {}

    def text(key: str) -> str | None:
        value = media.get(key)
        return value if isinstance(value, str) and value else None

    return _MediaRef(text("id"), text("url"), text("mime_type"), text("sha256"))


def _too_large(max_bytes: int) -> str:
    return f"media is larger than the {max_bytes // 2**20} MiB limit"


def _explain(exc: GraphPermanent, expired: bool) -> str:
    if exc.auth_failed:
        return (
            f"Meta rejected the account's access token (HTTP {exc.status}); "
            "the account needs a valid token"
        )
    if exc.code == 100 or exc.status == 404:
        if expired:
            return "media id expired (Meta keeps media 7 days)"
        return "Meta no longer has this media: it expired (Meta keeps media 7 days) or was deleted"
    return f"Meta refused the download: {exc}"


def _short(reason: str) -> str:
    return reason if len(reason) <= _ERROR_LIMIT else reason[: _ERROR_LIMIT - 1] + "…"
