"""Fixtures for integration tests: S3 targets for the vault (moto over TLS, a real MinIO)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import urllib3
from minio import Minio

from archiver.core.clock import Clock
from archiver.vault.s3store import S3Store
from tests.s3server import S3Server, moto_s3_server

MINIO_ENV = "STRONGROOM_TEST_S3_ENDPOINT"


@dataclass(frozen=True, slots=True)
class S3Target:
    """An S3 endpoint the tests may create buckets on."""

    endpoint: str
    access_key: str
    secret_key: str
    secure: bool = True
    ca_bundle: str | None = None
    region: str | None = None

    def store(self, bucket: str, clock: Clock) -> S3Store:
        """An ``S3Store`` on ``bucket`` of this endpoint."""
        return S3Store(
            self.endpoint,
            self.access_key,
            self.secret_key,
            bucket,
            secure=self.secure,
            ca_bundle=self.ca_bundle,
            region=self.region,
            clock=clock,
        )

    def client(self) -> Minio:
        """A bare SDK client, to set up what the store itself must refuse."""
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=5, read=30),
                cert_reqs="CERT_REQUIRED",
                ca_certs=self.ca_bundle,
            ),
        )


def fresh_bucket() -> str:
    """A bucket name no earlier run used."""
    return f"sr-test-{uuid.uuid4().hex[:20]}"


def _moto_target(server: S3Server) -> S3Target:
    return S3Target(
        endpoint=server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        secure=server.secure,
        ca_bundle=str(server.ca_bundle) if server.ca_bundle else None,
        region=server.region,
    )


@pytest.fixture(scope="session")
def moto_target() -> Iterator[S3Target]:
    """moto's S3 server over TLS on loopback, one per test session."""
    with moto_s3_server() as server:
        yield _moto_target(server)


@pytest.fixture(scope="session")
def moto_plain_target() -> Iterator[S3Target]:
    """moto's S3 server over plain HTTP, where the SDK adds no Content-MD5 of its own."""
    with moto_s3_server(tls=False) as server:
        yield _moto_target(server)


@pytest.fixture(scope="session")
def minio_target() -> S3Target:
    """A real MinIO named by ``STRONGROOM_TEST_S3_*``; skipped when none is configured.

    Use a throwaway server: every test makes a bucket, and the COMPLIANCE-locked
    objects in it cannot be removed by anyone for up to half an hour.
    """
    endpoint = os.environ.get(MINIO_ENV)
    if not endpoint:
        pytest.skip(
            f"no real MinIO configured: set {MINIO_ENV}, STRONGROOM_TEST_S3_ACCESS_KEY and "
            "STRONGROOM_TEST_S3_SECRET_KEY (optional: STRONGROOM_TEST_S3_CA_BUNDLE, "
            "STRONGROOM_TEST_S3_SECURE=false)"
        )
    access_key = os.environ.get("STRONGROOM_TEST_S3_ACCESS_KEY")
    secret_key = os.environ.get("STRONGROOM_TEST_S3_SECRET_KEY")
    if not access_key or not secret_key:
        pytest.fail(
            f"{MINIO_ENV} is set but STRONGROOM_TEST_S3_ACCESS_KEY or "
            "STRONGROOM_TEST_S3_SECRET_KEY is missing"
        )
    secure = os.environ.get("STRONGROOM_TEST_S3_SECURE", "true").strip().lower()
    return S3Target(
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        secure=secure not in ("0", "false", "no", "off"),
        ca_bundle=os.environ.get("STRONGROOM_TEST_S3_CA_BUNDLE") or None,
    )


@pytest.fixture(params=["moto", "minio"])
def s3_target(request: pytest.FixtureRequest) -> S3Target:
    """Each S3 target in turn."""
    target: S3Target = request.getfixturevalue(f"{request.param}_target")
    return target
