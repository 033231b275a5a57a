"""The webhook benchmark runs end to end in a short run, and checks what it reports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_postgresql
from tests.e2e.server import clean_env

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("database", "workers", "pause"),
    [
        ("sqlite", 1, False),
        ("sqlite", 1, True),
        pytest.param("postgresql", 2, False, marks=pytest.mark.postgres),
    ],
    ids=["worker-running", "worker-paused", "postgresql-two-workers"],
)
def test_the_webhook_benchmark_runs_and_its_correctness_checks_pass(
    tmp_path: Path, database: str, workers: int, pause: bool
) -> None:
    if database == "postgresql":
        require_postgresql()
    args = ["--seconds", "0.5", "--warmup", "0.2", "--rate", "100", "--drain-seconds", "3"]
    args += ["--database", database, "--workers", str(workers)]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.webhooks",
            *args,
            *(["--pause-worker"] if pause else []),
        ],
        cwd=tmp_path,  # its data directory goes under the working directory
        env=clean_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, run.stderr[-3000:]

    assert "answers other than 200, and connection errors, in all phases: none" in out
    assert re.search(r"fsynced 1 KB file write, 100/s for 5 s .* over 50 ms: \d+", out), out
    assert f"database {database}, {workers} projection worker(s)" in out
    assert ("the projection workers are paused during the load" in out) == pause
    sampled = re.search(r"sampled projected wamids with exactly one record .*: (\d+)/(\d+)", out)
    assert sampled is not None, out
    assert sampled[1] == sampled[2], out
    assert int(sampled[2]) > 0, out
    assert re.search(
        r"journal: \d+ entries for \d+ acknowledged POSTs \+ 1 sentinel \(equal\)", out
    )
    assert "(no duplicates)" in out
    assert "(none sealed twice)" in out
    for phase in ("GET /healthz", "open loop at 100 POST/s", "closed loop, 1 message/POST"):
        assert phase in out
    cpu = re.findall(r"CPU in the window: server (\d+)%, workers (\d+)%", out)
    assert len(cpu) == 4, out
    assert all(int(server) > 0 for server, _ in cpu), out
    if pause:  # stopped: not a tick of CPU in any window, and nothing projected alongside
        assert all(worker == "0" for _, worker in cpu), out
        alongside = re.findall(r"projection alongside: (\d+) items projected", out)
        assert alongside == ["0", "0", "0"], out
    for target in ("messages/s, 50 per POST", "POST/s, 1 per POST", "ack p99 at 100 POST/s"):
        assert target in out
    assert not list(tmp_path.iterdir())  # its temporary data directory is gone
