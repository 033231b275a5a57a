"""The production vault backend: S3 Object Lock (MinIO or any S3) via the ``minio`` SDK.

Every object version is written with COMPLIANCE-mode retention and, when
asked, the S3 legal hold flag, in a bucket created with Object Lock. S3 keeps
retain-until to the second, so a sub-second date is rounded up (never down).

The store does not rely on the backend alone: it refuses to shorten retention
and to delete a retained or held version itself, then lets the server refuse
again. Every SDK and transport error is translated into :mod:`archiver.core.errors`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from xml.etree.ElementTree import ParseError

import urllib3
from minio import Minio
from minio.commonconfig import COMPLIANCE
from minio.error import MinioException, S3Error
from minio.helpers import DictType
from minio.retention import Retention
from minio.time import to_iso8601utc
from urllib3.exceptions import HTTPError as TransportError

from archiver.core.clock import Clock
from archiver.core.errors import (
    ObjectExists,
    ObjectNotFound,
    RetentionViolation,
    StoreUnavailable,
    VaultError,
)
from archiver.vault.interfaces import LockState, NewObject, StoredObject

_RETAIN_UNTIL = "x-amz-object-lock-retain-until-date"
_LEGAL_HOLD = "x-amz-object-lock-legal-hold"
_LOCK_MODE = "x-amz-object-lock-mode"
# PUTs in flight at once in put_many: each waits mostly on the network.
_PUT_CONCURRENCY = 16
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchVersion"})


def _lock_date(moment: datetime) -> datetime:
    """``moment`` in UTC, rounded up to the whole second S3 Object Lock keeps."""
    if moment.tzinfo is None:
        raise ValueError("retain_until must be timezone-aware")
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    return moment


def _content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


class S3Store:
    """An ``ObjectStore`` on an S3 bucket with Object Lock, in COMPLIANCE mode."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = True,
        ca_bundle: str | None = None,
        region: str | None = None,
        clock: Clock,
    ) -> None:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10, read=60),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_bundle,
            # No retry once a request may have reached the server: a replayed
            # create-exclusive PUT would report our own object as taken.
            retries=urllib3.Retry(
                total=3, read=0, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)
            ),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self._endpoint = endpoint
        self._bucket = bucket
        self._clock = clock

    def ensure_bucket(self) -> None:
        """Create the bucket with Object Lock if absent; refuse one without it."""
        with self._boundary(self._bucket):
            if not self._client.bucket_exists(self._bucket):
                try:
                    self._client.make_bucket(self._bucket, object_lock=True)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            try:
                self._client.get_object_lock_config(self._bucket)
            except S3Error as exc:
                if exc.code == "ObjectLockConfigurationNotFoundError":
                    raise StoreUnavailable(
                        f"bucket {self._bucket} exists without Object Lock; WORM retention "
                        "needs a bucket created with object lock enabled"
                    ) from exc
                raise

    def put(
        self, key: str, data: bytes, *, retain_until: datetime, legal_hold: bool = False
    ) -> StoredObject:
        """Store ``data`` under a new ``key``; raise ``ObjectExists`` if it is taken."""
        retain_until = _lock_date(retain_until)
        if retain_until <= self._clock.now():
            raise ValueError("retain_until must be in the future")
        headers: DictType = {
            "Content-Type": "application/octet-stream",
            # The SDK adds Content-MD5 only over TLS; S3 requires it on locked PUTs.
            "Content-MD5": _content_md5(data),
            "If-None-Match": "*",
            _LOCK_MODE: COMPLIANCE,
            _RETAIN_UNTIL: to_iso8601utc(retain_until) or "",
        }
        if legal_hold:
            headers[_LEGAL_HOLD] = "ON"
        with self._boundary(key, PreconditionFailed=ObjectExists):
            # Checked first too, for backends that ignore If-None-Match.
            if self._current_exists(key):
                raise ObjectExists(f"{key} is already stored")
            # The public put_object turns unknown headers into user metadata and
            # may switch to multipart; this single PUT sends exactly our headers.
            result = self._client._put_object(self._bucket, key, data, headers)
        if not result.version_id:
            raise StoreUnavailable(f"{key}: the server returned no version id (versioning off?)")
        return StoredObject(
            key=key,
            version_id=result.version_id,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            retain_until=retain_until,
            legal_hold=legal_hold,
        )

    def put_many(self, objects: Sequence[NewObject]) -> list[StoredObject]:
        """Store several new objects, several PUTs at a time."""
        if not objects:
            return []
        with ThreadPoolExecutor(min(len(objects), _PUT_CONCURRENCY)) as pool:
            return list(
                pool.map(
                    lambda o: self.put(
                        o.key, o.data, retain_until=o.retain_until, legal_hold=o.legal_hold
                    ),
                    objects,
                )
            )

    def get(self, key: str, version_id: str) -> bytes:
        """Return the bytes of one version; raise ``ObjectNotFound``."""
        with self._boundary(key):
            response = self._client.get_object(self._bucket, key, version_id=version_id)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def lock_state(self, key: str, version_id: str) -> LockState:
        """Read the real lock state from the object's headers (a HEAD request).

        Only COMPLIANCE retention counts: GOVERNANCE can be bypassed, so it is
        reported as no retention at all.
        """
        with self._boundary(key):
            headers = self._client.stat_object(self._bucket, key, version_id=version_id).metadata
        if headers is None:
            raise StoreUnavailable(f"{key}: the server sent no object headers")
        retain_until = None
        raw = headers.get(_RETAIN_UNTIL)
        if raw and headers.get(_LOCK_MODE) == COMPLIANCE:
            try:
                retain_until = datetime.fromisoformat(raw).astimezone(UTC)
            except ValueError as exc:
                raise StoreUnavailable(f"{key}: unreadable retain-until {raw!r}") from exc
        return LockState(retain_until=retain_until, legal_hold=headers.get(_LEGAL_HOLD) == "ON")

    def extend_retention(self, key: str, version_id: str, retain_until: datetime) -> None:
        """Move retain-until later; raise ``RetentionViolation`` if it is earlier.

        Checked here because some backends accept a shortened COMPLIANCE date.
        """
        retain_until = _lock_date(retain_until)
        current = self.lock_state(key, version_id).retain_until
        if current is not None and retain_until < current:
            raise RetentionViolation(
                f"{key}: retention can only be extended "
                f"(now {current.isoformat()}, asked {retain_until.isoformat()})"
            )
        if retain_until == current:
            return
        with self._boundary(key):
            self._client.set_object_retention(
                self._bucket, key, Retention(COMPLIANCE, retain_until), version_id=version_id
            )

    def set_legal_hold(self, key: str, version_id: str, on: bool) -> None:
        """Set or clear the legal hold flag of one version."""
        # Confirms the version exists: some backends fail obscurely on a missing one.
        self.lock_state(key, version_id)
        with self._boundary(key):
            if on:
                self._client.enable_object_legal_hold(self._bucket, key, version_id=version_id)
            else:
                self._client.disable_object_legal_hold(self._bucket, key, version_id=version_id)

    def delete(self, key: str, version_id: str) -> None:
        """Remove one version; raise ``RetentionViolation`` while retained or held."""
        lock = self.lock_state(key, version_id)
        if lock.legal_hold:
            raise RetentionViolation(f"{key} is under legal hold")
        if lock.retain_until is not None and self._clock.now() < lock.retain_until:
            raise RetentionViolation(f"{key} is retained until {lock.retain_until.isoformat()}")
        with self._boundary(key, AccessDenied=RetentionViolation):
            self._client.remove_object(self._bucket, key, version_id=version_id)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Yield every current key under ``prefix``."""
        with self._boundary(prefix or self._bucket):
            for item in self._client.list_objects(self._bucket, prefix=prefix, recursive=True):
                if item.object_name is not None and not item.is_dir:
                    yield item.object_name

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the bucket is reachable."""
        with self._boundary(self._bucket):
            exists = self._client.bucket_exists(self._bucket)
        if not exists:
            raise StoreUnavailable(f"bucket {self._bucket} does not exist")

    def _current_exists(self, key: str) -> bool:
        try:
            self._client.stat_object(self._bucket, key)
        except S3Error as exc:
            if exc.code in _NOT_FOUND:
                return False
            raise
        return True

    @contextmanager
    def _boundary(self, subject: str, **codes: type[VaultError]) -> Iterator[None]:
        """Translate SDK and transport errors; ``codes`` maps S3 error codes for one call."""
        try:
            yield
        except S3Error as exc:
            code = exc.code or ""
            error = codes.get(code) or (ObjectNotFound if code in _NOT_FOUND else StoreUnavailable)
            raise error(f"{subject}: {code or 'S3 error'}: {exc.message}") from exc
        except (MinioException, TransportError, OSError, ParseError) as exc:
            raise StoreUnavailable(f"{subject}: S3 at {self._endpoint}: {exc}") from exc
