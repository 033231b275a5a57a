"""The SQLite write gate: one writer at a time, in a process and across processes.

Each gate opens its own file description for the ``flock``, so two gates on one
path exclude each other exactly as the gates of two processes do.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from archiver.db import WriteGate, write_gate


async def test_writers_of_one_process_take_turns(tmp_path: Path) -> None:
    gate = WriteGate(tmp_path / "db-gate")
    trace: list[str] = []

    async def writer(name: str) -> None:
        async with gate:
            trace.append(f"{name} in")
            await asyncio.sleep(0)
            trace.append(f"{name} out")

    await asyncio.gather(writer("a"), writer("b"), writer("c"))
    assert trace == ["a in", "a out", "b in", "b out", "c in", "c out"]


async def test_another_process_waits_until_the_holder_leaves(tmp_path: Path) -> None:
    holder, other = WriteGate(tmp_path / "db-gate"), WriteGate(tmp_path / "db-gate")
    entered = asyncio.Event()

    async def write() -> None:
        async with other:
            entered.set()

    async with holder:
        waiting = asyncio.create_task(write())
        await asyncio.sleep(0.05)  # time to try; it cannot get in while the holder is inside
        assert not entered.is_set()
    await asyncio.wait_for(waiting, timeout=10)
    assert entered.is_set()


async def test_a_cancelled_waiter_does_not_keep_the_lock(tmp_path: Path) -> None:
    holder, cancelled, later = (WriteGate(tmp_path / "db-gate") for _ in range(3))

    async def write(gate: WriteGate) -> None:
        async with gate:
            pass

    async with holder:
        waiting = asyncio.create_task(write(cancelled))
        await asyncio.sleep(0.05)  # let it block on the lock, in its thread
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    # The cancelled waiter's thread takes the lock once the holder leaves, then
    # gives it back: a later writer still gets in.
    await asyncio.wait_for(write(later), timeout=10)


async def test_an_exception_inside_releases_the_gate(tmp_path: Path) -> None:
    gate = WriteGate(tmp_path / "db-gate")
    with contextlib.suppress(RuntimeError):
        async with gate:
            raise RuntimeError("the transaction failed")
    await asyncio.wait_for(gate.__aenter__(), timeout=10)
    await gate.__aexit__(None, None, None)
    other = WriteGate(tmp_path / "db-gate")
    await asyncio.wait_for(other.__aenter__(), timeout=10)
    await other.__aexit__(None, None, None)


def test_only_an_sqlite_file_has_a_gate_file(tmp_path: Path) -> None:
    on_file = write_gate(f"sqlite+aiosqlite:///{tmp_path}/strongroom.db")
    assert isinstance(on_file, WriteGate)
    assert on_file._path == tmp_path / "strongroom.db-gate"
    in_memory = write_gate("sqlite+aiosqlite://")
    assert isinstance(in_memory, WriteGate)
    assert in_memory._path is None
    assert not isinstance(write_gate("postgresql+asyncpg://u:p@localhost/db"), WriteGate)
