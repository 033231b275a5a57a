"""The ObjectStore contract, run against every backend: the file vault, moto over
TLS and (when configured) a real MinIO. Backend-specific guarantees follow it."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import urllib3

from archiver.core.clock import FixedClock, SystemClock
from archiver.core.errors import ObjectExists, ObjectNotFound, RetentionViolation, StoreUnavailable
from archiver.vault import filestore
from archiver.vault.filestore import FileStore
from archiver.vault.interfaces import LockState, NewObject, ObjectStore, StoredObject
from tests.integration.conftest import S3Target, fresh_bucket

KEY = "journal/2026/11/21/abc.bin"
STEP = timedelta(minutes=10)
RETAIN = datetime(2030, 1, 1, tzinfo=UTC)  # file-vault tests: after the fixed clock's now


@dataclass
class Backend:
    """A store under test and a way to let its retention time pass."""

    store: ObjectStore
    clock: FixedClock | SystemClock

    def now(self) -> datetime:
        return self.clock.now()

    def soon(self) -> datetime:
        """A whole-second retain-until one to two seconds ahead."""
        return self.now().replace(microsecond=0) + timedelta(seconds=2)

    def later(self, steps: int = 1) -> datetime:
        """A whole-second retain-until ``steps`` ten-minute steps ahead.

        Kept short: on a real MinIO these objects stay undeletable until then.
        """
        return self.now().replace(microsecond=0) + steps * STEP

    def let_pass(self, moment: datetime) -> None:
        """Move past ``moment``: the fixed clock jumps, a real server is waited for."""
        if isinstance(self.clock, FixedClock):
            self.clock.advance(moment - self.clock.now() + timedelta(seconds=1))
            return
        time.sleep(max(0.0, (moment - self.clock.now()).total_seconds()) + 0.3)


@pytest.fixture(params=["file", "moto", "minio"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn, empty; S3 backends get a fresh Object Lock bucket."""
    if request.param == "file":
        clock: FixedClock = request.getfixturevalue("clock")
        return Backend(request.getfixturevalue("file_store"), clock)
    target: S3Target = request.getfixturevalue(f"{request.param}_target")
    system_clock = SystemClock()
    store = target.store(fresh_bucket(), system_clock)
    store.ensure_bucket()
    return Backend(store, system_clock)


def _missing_version() -> str:
    return str(uuid.uuid4())


def _content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


# --- the contract ---------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", bytes(range(256)) * 300], ids=["empty", "75KiB"])
def test_put_then_get_returns_the_bytes_and_what_was_stored(backend: Backend, data: bytes) -> None:
    retain = backend.later()
    stored = backend.store.put(KEY, data, retain_until=retain)

    assert stored.key == KEY
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.size == len(data)
    assert stored.version_id
    assert stored.retain_until == retain
    assert stored.legal_hold is False
    assert backend.store.get(KEY, stored.version_id) == data


def test_each_put_gets_its_own_version_id(backend: Backend) -> None:
    first = backend.store.put("a/1", b"one", retain_until=backend.later())
    second = backend.store.put("a/2", b"two", retain_until=backend.later())

    assert first.version_id != second.version_id


def test_put_refuses_a_taken_key_and_keeps_the_original(backend: Backend) -> None:
    retain = backend.later()
    stored = backend.store.put(KEY, b"original", retain_until=retain)

    with pytest.raises(ObjectExists):
        backend.store.put(KEY, b"impostor", retain_until=backend.later(2), legal_hold=True)

    assert backend.store.get(KEY, stored.version_id) == b"original"
    assert backend.store.lock_state(KEY, stored.version_id) == LockState(retain, False)
    assert list(backend.store.keys()) == [KEY]


def test_put_refuses_a_naive_or_past_retain_until(backend: Backend) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        backend.store.put(KEY, b"x", retain_until=backend.later().replace(tzinfo=None))
    with pytest.raises(ValueError, match="future"):
        backend.store.put(KEY, b"x", retain_until=backend.now() - timedelta(seconds=5))

    assert list(backend.store.keys()) == []


def test_retain_until_is_never_rounded_down(backend: Backend) -> None:
    asked = backend.later() + timedelta(milliseconds=300)

    stored = backend.store.put(KEY, b"x", retain_until=asked)

    assert stored.retain_until >= asked
    assert stored.retain_until - asked < timedelta(seconds=1)
    assert backend.store.lock_state(KEY, stored.version_id).retain_until == stored.retain_until


@pytest.mark.parametrize(
    "operation",
    [
        lambda store, key, version: store.get(key, version),
        lambda store, key, version: store.lock_state(key, version),
        lambda store, key, version: store.extend_retention(
            key, version, datetime(2100, 1, 1, tzinfo=UTC)
        ),
        lambda store, key, version: store.set_legal_hold(key, version, True),
        lambda store, key, version: store.delete(key, version),
    ],
    ids=["get", "lock_state", "extend_retention", "set_legal_hold", "delete"],
)
def test_a_missing_key_or_version_is_object_not_found(
    backend: Backend, operation: Callable[[ObjectStore, str, str], Any]
) -> None:
    stored = backend.store.put(KEY, b"x", retain_until=backend.later())

    with pytest.raises(ObjectNotFound):
        operation(backend.store, "journal/none.bin", _missing_version())
    with pytest.raises(ObjectNotFound):
        operation(backend.store, KEY, _missing_version())
    assert backend.store.get(KEY, stored.version_id) == b"x"


def test_lock_state_reports_the_stored_retention_and_hold(backend: Backend) -> None:
    retain = backend.later(3)

    held = backend.store.put("a/held", b"x", retain_until=retain, legal_hold=True)
    free = backend.store.put("a/free", b"y", retain_until=retain)

    assert held.legal_hold is True
    assert backend.store.lock_state("a/held", held.version_id) == LockState(retain, True)
    assert backend.store.lock_state("a/free", free.version_id) == LockState(retain, False)


def test_retention_extends_and_never_shortens(backend: Backend) -> None:
    retain = backend.later()
    stored = backend.store.put(KEY, b"x", retain_until=retain)
    extended = retain + STEP

    backend.store.extend_retention(KEY, stored.version_id, extended)
    backend.store.extend_retention(KEY, stored.version_id, extended)  # same date: a no-op

    assert backend.store.lock_state(KEY, stored.version_id).retain_until == extended
    with pytest.raises(RetentionViolation):
        backend.store.extend_retention(KEY, stored.version_id, retain)
    assert backend.store.lock_state(KEY, stored.version_id) == LockState(extended, False)


def test_delete_is_refused_while_retained_then_while_held(backend: Backend) -> None:
    retain = backend.soon()
    free = backend.store.put("a/free", b"free", retain_until=retain)
    held = backend.store.put("a/held", b"held", retain_until=retain, legal_hold=True)

    with pytest.raises(RetentionViolation):
        backend.store.delete("a/free", free.version_id)
    assert backend.store.get("a/free", free.version_id) == b"free"

    backend.let_pass(retain)
    backend.store.delete("a/free", free.version_id)
    with pytest.raises(RetentionViolation):
        backend.store.delete("a/held", held.version_id)
    assert backend.store.get("a/held", held.version_id) == b"held"

    backend.store.set_legal_hold("a/held", held.version_id, False)
    backend.store.delete("a/held", held.version_id)

    assert list(backend.store.keys()) == []
    with pytest.raises(ObjectNotFound):
        backend.store.get("a/free", free.version_id)


def test_legal_hold_can_be_set_and_cleared(backend: Backend) -> None:
    retain = backend.later()
    stored = backend.store.put(KEY, b"x", retain_until=retain)

    backend.store.set_legal_hold(KEY, stored.version_id, True)
    assert backend.store.lock_state(KEY, stored.version_id) == LockState(retain, True)

    backend.store.set_legal_hold(KEY, stored.version_id, False)
    backend.store.set_legal_hold(KEY, stored.version_id, False)
    assert backend.store.lock_state(KEY, stored.version_id) == LockState(retain, False)


def test_keys_lists_by_prefix(backend: Backend) -> None:
    keys = [
        "journal/2026/11/21/a.bin",
        "journal/2026/11/22/b.bin",
        "journalx/c.bin",
        "record/d.bin",
    ]
    for key in keys:
        backend.store.put(key, key.encode(), retain_until=backend.later())

    assert sorted(backend.store.keys()) == keys
    assert sorted(backend.store.keys("journal/")) == keys[:2]
    assert sorted(backend.store.keys("journal")) == keys[:3]
    assert sorted(backend.store.keys("journal/2026/11/22/")) == [keys[1]]
    assert sorted(backend.store.keys("journal/2026/11/2")) == keys[:2]
    assert list(backend.store.keys("nothing/")) == []


def test_ping_answers_for_a_usable_store(backend: Backend) -> None:
    backend.store.ping()


def test_put_many_stores_each_object_in_order(backend: Backend) -> None:
    retain = backend.later()
    objects = [
        NewObject(f"batch/{n}", f"object {n}".encode(), retain, legal_hold=n == 2) for n in range(5)
    ]

    stored = backend.store.put_many(objects)

    assert [s.key for s in stored] == [o.key for o in objects]
    for obj, result in zip(objects, stored, strict=True):
        assert result.sha256 == hashlib.sha256(obj.data).hexdigest()
        assert backend.store.get(obj.key, result.version_id) == obj.data
        assert backend.store.lock_state(obj.key, result.version_id) == LockState(
            retain, obj.legal_hold
        )
    assert backend.store.put_many([]) == []


# --- the file vault -------------------------------------------------------------------


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_file_objects_and_sidecars_are_read_only(file_store: FileStore, tmp_path: Path) -> None:
    stored = file_store.put(KEY, b"x", retain_until=RETAIN)
    file_store.set_legal_hold(KEY, stored.version_id, True)

    for path in (
        tmp_path / "vault" / "objects" / KEY,
        tmp_path / "vault" / "locks" / f"{KEY}.json",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o400, path


def test_file_crash_before_link_leaves_no_object(
    file_store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(src: object, dst: object) -> None:
        raise OSError(5, "simulated crash between temp write and link")

    with monkeypatch.context() as patch:
        patch.setattr(os, "link", crash)
        with pytest.raises(StoreUnavailable):
            file_store.put(KEY, b"partial", retain_until=RETAIN)

    assert list(file_store.keys()) == []
    assert not (tmp_path / "vault" / "objects" / KEY).exists()
    assert list((tmp_path / "vault" / "tmp").iterdir()) == []
    stored = file_store.put(KEY, b"whole", retain_until=RETAIN)
    assert file_store.get(KEY, stored.version_id) == b"whole"


def test_file_put_many_with_a_taken_or_bad_key_stores_none(
    file_store: FileStore, tmp_path: Path
) -> None:
    file_store.put("batch/taken", b"first", retain_until=RETAIN)
    past = datetime(2020, 1, 1, tzinfo=UTC)
    for batch, error in (
        (
            [NewObject("batch/new", b"x", RETAIN), NewObject("batch/taken", b"y", RETAIN)],
            ObjectExists,
        ),
        ([NewObject("batch/new", b"x", RETAIN), NewObject("batch/new", b"y", RETAIN)], ValueError),
        ([NewObject("batch/new", b"x", RETAIN), NewObject("batch/../x", b"y", RETAIN)], ValueError),
        ([NewObject("batch/new", b"x", RETAIN), NewObject("batch/old", b"y", past)], ValueError),
    ):
        with pytest.raises(error):
            file_store.put_many(batch)

        assert list(file_store.keys()) == ["batch/taken"]
        assert list((tmp_path / "vault" / "tmp").iterdir()) == []


def test_file_store_without_syncfs_fsyncs_each_file(
    file_store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    file_store.put_many([NewObject("a/0", b"zero", RETAIN), NewObject("b/0", b"zero", RETAIN)])
    monkeypatch.setattr(filestore, "_syncfs", None)
    monkeypatch.setattr(os, "fsync", fsync)
    stored = file_store.put_many(
        [NewObject("a/1", b"one", RETAIN), NewObject("b/2", b"two", RETAIN)]
    )

    assert [file_store.get(s.key, s.version_id) for s in stored] == [b"one", b"two"]
    # Two temporary files per object, then the four (existing) directories they were
    # linked into.
    assert len(synced) == 2 * 2 + 4


def test_file_leftover_temp_files_are_ignored(file_store: FileStore, tmp_path: Path) -> None:
    tmp = tmp_path / "vault" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "0123abcd.tmp").write_bytes(b"half a mess")

    stored = file_store.put(KEY, b"x", retain_until=RETAIN)

    assert list(file_store.keys()) == [KEY]
    assert file_store.get(KEY, stored.version_id) == b"x"


def test_file_orphan_sidecar_from_a_crash_reads_as_absent(
    file_store: FileStore, tmp_path: Path
) -> None:
    sidecar = tmp_path / "vault" / "locks" / f"{KEY}.json"
    sidecar.parent.mkdir(parents=True)
    sidecar.write_text('{"version_id": "v", "sha256": "", "size": 0}')

    with pytest.raises(ObjectNotFound):
        file_store.lock_state(KEY, "v")
    stored = file_store.put(KEY, b"x", retain_until=RETAIN)
    assert file_store.get(KEY, stored.version_id) == b"x"


def test_file_concurrent_puts_of_one_key_store_exactly_one(file_store: FileStore) -> None:
    outcomes: list[StoredObject | ObjectExists] = []

    def put(n: int) -> None:
        try:
            outcomes.append(file_store.put(KEY, f"writer {n}".encode(), retain_until=RETAIN))
        except ObjectExists as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=put, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [o for o in outcomes if isinstance(o, StoredObject)]
    assert len(outcomes) == 8
    assert len(winners) == 1
    data = file_store.get(KEY, winners[0].version_id)
    assert hashlib.sha256(data).hexdigest() == winners[0].sha256
    assert file_store.lock_state(KEY, winners[0].version_id) == LockState(RETAIN, False)


@pytest.mark.parametrize(
    "key", ["", "../escape", "a/../../escape", "/etc/passwd", "a\\b", "a//b", "./a", "a/", "a/."]
)
def test_file_keys_escaping_the_root_are_refused(
    file_store: FileStore, tmp_path: Path, key: str
) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        file_store.put(key, b"x", retain_until=RETAIN)
    with pytest.raises(ValueError, match="invalid object key"):
        file_store.get(key, "v")

    assert _files(tmp_path) == []


def test_file_keys_refuses_a_prefix_escaping_the_root(file_store: FileStore) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        file_store.keys("../")


def test_file_key_colliding_with_another_keys_path_is_refused(file_store: FileStore) -> None:
    file_store.put("a/b", b"x", retain_until=RETAIN)

    with pytest.raises(ValueError, match="collides"):
        file_store.put("a", b"y", retain_until=RETAIN)
    with pytest.raises(ValueError, match="collides"):
        file_store.put("a/b/c", b"y", retain_until=RETAIN)
    with pytest.raises(ValueError, match="collides"):
        file_store.put("a/b/c/d", b"y", retain_until=RETAIN)
    assert list(file_store.keys()) == ["a/b"]


def test_file_ping_refuses_a_root_that_is_not_a_directory(
    tmp_path: Path, clock: FixedClock
) -> None:
    root = tmp_path / "not-a-dir"
    root.write_bytes(b"")

    with pytest.raises(StoreUnavailable):
        FileStore(root, clock).ping()


# --- the S3 vault ---------------------------------------------------------------------


def test_s3_locked_put_sends_content_md5_and_if_none_match(
    s3_target: S3Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = s3_target.store(fresh_bucket(), SystemClock())
    store.ensure_bucket()
    sent: list[tuple[str, dict[str, str]]] = []
    urlopen = urllib3.PoolManager.urlopen

    def spy(self: urllib3.PoolManager, method: str, url: str, **kw: Any) -> Any:
        sent.append((method, {k.lower(): v for k, v in kw.get("headers", {}).items()}))
        return urlopen(self, method, url, **kw)

    monkeypatch.setattr(urllib3.PoolManager, "urlopen", spy)
    data = b"sealed envelope"
    store.put(KEY, data, retain_until=datetime.now(UTC) + STEP, legal_hold=True)

    puts = [h for m, h in sent if m == "PUT"]
    assert len(puts) == 1
    assert puts[0]["content-md5"] == _content_md5(data)
    assert puts[0]["if-none-match"] == "*"
    assert puts[0]["x-amz-object-lock-mode"] == "COMPLIANCE"
    assert puts[0]["x-amz-object-lock-legal-hold"] == "ON"


def test_s3_locked_put_over_plain_http_still_sends_content_md5(
    moto_plain_target: S3Target,
) -> None:
    """The SDK computes Content-MD5 only over TLS; the store must send it anyway."""
    store = moto_plain_target.store(fresh_bucket(), SystemClock())
    store.ensure_bucket()

    stored = store.put(KEY, b"x", retain_until=datetime.now(UTC) + STEP)

    assert store.get(KEY, stored.version_id) == b"x"


def test_moto_refuses_a_locked_put_without_content_md5(moto_target: S3Target) -> None:
    """Why moto accepting our locked PUTs proves Content-MD5 went out: it refuses without."""
    bucket = fresh_bucket()
    moto_target.client().make_bucket(bucket, object_lock=True)
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=moto_target.ca_bundle)
    url = f"https://{moto_target.endpoint}/{bucket}/raw"
    lock = {
        "x-amz-object-lock-mode": "COMPLIANCE",
        "x-amz-object-lock-retain-until-date": "2099-01-01T00:00:00.000Z",
    }

    refused = http.request("PUT", url, body=b"x", headers=lock)
    accepted = http.request(
        "PUT", url, body=b"x", headers=lock | {"Content-MD5": _content_md5(b"x")}
    )

    assert refused.status == 400
    assert b"MissingUploadObjectWithObjectLockHeaders" in refused.data
    assert accepted.status == 200


def test_s3_server_refusal_of_a_locked_delete_is_a_retention_violation(
    s3_target: S3Target,
) -> None:
    bucket = fresh_bucket()
    writer = s3_target.store(bucket, SystemClock())
    writer.ensure_bucket()
    stored = writer.put(KEY, b"x", retain_until=datetime.now(UTC) + STEP)
    # A clock that believes retention is over skips the store's own check,
    # so the refusal below comes from the server.
    skewed = s3_target.store(bucket, FixedClock(datetime.now(UTC) + timedelta(days=1)))

    with pytest.raises(RetentionViolation):
        skewed.delete(KEY, stored.version_id)
    assert writer.get(KEY, stored.version_id) == b"x"


def test_s3_ensure_bucket_refuses_a_bucket_without_object_lock(s3_target: S3Target) -> None:
    bucket = fresh_bucket()
    s3_target.client().make_bucket(bucket)

    with pytest.raises(StoreUnavailable, match="without Object Lock"):
        s3_target.store(bucket, SystemClock()).ensure_bucket()


def test_s3_ensure_bucket_creates_a_locked_bucket_once(s3_target: S3Target) -> None:
    bucket = fresh_bucket()
    store = s3_target.store(bucket, SystemClock())

    store.ensure_bucket()
    store.ensure_bucket()

    assert s3_target.client().get_object_lock_config(bucket) is not None
    store.ping()


def test_s3_ping_refuses_a_missing_bucket(s3_target: S3Target) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        s3_target.store(fresh_bucket(), SystemClock()).ping()


def test_s3_untrusted_server_certificate_is_refused(moto_target: S3Target) -> None:
    store = dataclasses.replace(moto_target, ca_bundle=None).store(fresh_bucket(), SystemClock())

    with pytest.raises(StoreUnavailable):
        store.ping()


def test_s3_unreachable_endpoint_is_store_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = S3Target(f"127.0.0.1:{port}", "k", "s", secure=False, region="us-east-1")

    with pytest.raises(StoreUnavailable):
        target.store("any-bucket", SystemClock()).ping()
