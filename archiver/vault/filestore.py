"""The embedded vault backend: write-once files on a local filesystem.

Layout under ``root``::

    objects/<key>        the stored bytes, read-only to the owner (0o400), never rewritten
    locks/<key>.json     the sidecar: version, SHA-256, size, retain-until, hold
    tmp/                 temporary files; anything left here after a crash is ignored
    .lock                serialises writers (``flock``), across threads and processes

An object is written to ``tmp/`` (create-exclusive, made read-only, durable)
and then hard-linked to its final path, so a crash never leaves a readable
partial object under its key. The sidecar is written first, so an object never
exists without its lock metadata; a sidecar without an object is the trace of a
crash and is treated as absent.

Every directory is created 0700 and every file 0600 (objects then 0400), so
nothing is readable by group or others whatever the umask.

The store enforces retention and legal hold itself, but only against callers
that go through it: a root user (or anyone with write access to the directory)
can still change or remove the files. Use the S3 backend with Object Lock in
COMPLIANCE mode where that matters.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from archiver.core.clock import Clock
from archiver.core.errors import ObjectExists, ObjectNotFound, RetentionViolation, StoreUnavailable
from archiver.vault.interfaces import LockState, NewObject, StoredObject

_READ_ONLY = 0o400
# Python's os module has no syncfs(2), so it is called through ctypes. One syncfs
# makes a whole batch durable for about the cost of one fsync, where fsyncing each
# file and directory cost four per object; that made the disk, not the CPU, the
# limit of capture. Linux only: elsewhere every file and directory is fsynced.
_syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
_SIDECAR_SUFFIX = ".json"


def _check_key(key: str) -> str:
    """Refuse a key that is empty or could name a path outside the store."""
    if not key or "\\" in key or "\0" in key or key.startswith("/"):
        raise ValueError(f"invalid object key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}: empty, '.' or '..' segment")
    return key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(path: Path) -> None:
    """Create ``path`` and its missing parents, durably (each new entry is fsynced)."""
    if path.is_dir():
        return
    _makedirs(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    _fsync_dir(path.parent)


def _sidecar_bytes(stored: StoredObject) -> bytes:
    record = {
        "version_id": stored.version_id,
        "sha256": stored.sha256,
        "size": stored.size,
        "retain_until": stored.retain_until.isoformat(),
        "legal_hold": stored.legal_hold,
    }
    return json.dumps(record, sort_keys=True).encode()


def _aware_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("retain_until must be timezone-aware")
    return moment.astimezone(UTC)


class FileStore:
    """An ``ObjectStore`` on a local directory; see the module docstring for its limits."""

    def __init__(self, root: Path, clock: Clock) -> None:
        self._root = root
        self._objects = root / "objects"
        self._locks = root / "locks"
        self._tmp = root / "tmp"
        self._clock = clock

    def put(
        self, key: str, data: bytes, *, retain_until: datetime, legal_hold: bool = False
    ) -> StoredObject:
        """Store ``data`` under a new ``key``; raise ``ObjectExists`` if it is taken."""
        return self.put_many([NewObject(key, data, retain_until, legal_hold)])[0]

    def put_many(self, objects: Sequence[NewObject]) -> list[StoredObject]:
        """Store several new objects; a bad or taken key stores none of them.

        Every file of the batch is made durable together (see ``_sync``), so a
        batch costs about what one object did.
        """
        now = self._clock.now()
        stored = []
        for obj in objects:
            self.path_of(obj.key)  # refuses an invalid key
            retain_until = _aware_utc(obj.retain_until)
            if retain_until <= now:
                raise ValueError("retain_until must be in the future")
            stored.append(
                StoredObject(
                    key=obj.key,
                    version_id=uuid.uuid4().hex,
                    sha256=hashlib.sha256(obj.data).hexdigest(),
                    size=len(obj.data),
                    retain_until=retain_until,
                    legal_hold=obj.legal_hold,
                )
            )
        keys = [obj.key for obj in objects]
        if len(set(keys)) != len(keys):
            raise ValueError("a key is given twice")
        directories = {self.path_of(k).parent for k in keys} | {
            self._sidecar_path(k).parent for k in keys
        }
        temps: list[tuple[Path, Path]] = []
        with self._os_errors():
            for key in keys:
                self._check_free(key)  # before creating directories that could collide
            for directory in (self._tmp, *sorted(directories)):
                _makedirs(directory)
            try:
                # Every file is written and made durable before the lock is taken,
                # so the critical section is renames only.
                for obj, record in zip(objects, stored, strict=True):
                    temps.append(
                        (
                            self._write_temp(obj.data, durable=_syncfs is None),
                            self._write_temp(_sidecar_bytes(record), durable=_syncfs is None),
                        )
                    )
                self._sync()  # the files, before any of them can be seen
                with self._writer_lock():
                    for key in keys:
                        self._check_free(key)
                    for key, (tmp_object, tmp_sidecar) in zip(keys, temps, strict=True):
                        # Under the lock and with no object present, an existing
                        # sidecar can only be debris of a crashed put: replacing it
                        # is safe.
                        os.replace(tmp_sidecar, self._sidecar_path(key))
                        os.link(tmp_object, self.path_of(key))
            finally:
                for tmp_object, tmp_sidecar in temps:
                    tmp_object.unlink()
                    tmp_sidecar.unlink(missing_ok=True)
            self._sync(directories)
        return stored

    def get(self, key: str, version_id: str) -> bytes:
        """Return the bytes of one version; raise ``ObjectNotFound``."""
        with self._os_errors():
            self._read_sidecar(key, version_id)
            try:
                return self.path_of(key).read_bytes()
            except FileNotFoundError:
                raise ObjectNotFound(f"no object {key}") from None

    def lock_state(self, key: str, version_id: str) -> LockState:
        """Read the retention and legal hold recorded in the sidecar."""
        with self._os_errors():
            stored = self._read_sidecar(key, version_id)
        return LockState(retain_until=stored.retain_until, legal_hold=stored.legal_hold)

    def extend_retention(self, key: str, version_id: str, retain_until: datetime) -> None:
        """Move retain-until later; raise ``RetentionViolation`` if it is earlier."""
        retain_until = _aware_utc(retain_until)
        with self._os_errors(), self._writer_lock():
            stored = self._read_sidecar(key, version_id)
            if retain_until < stored.retain_until:
                raise RetentionViolation(
                    f"{key}: retention can only be extended "
                    f"(now {stored.retain_until.isoformat()}, asked {retain_until.isoformat()})"
                )
            if retain_until != stored.retain_until:
                self._write_sidecar(dataclasses.replace(stored, retain_until=retain_until))

    def set_legal_hold(self, key: str, version_id: str, on: bool) -> None:
        """Set or clear the legal hold flag of one version."""
        with self._os_errors(), self._writer_lock():
            stored = self._read_sidecar(key, version_id)
            if stored.legal_hold != on:
                self._write_sidecar(dataclasses.replace(stored, legal_hold=on))

    def delete(self, key: str, version_id: str) -> None:
        """Remove one version; raise ``RetentionViolation`` while retained or held."""
        path = self.path_of(key)
        with self._os_errors(), self._writer_lock():
            stored = self._read_sidecar(key, version_id)
            if stored.legal_hold:
                raise RetentionViolation(f"{key} is under legal hold")
            if self._clock.now() < stored.retain_until:
                raise RetentionViolation(
                    f"{key} is retained until {stored.retain_until.isoformat()}"
                )
            # Object first, sidecar second: an object never exists without its metadata.
            path.unlink()
            _fsync_dir(path.parent)
            sidecar = self._sidecar_path(key)
            sidecar.unlink()
            _fsync_dir(sidecar.parent)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Yield every stored key under ``prefix``, in sorted order."""
        directory = prefix.rpartition("/")[0]
        start = self._objects / _check_key(directory) if directory else self._objects
        return self._walk(start, prefix)

    def _walk(self, start: Path, prefix: str) -> Iterator[str]:
        with self._os_errors():
            for dirpath, dirnames, filenames in os.walk(start):
                dirnames.sort()
                relative = Path(dirpath).relative_to(self._objects).as_posix()
                base = "" if relative == "." else relative + "/"
                for name in sorted(filenames):
                    key = base + name
                    if key.startswith(prefix):
                        yield key

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless ``root`` is a writable directory."""
        try:
            _makedirs(self._tmp)
            self._write_temp(b"").unlink()
        except OSError as exc:
            raise StoreUnavailable(f"file vault at {self._root} is not writable: {exc}") from exc

    def path_of(self, key: str) -> Path:
        """The file that holds ``key``'s bytes, whether or not it exists yet."""
        return self._objects / _check_key(key)

    def _check_free(self, key: str) -> None:
        """Refuse a key that is taken, or whose path another key's path occupies."""
        # One stat answers both: a file on the way to the path fails it with ENOTDIR.
        try:
            if stat.S_ISREG(os.stat(self.path_of(key)).st_mode):
                raise ObjectExists(f"{key} is already stored")
        except FileNotFoundError:
            return
        except NotADirectoryError:
            pass
        raise ValueError(f"key {key!r} collides with the path of another key")

    def _sidecar_path(self, key: str) -> Path:
        return self._locks / (_check_key(key) + _SIDECAR_SUFFIX)

    def _write_temp(self, data: bytes, *, durable: bool = True) -> Path:
        """Write ``data`` to a new read-only file in ``tmp/``, fsynced if ``durable``."""
        path = self._tmp / f"{uuid.uuid4().hex}.tmp"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, _READ_ONLY)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            path.unlink()
            raise
        return path

    def _write_sidecar(self, stored: StoredObject) -> None:
        """Atomically replace the sidecar of ``stored.key``; the caller holds the lock."""
        sidecar = self._sidecar_path(stored.key)
        tmp = self._write_temp(_sidecar_bytes(stored))
        try:
            os.replace(tmp, sidecar)
        except BaseException:
            tmp.unlink()
            raise
        _fsync_dir(sidecar.parent)

    def _read_sidecar(self, key: str, version_id: str) -> StoredObject:
        """The metadata of a stored version; ``ObjectNotFound`` unless the object exists."""
        if not self.path_of(key).is_file():
            raise ObjectNotFound(f"no object {key}")
        try:
            raw = self._sidecar_path(key).read_bytes()
        except FileNotFoundError:
            raise StoreUnavailable(f"{key}: object without lock metadata") from None
        try:
            record = json.loads(raw)
            stored = StoredObject(
                key=key,
                version_id=str(record["version_id"]),
                sha256=str(record["sha256"]),
                size=int(record["size"]),
                retain_until=_aware_utc(datetime.fromisoformat(record["retain_until"])),
                legal_hold=bool(record["legal_hold"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailable(f"{key}: corrupt lock metadata: {exc}") from exc
        if stored.version_id != version_id:
            raise ObjectNotFound(f"{key} has no version {version_id}")
        return stored

    def _sync(self, directories: Iterable[Path] = ()) -> None:
        """Make what was written durable: the whole filesystem with one ``syncfs``
        where there is one; otherwise each of ``directories`` (the caller has
        fsynced its files)."""
        if _syncfs is None:
            for directory in directories:
                _fsync_dir(directory)
            return
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) != 0:
                error = ctypes.get_errno()
                raise OSError(error, os.strerror(error))
        finally:
            os.close(fd)

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        _makedirs(self._root)
        fd = os.open(self._root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def _os_errors(self) -> Iterator[None]:
        """Translate filesystem failures into ``StoreUnavailable``."""
        try:
            yield
        except OSError as exc:
            raise StoreUnavailable(f"file vault at {self._root}: {exc}") from exc
