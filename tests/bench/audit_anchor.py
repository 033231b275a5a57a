"""What one audit anchoring costs: ``python -m tests.bench.audit_anchor``.

On a migrated SQLite file and a file vault under the current directory, appends
``--events`` events (10 s of webhook POSTs at 500/s by default) before each of
``--rounds`` checkpoints and prints the CPU and wall time of each checkpoint
(the worker's whole job: head, signature, sealed object, rows) and of the
appends, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from api.migrate import upgrade
from archiver.audit.services import AuditEntry, AuditLog
from archiver.core.clock import SystemClock
from archiver.core.db import Writer, create_engine, session_factory
from archiver.crypto.keyring import Keyring
from archiver.vault.filestore import FileStore
from archiver.vault.services import Vault


async def measure(workdir: Path, url: str, events: int, rounds: int) -> None:
    engine = create_engine(url)
    sessions = session_factory(engine)
    clock = SystemClock()
    keyring = Keyring([secrets.token_bytes(32)], clock)
    writer = Writer(sessions, url)
    audit = AuditLog(
        sessions, Vault(FileStore(workdir / "vault", clock), keyring, clock), keyring, clock,
        writer=writer,
    )  # fmt: skip
    entry = AuditEntry(actor="anonymous", action="http.POST /webhooks/whatsapp", outcome="allowed")
    cpu, wall, append_cpu = [], [], []
    try:
        for _ in range(rounds):
            started = time.process_time()
            for _ in range(events):
                await audit.record(entry)
            await audit.flush()
            append_cpu.append(time.process_time() - started)
            started, started_wall = time.process_time(), time.perf_counter()
            assert await audit.checkpoint() is not None
            cpu.append(time.process_time() - started)
            wall.append(time.perf_counter() - started_wall)
    finally:
        await audit.close()
        await writer.close()
        await engine.dispose()
    ms = [f"{c * 1e3:.1f}" for c in cpu]
    print(f"one checkpoint after {events} new events, {rounds} rounds (first lists the vault)")
    print(f"  CPU ms: {', '.join(ms)}; median {statistics.median(cpu) * 1e3:.1f}")
    print(f"  wall ms: median {statistics.median(wall) * 1e3:.1f}, max {max(wall) * 1e3:.1f}")
    print(
        f"  appending those events: median {statistics.median(append_cpu) * 1e3:.0f} ms CPU, "
        f"so a checkpoint adds {statistics.median(cpu) / statistics.median(append_cpu):.2%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="new events per checkpoint")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="strongroom-anchor-", dir=".") as tmp:
        workdir = Path(tmp).resolve()
        url = f"sqlite+aiosqlite:///{workdir / 'strongroom.db'}"
        upgrade(url)  # before the event loop: migrations run one of their own
        asyncio.run(measure(workdir, url, args.events, args.rounds))


if __name__ == "__main__":
    main()
