"""Vault seal benchmark on the file backend, with raw baselines from the same run.

Run: ``make bench-vault``. Prints objects/s, MB/s and p50/p99 latency of a full
seal (subject key lookup, AES-256-GCM envelope, create-exclusive fsynced write,
read-only, sidecar, database record committed on SQLite) for 1 KB and 1 MB
objects, next to raw AES-256-GCM and raw fsynced file writes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from api.migrate import upgrade
from archiver.core.clock import SystemClock
from archiver.core.db import create_engine, session_factory
from archiver.crypto.keyring import Keyring
from archiver.vault.filestore import FileStore
from archiver.vault.services import SealRequest, Vault


def _figures(name: str, size: int, latencies: list[float], wall: float) -> dict[str, float]:
    n = len(latencies)
    ordered = sorted(latencies)
    result = {
        "ops": n / wall,
        "mbps": n * size / wall / 1e6,
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[min(n - 1, int(n * 0.99))] * 1e3,
    }
    print(
        f"  {name:<22} {result['ops']:>9.0f} obj/s {result['mbps']:>9.1f} MB/s "
        f"p50 {result['p50_ms']:>8.3f} ms  p99 {result['p99_ms']:>8.3f} ms"
    )
    return result


async def _timed(count: int, op: Callable[[int], Awaitable[None]]) -> tuple[list[float], float]:
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        await op(i)
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - start


async def bench(size: int, count: int, workdir: Path) -> None:
    payload = secrets.token_bytes(size)
    label = f"{size // 1024} KB" if size < 1 << 20 else f"{size >> 20} MB"
    print(f"\n{label} objects, {count} each")

    key = secrets.token_bytes(32)
    aead = AESGCM(key)

    async def raw_aes(_: int) -> None:
        aead.encrypt(os.urandom(12), payload, b"object-key")

    raw_dir = workdir / f"raw-{size}"
    raw_dir.mkdir()

    async def raw_write(i: int) -> None:
        fd = os.open(raw_dir / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)

    clock = SystemClock()
    db_path = workdir / f"bench-{size}.db"
    url = f"sqlite+aiosqlite:///{db_path}"
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    vault = Vault(FileStore(workdir / f"vault-{size}", clock), Keyring([key], clock), clock)
    retain = clock.now() + timedelta(days=7)

    async def seal(i: int) -> None:
        async with sessions() as session, session.begin():
            await vault.seal(
                session,
                kind="bench",
                subject=f"contact:{i % 100}",
                plaintext=payload,
                retain_until=retain,
            )

    batch = 64

    async def seal_batch(i: int) -> None:
        requests = [
            SealRequest("bench", f"contact:{(i * batch + j) % 100}", payload, retain)
            for j in range(batch)
        ]
        async with sessions() as session, session.begin():
            await vault.seal_many(session, requests)

    aes = _figures("raw AES-256-GCM", size, *await _timed(count, raw_aes))
    disk = _figures("raw fsynced write", size, *await _timed(count, raw_write))
    ours = _figures("vault seal", size, *await _timed(count, seal))
    latencies, wall = await _timed(max(1, count // batch), seal_batch)
    many = _figures(f"vault seal_many x{batch}", size * batch, latencies, wall)
    await engine.dispose()
    print(
        f"  vault seal throughput = {ours['ops'] / aes['ops']:.3f}x raw AES-GCM, "
        f"{ours['ops'] / disk['ops']:.3f}x raw fsynced write; "
        f"p99 = {ours['p99_ms'] / disk['p99_ms']:.2f}x raw fsynced write p99"
    )
    print(
        f"  batched (the capture path): {many['ops'] * batch:.0f} obj/s = "
        f"{many['ops'] * batch / disk['ops']:.3f}x raw fsynced write (one writer)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=2000, help="number of 1 KB objects")
    parser.add_argument("--large", type=int, default=100, help="number of 1 MB objects")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="strongroom-bench-", dir=".") as tmp:
        asyncio.run(bench(1024, args.small, Path(tmp)))
        asyncio.run(bench(1 << 20, args.large, Path(tmp)))


if __name__ == "__main__":
    main()
