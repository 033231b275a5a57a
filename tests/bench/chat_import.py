"""Chat import memory benchmark: peak RSS of a large export's import, against raw
baselines measured in the same run.

Run: ``python -m tests.bench.chat_import`` (``--megabytes`` sets the export's
size, 300 by default). It builds an iOS export zip in a temporary directory (a
``_chat.txt`` and media files of 0.5 to 1 MiB of random bytes, four text messages
for each), then measures the peak resident memory (``ru_maxrss`` of the process,
from ``wait4``) of

- the interpreter with the CLI imported;
- the interpreter reading the export's largest member (the raw cost of one file);
- ``strongroom import chat-export`` of a one-line export (the same command, no data);
- ``strongroom import chat-export`` of the large export;

and, over HTTP, the server's peak (``VmHWM``, reset before the upload) while it
takes the large export through ``POST /api/v1/imports/chat-export``. Peak memory
of an import is bounded by the largest member plus a constant, not by the
export's size: the figures say by how much.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.e2e.server import STRONGROOM, Server, clean_env

MIB = 2**20
SENDERS = ("Harbour Dental", "Maya Okafor")


@dataclass(frozen=True, slots=True)
class Export:
    """A built export: where it is, its message and media counts, its largest member."""

    path: Path
    messages: int
    media: int
    largest: int

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def build_export(
    path: Path, megabytes: float, texts: int = 4, seed: int = 1505, video: float = 0
) -> Export:
    """An iOS export zip of about ``megabytes`` MiB: media files of 0.5 to 1 MiB of
    random bytes (stored, as phones store JPEGs), ``texts`` text messages before
    each, and the chat (deflated); with ``video``, first a video of that many MiB.
    Written member by member."""
    rng = random.Random(seed)
    moment = datetime(2024, 1, 13, 9, 0, 0, tzinfo=UTC)  # written as local time
    lines: list[str] = []
    sizes: list[int] = []
    media = 0
    with zipfile.ZipFile(path, "w") as archive:
        if video:
            media += 1
            name = f"{media:08d}-VIDEO-{moment:%Y-%m-%d-%H-%M-%S}.mp4"
            sizes.append(int(video * MIB))
            archive.writestr(name, rng.randbytes(sizes[-1]), zipfile.ZIP_STORED)
            lines.append(f"[{moment:%d/%m/%Y, %H:%M:%S}] {SENDERS[1]}: <attached: {name}>")
        while sum(sizes) < megabytes * MIB:
            for n in range(texts):
                moment += timedelta(seconds=rng.randint(5, 600))
                sender = SENDERS[n % 2]
                lines.append(f"[{moment:%d/%m/%Y, %H:%M:%S}] {sender}: message {len(lines) + 1}")
            media += 1
            moment += timedelta(seconds=rng.randint(5, 600))
            name = f"{media:08d}-PHOTO-{moment:%Y-%m-%d-%H-%M-%S}.jpg"
            size = rng.randint(MIB // 2, MIB)
            archive.writestr(name, rng.randbytes(size), zipfile.ZIP_STORED)
            lines.append(f"[{moment:%d/%m/%Y, %H:%M:%S}] {SENDERS[1]}: <attached: {name}>")
            sizes.append(size)
        chat = ("\n".join(lines) + "\n").encode()
        archive.writestr("_chat.txt", chat, zipfile.ZIP_DEFLATED)
    return Export(path, len(lines), media, max(*sizes, len(chat)))


@dataclass(frozen=True, slots=True)
class Run:
    """A finished process: its exit code, output and peak resident memory."""

    returncode: int
    stdout: str
    stderr: str
    peak: int
    """Bytes."""


# Forks and execs the command, then writes its ru_maxrss (KiB) to argv[1]. Linux
# starts an exec'd process's ru_maxrss at the peak of the process that forked it,
# so the fork is made by this small interpreter rather than by the caller.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(args: list[str], env: dict[str, str]) -> Run:
    """Run ``args`` to the end and read its own peak RSS (``wait4`` in a small
    launcher: the figure is the command's alone)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "maxrss"
        done = subprocess.run(
            [sys.executable, "-S", "-c", _LAUNCHER, str(report), *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr, int(report.read_text()) * 1024)


def cli_import(env: dict[str, str], path: Path, account: str, contact: str) -> Run:
    """``strongroom import chat-export`` of ``path``, measured."""
    return measured(
        [
            STRONGROOM,
            "import",
            "chat-export",
            str(path),
            "--account",
            account,
            "--contact",
            contact,
        ],
        env,
    )


def status_bytes(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory figure (``VmRSS``, ``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def reset_peak(pid: int) -> int:
    """Reset the process's ``VmHWM`` to its current RSS, and return that."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_bytes(pid, "VmHWM")


def mib(n: float) -> str:
    return f"{n / MIB:8.1f} MiB"


def bench(megabytes: float, video: float, workdir: Path) -> None:
    started = time.perf_counter()
    export = build_export(workdir / "export.zip", megabytes, video=video)
    print(
        f"export: {mib(export.size).strip()} zip, {export.messages} messages, "
        f"{export.media} media files, largest member {mib(export.largest).strip()} "
        f"(built in {time.perf_counter() - started:.1f} s)"
    )
    tiny = workdir / "tiny.txt"
    tiny.write_text("[13/01/2024, 09:00:00] Maya Okafor: hello\n")

    data_dir = workdir / "data"
    env = clean_env(STRONGROOM_DATA_DIR=str(data_dir), STRONGROOM_LOG_LEVEL="warning")
    server = Server(env, data_dir, workdir / "server.log")
    try:
        server.start()
        server.bootstrap_users()
        account = server.add_account()
        python = [sys.executable, "-c"]
        largest = (
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); "
            "m = max(z.infolist(), key=lambda i: i.file_size); data = z.read(m)"
        )
        rows = [
            ("interpreter with the CLI imported", measured([*python, "import api.cli.main"], env)),
            (
                "interpreter reading the largest member",
                measured([*python, largest, str(export.path)], env),
            ),
            ("CLI import of a one-line export", cli_import(env, tiny, account, "+447700900001")),
        ]
        started = time.perf_counter()
        big = cli_import(env, export.path, account, "+447700900002")
        took = time.perf_counter() - started
        if big.returncode != 0:
            raise SystemExit(f"the import failed: {big.stderr[-2000:]}")
        rows.append((f"CLI import of the {megabytes:g} MiB export", big))

        print("\npeak RSS (ru_maxrss of each process)")
        for name, run in rows:
            print(f"  {name:<44} {mib(run.peak)}")
        base = rows[2][1].peak
        print(f"  {'import, above the one-line import':<44} {mib(big.peak - base)}")
        print(f"  {'  in largest members':<44} {(big.peak - base) / export.largest:8.1f} x")
        print(f"  {'  in export sizes':<44} {(big.peak - base) / export.size:8.2f} x")
        print(f"  CLI: {big.stdout.strip()} in {took:.1f} s")

        assert server.proc is not None
        # A token's first use derives its hash (memory-hard) once; not the import's.
        server.get("/api/v1/accounts").raise_for_status()
        before = reset_peak(server.proc.pid)
        started = time.perf_counter()
        with export.path.open("rb") as upload:
            response = server.client.post(
                "/api/v1/imports/chat-export",
                files={"file": ("WhatsApp Chat - Harbour Dental.zip", upload)},
                data={"account_id": account, "contact": "+447700900003"},
                headers=server.officer,
                timeout=600,
            )
        took = time.perf_counter() - started
        if response.status_code != 201:
            raise SystemExit(f"the HTTP import failed: {response.text[:2000]}")
        peak = status_bytes(server.proc.pid, "VmHWM")
        print("\npeak RSS of the server (VmHWM, reset before the upload)")
        print(f"  {'before the upload':<44} {mib(before)}")
        print(f"  {'during upload and import':<44} {mib(peak)}")
        print(f"  {'above before':<44} {mib(peak - before)}")
        print(f"  {'  in largest members':<44} {(peak - before) / export.largest:8.1f} x")
        result = response.json()
        print(
            f"  HTTP: imported {result['imported']} of {result['messages']} messages, "
            f"{result['media']} media files in {took:.1f} s"
        )
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=300.0, help="the export's size")
    parser.add_argument(
        "--video", type=float, default=0.0, help="add a video of this many MiB (the largest)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="strongroom-bench-") as tmp:
        bench(args.megabytes, args.video, Path(tmp).resolve())


if __name__ == "__main__":
    main()
