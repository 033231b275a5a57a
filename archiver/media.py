"""Media fetch: download the media a record refers to and seal it in the vault.

A captured media message holds only a reference (a media id, sometimes a
direct URL). ``MediaFetcher.fetch_due`` claims due ``MediaItem`` rows one at a
time (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several workers share the
queue), downloads the bytes with the account's access token, checks them
against the advertised SHA-256 and seals them under the record's subject.
Each item is its own transaction: one failure never undoes another.

Outcomes: ``fetched``; still ``pending`` with a later ``next_attempt_at``
(network trouble, throttling, server errors, a hash mismatch in the first
tries); or ``failed`` with a ``last_error`` written for a compliance officer.
Tokens, media URLs and plaintext are never logged or stored in errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.accounts import AccountService
from archiver.clock import Clock
from archiver.errors import ArchiverError, KeyDestroyed
from archiver.graph import GraphClient, GraphPermanent, GraphTransient, MediaInfo, MediaTooLarge
from archiver.models import MediaItem, Record, SealedObject
from archiver.subjects import record_subject
from archiver.vault import Vault

log = structlog.get_logger("strongroom.media")

# Meta keeps the media of a webhook for 7 days; after that its id is gone for good.
MEDIA_ID_LIFETIME = timedelta(days=7)
FIRST_RETRY = timedelta(seconds=30)
LONGEST_RETRY = timedelta(hours=1)
LONGEST_RETRY_AFTER = timedelta(days=1)
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
        sessions: async_sessionmaker[AsyncSession],
        accounts: AccountService,
        clock: Clock,
        *,
        retention: timedelta,
        max_bytes: int = 100 * 2**20,
        max_attempts: int = 8,
    ) -> None:
        self._graph = graph
        self._vault = vault
        self._sessions = sessions
        self._accounts = accounts
        self._clock = clock
        self._retention = retention
        self._max_bytes = max_bytes
        self._max_attempts = max_attempts

    async def fetch_due(self, limit: int = 20) -> int:
        """Process up to ``limit`` due items, each in its own transaction.

        Returns how many items were processed (fetched, rescheduled or failed).
        """
        tokens: dict[str, str | None] | None = None
        processed = 0
        while processed < limit:
            async with self._sessions() as session, session.begin():
                now = self._clock.now()
                item = await session.scalar(
                    select(MediaItem)
                    .where(MediaItem.state == "pending", MediaItem.next_attempt_at <= now)
                    .order_by(MediaItem.next_attempt_at, MediaItem.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                if item is None:
                    break
                if tokens is None:
                    tokens = {
                        s.account_id: s.access_token for s in await self._accounts.secrets(session)
                    }
                await self._process(session, item, tokens, now)
            processed += 1
        return processed

    async def _process(
        self,
        session: AsyncSession,
        item: MediaItem,
        tokens: dict[str, str | None],
        now: datetime,
    ) -> None:
        item.attempts += 1
        record = await session.get(Record, item.record_id)
        try:
            if record is None:
                raise _GiveUp("the record this media belongs to is missing")
            await self._fetch(session, item, record, tokens, now)
        except _GiveUp as exc:
            self._fail(item, exc.reason)
        except _Retry as exc:
            if item.attempts >= self._max_attempts:
                self._fail(item, f"gave up after {item.attempts} attempts; {exc.reason}")
            else:
                self._reschedule(item, exc, now)

    async def _fetch(
        self,
        session: AsyncSession,
        item: MediaItem,
        record: Record,
        tokens: dict[str, str | None],
        now: datetime,
    ) -> None:
        sealed_record = await session.get(SealedObject, record.object_id)
        if sealed_record is None:
            raise _GiveUp("the record's sealed object is missing")
        ref = await self._media_ref(session, sealed_record)
        token = tokens.get(record.account_id)
        if not token:
            raise _GiveUp("account has no access token")
        data, info = await self._download(ref, token, record, now)
        expected = item.expected_sha256 or ref.sha256 or (info.sha256 if info else None)
        if expected is not None and not sha256_matches(expected, data):
            reason = "downloaded bytes do not match the SHA-256 Meta advertised"
            if item.attempts >= HASH_MISMATCH_TRIES:
                raise _GiveUp(f"{reason} (after {item.attempts} downloads)")
            raise _Retry(reason)
        retain_until = max(sealed_record.retain_until, now + self._retention)
        try:
            async with session.begin_nested():
                sealed = await self._vault.seal(
                    session,
                    kind="media",
                    subject=record_subject(record),
                    plaintext=data,
                    retain_until=retain_until,
                )
        except ArchiverError as exc:
            raise _Retry(f"could not seal the media in the vault ({type(exc).__name__})") from exc
        item.state = "fetched"
        item.object_id = sealed.id
        item.size = len(data)
        item.mime_type = ref.mime_type or (info.mime_type if info else None) or item.mime_type
        item.last_error = None
        log.info("media fetched", media_item=item.id, record_id=record.id, size=len(data))

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
        self, ref: _MediaRef, token: str, record: Record, now: datetime
    ) -> tuple[bytes, MediaInfo | None]:
        expired = now - record.received_at > MEDIA_ID_LIFETIME
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
