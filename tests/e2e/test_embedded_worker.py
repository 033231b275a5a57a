"""The embedded server runs its worker as a child process and never leaves it behind:
it stops with the server, and by itself when the server is killed. The worker
yields the CPU to the server, except for its database writer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import server_env
from tests.e2e.server import Server


def _worker_of(parent: int) -> int | None:
    """The pid of ``parent``'s ``strongroom worker`` child, if it has one (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == parent and b"worker" in cmdline and b"--embedded" in cmdline:
            return int(stat.parent.name)
    return None


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting to be reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _niceness_of_threads(pid: int) -> dict[int, int]:
    """``thread id → niceness`` of each thread of ``pid`` (Linux /proc)."""
    found = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            found[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[16])
        except OSError:
            continue  # the thread ended meanwhile
    return found


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    """An embedded server on SQLite, and the pid of its worker."""
    data = tmp_path / "data"
    server = Server(server_env(data, "sqlite"), data, tmp_path / "log")
    try:
        server.start()
        assert server.proc is not None
        server_pid = server.proc.pid
        yield server, server.wait_for(lambda: _worker_of(server_pid))
    finally:
        server.close()


def test_the_worker_runs_at_a_lower_priority_but_its_database_writer(
    running: tuple[Server, int],
) -> None:
    server, worker = running
    assert server.proc is not None
    server.wait_for(lambda: _niceness_of_threads(worker).get(worker) == 10)
    # The writer thread keeps the server's priority: SQLite's one write lock,
    # which it holds, is then never held longer because the worker yields.
    assert 0 in _niceness_of_threads(worker).values()
    assert set(_niceness_of_threads(server.proc.pid).values()) == {0}


def test_the_worker_stops_with_the_server(running: tuple[Server, int], tmp_path: Path) -> None:
    server, worker = running
    server.stop()  # SIGTERM: the server waits for its worker to finish
    assert server.proc is not None
    assert server.proc.returncode is not None
    assert _gone(worker)
    assert "worker stopped" in (tmp_path / "log").read_text()


def test_a_killed_servers_worker_stops_by_itself(running: tuple[Server, int]) -> None:
    server, worker = running
    server.kill()  # SIGKILL: no shutdown hook runs, but the worker's stdin closes
    server.wait_for(lambda: _gone(worker))
