"""Dispatch benchmark (issue 17): the dispatcher against the fake Graph API on
loopback, five business numbers at once, each with a policy of 80 messages/s.

Run: ``make bench-dispatch`` (about 10 s of sending per number), or
``python -m tests.bench.dispatch --seconds 3 --database postgresql``.

The archive (``tests.bench.outbox_world``, SQLite by default): 5 numbers, each
with ``messages_per_second`` 80 and a warm-up that allows 80 from day 0 (so it is
not the limit), no messaging-tier limit; recipients in regions where it is day
now, every one with an inbound message within the hour to each number. Queued:
``80 x seconds`` free-form replies per number, spread over the recipients (at
most 3 per recipient and number, the pair rate's burst), plus items that must
not go out: templates to recipients where it is night now (quiet hours) and
free-form texts to recipients who never wrote (the customer service window).

The fake Graph API (``api.sandbox.fake_graph``) serves on 127.0.0.1, as the tests
run it but in a process of its own (in this one it would share the interpreter
lock with the dispatcher, and measure that); the dispatcher's own loop
(``Dispatcher.run``: decide, then claim, post paced per number, finish) runs
until every allowed item is posted or a deadline passes.

From the fake's request log (its answer times), printed per number: POSTs, the
sustained rate (POSTs after the first over the time from the first to the last)
and the busiest and quietest full second; then the checker's violations, each
counted over every POST:

* **number rate**: no 1-second window (sliding, over answer times) with more
  than 80 POSTs from one number;
* **pair rate**: per (number, recipient), a token bucket of 3, one token back
  every 6 s, never below zero;
* **quiet hours**: no POST to a recipient whose local time (their number's
  zone) is before 08:00 or from 22:00;
* **window**: no free-form text to a recipient without an inbound message to
  that number in the previous 24 hours.

The raw baseline: the same number of POSTs to the fake, unpaced, from one
``httpx.AsyncClient`` (the loopback and fake's ceiling). ``--profile`` runs the
dispatcher under cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import multiprocessing
import os
import pstats
import random
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import phonenumbers
from phonenumbers import timezone as phone_timezones

from api.cli.operator import CLI
from api.sandbox.fake_graph import FakeGraph, LoggedSend, running_fake_graph
from policy.decision import PolicySettings, WarmupStep
from tests.bench.outbox_world import (
    World,
    day_regions,
    mixed_requests,
    queue,
    template_request,
    text_request,
    world,
)

RATE = 80
PAIR_BURST = 3
PAIR_INTERVAL = 6.0
QUIET_START, QUIET_END = 22, 8
WINDOW_SECONDS = 24 * 3600


@dataclass
class NumberFigures:
    posts: int
    sustained: float
    busiest: int
    quietest: int


@dataclass
class Result:
    numbers: dict[str, NumberFigures] = field(default_factory=dict)
    violations: dict[str, int] = field(default_factory=dict)
    expected: int = 0
    posted: int = 0
    forbidden_queued: int = 0
    seconds: float = 0.0
    baseline_per_second: float = 0.0
    states: dict[str, int] = field(default_factory=dict)
    steps: dict[str, list[float]] = field(default_factory=dict)
    profile: str = ""

    @property
    def total_violations(self) -> int:
        return sum(self.violations.values())


def _zone(wa_id: str) -> str | None:
    zones = phone_timezones.time_zones_for_number(phonenumbers.parse("+" + wa_id))
    real = [z for z in zones if z != "Etc/Unknown"]
    return real[0] if len(real) == 1 else None


def check(log: Sequence[LoggedSend], windows: dict[str, set[str]], rate: int) -> dict[str, int]:
    """Violations of each rule in the fake's log; ``windows`` maps a phone number
    id to the recipients with an inbound message to it in the last 24 hours."""
    violations = {"number rate": 0, "pair rate": 0, "quiet hours": 0, "window": 0}
    by_number: dict[str, list[float]] = defaultdict(list)
    by_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
    zones: dict[str, str | None] = {}
    for send in log:
        recipient = send.recipient or ""
        by_number[send.phone_number_id].append(send.monotonic)
        by_pair[send.phone_number_id, recipient].append(send.monotonic)
        if recipient not in zones:
            zones[recipient] = _zone(recipient)
        zone = zones[recipient]
        if zone is not None:
            hour = datetime.fromtimestamp(send.wall, UTC).astimezone(ZoneInfo(zone)).hour
            if hour >= QUIET_START or hour < QUIET_END:
                violations["quiet hours"] += 1
        else:
            violations["quiet hours"] += 1  # a zone the checker cannot tell: count it
        if send.type == "text" and recipient not in windows.get(send.phone_number_id, set()):
            violations["window"] += 1
    for times in by_number.values():
        times.sort()
        for i, start in enumerate(times):
            # POSTs in [start, start + 1 s): more than the rate is a violation.
            if bisect_right(times, start + 1.0 - 1e-9) - i > rate:
                violations["number rate"] += 1
    for times in by_pair.values():
        times.sort()
        tokens, last = float(PAIR_BURST), times[0]
        for at in times:
            tokens = min(float(PAIR_BURST), tokens + (at - last) / PAIR_INTERVAL)
            last = at
            if tokens < 1 - 1e-6:
                violations["pair rate"] += 1
            tokens -= 1
    return violations


def figures(log: Sequence[LoggedSend]) -> dict[str, NumberFigures]:
    out = {}
    by_number: dict[str, list[float]] = defaultdict(list)
    for send in log:
        by_number[send.phone_number_id].append(send.monotonic)
    for number, times in sorted(by_number.items()):
        times.sort()
        span = times[-1] - times[0]
        per_second: dict[int, int] = defaultdict(int)
        for at in times:
            per_second[int(at - times[0])] += 1
        full = [per_second[s] for s in range(int(span))]  # whole seconds only
        out[number] = NumberFigures(
            posts=len(times),
            sustained=(len(times) - 1) / span if span > 0 else 0.0,
            busiest=max(full, default=len(times)),
            quietest=min(full, default=len(times)),
        )
    return out


async def baseline(base: str, token: str, phone_number_id: str, count: int) -> float:
    """Unpaced POSTs to the fake from one client, 16 at a time: POSTs per second."""
    gate = asyncio.Semaphore(16)
    body = {
        "messaging_product": "whatsapp",
        "to": "447700900123",
        "type": "text",
        "text": {"body": "baseline"},
    }
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}
    ) as client:

        async def one() -> None:
            async with gate:
                await client.post(f"/v21.0/{phone_number_id}/messages", json=body)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - started)


def _serve_fake(token: str, conn: Connection) -> None:
    """The child: serve a fake Graph API, say where, and hand back its log when asked."""
    fake = FakeGraph(token)
    with running_fake_graph(fake) as base:
        conn.send(base)
        while (ask := conn.recv()) != "stop":
            if ask == "log":
                conn.send(fake.requests())
            elif ask == "reset":
                fake = FakeGraph(token)
                conn.send("ok")


class RemoteFake:
    """A fake Graph API in a child process: its base URL and its request log."""

    def __init__(self, conn: Connection, base: str) -> None:
        self._conn = conn
        self.base = base

    def requests(self) -> list[LoggedSend]:
        self._conn.send("log")
        log: list[LoggedSend] = self._conn.recv()
        return log


@contextmanager
def fake_process(token: str) -> Iterator[RemoteFake]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve_fake, args=(token, child), daemon=True)
    process.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the fake Graph API's process did not start")
        yield RemoteFake(parent, parent.recv())
    finally:
        parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.terminate()


async def _configure(w: World) -> None:
    for account_id in w.accounts:
        await w.services.policies.update(
            CLI,
            account_id,
            PolicySettings(
                messages_per_second=RATE,
                warmup=[WarmupStep(0, RATE)],
                messaging_tier=None,
                pair_burst=PAIR_BURST,
                pair_interval_seconds=PAIR_INTERVAL,
            ),
        )


async def run(seconds: float, database: str, forbidden: int) -> Result:
    result = Result()
    token = "EAAB-bench-" + os.urandom(8).hex()
    per_number = int(RATE * seconds)
    recipients = (per_number + PAIR_BURST - 1) // PAIR_BURST + 10
    now = datetime.now(UTC)
    regions = day_regions(now)
    if not regions:
        raise SystemExit("no region is in daytime now; the benchmark needs one")
    with fake_process(token) as fake:
        result.baseline_per_second = await baseline(
            fake.base, token, "1", min(2000, per_number * 2)
        )
    with fake_process(token) as fake:  # a fresh log for the run
        async with world(
            database,
            accounts=5,
            contacts=recipients + forbidden,
            terms=0,
            night=forbidden,
            window_share=1.0,
            regions=regions,
            access_token=token,
            graph_base_url=fake.base,
        ) as w:
            await _configure(w)
            result.posted = await _send(w, fake, per_number, forbidden, seconds, result)
            windows = {
                w.phone_numbers[a]: {p.wa_id for p in w.contacts if a in p.window}
                for a in w.accounts
            }
            log = fake.requests()
            result.numbers = figures(log)
            result.violations = check(log, windows, RATE)
    return result


async def _send(
    w: World, fake: RemoteFake, per_number: int, forbidden: int, seconds: float, result: Result
) -> int:
    rng = random.Random(17)
    windowed = [p for p in w.contacts if p.window]
    never = [p for p in w.contacts if not p.window]
    mixed_requests(w, rng, 0)  # registers the accounts' template names
    requests = []
    for account_id in w.accounts:
        sender = w.agents[account_id]
        for i in range(per_number):
            person = windowed[i % len(windowed)]
            text = f"Your reference {account_id[-4:]}-{i}: the transfer is booked."
            requests.append((sender, text_request(account_id, person.wa_id, text, f"ok-{i}")))
        for i, person in enumerate(w.night[: forbidden // 2]):
            key = f"night-{i}"
            requests.append((sender, template_request(account_id, person.wa_id, 1000 + i, key)))
        for i, person in enumerate(never[: forbidden // 2] or w.night[forbidden // 2 :]):
            key = f"never-{i}"
            text = "A message nobody asked for"
            requests.append((sender, text_request(account_id, person.wa_id, text, key)))
    rng.shuffle(requests)
    await queue(w, requests)
    result.expected = per_number * len(w.accounts)
    result.forbidden_queued = len(requests) - result.expected
    dispatcher = w.services.dispatcher
    await w.services.outbox.decide_queued(limit=len(requests))
    timings = _time_steps(dispatcher, w.services.outbox)
    stop = asyncio.Event()
    started = time.perf_counter()
    loop = asyncio.create_task(dispatcher.run(stop, idle_seconds=0.05))
    deadline = started + seconds * 3 + 20
    while time.perf_counter() < deadline:
        if sum(1 for s in fake.requests() if s.accepted) >= result.expected:
            break
        await asyncio.sleep(0.5)
    stop.set()
    await loop
    result.seconds = time.perf_counter() - started
    result.steps = dict(timings)
    return len(fake.requests())


def _time_steps(dispatcher: object, outbox: object) -> dict[str, list[float]]:
    """Wrap the dispatcher's steps to add up the wall time each takes (a step
    awaiting the database or Graph counts that wait too)."""
    timings: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for owner, name in (
        (outbox, "decide_queued"),
        (outbox, "expire_stale"),
        (dispatcher, "_claim"),
        (dispatcher, "_post_all"),
        (dispatcher, "_finish"),
    ):
        original = getattr(owner, name)

        def wrapped(*args: object, _original: Any = original, _name: str = name) -> Any:
            async def timed() -> Any:
                started = time.perf_counter()
                try:
                    return await _original(*args)
                finally:
                    timings[_name][0] += time.perf_counter() - started
                    timings[_name][1] += 1

            return timed()

        setattr(owner, name, wrapped)
    return timings


def report(result: Result, database: str) -> None:
    print(
        f"\ndispatch on {database}: {result.expected:,} allowed items over 5 numbers at "
        f"{RATE}/s each, plus {result.forbidden_queued} that must not go; "
        f"{result.posted:,} POSTs in {result.seconds:.1f} s"
    )
    print(f"  {'number':<18}{'POSTs':>7}{'sustained/s':>13}{'busiest s':>11}{'quietest s':>12}")
    for number, f in result.numbers.items():
        print(f"  {number:<18}{f.posts:>7}{f.sustained:>13.1f}{f.busiest:>11}{f.quietest:>12}")
    total = sum(f.posts for f in result.numbers.values())
    print(
        f"  raw baseline: unpaced POSTs to the fake from one client: "
        f"{result.baseline_per_second:,.0f}/s (the 5 numbers together ask for {5 * RATE}/s)"
    )
    print(
        "  violations: "
        + ", ".join(f"{k} {v}" for k, v in result.violations.items())
        + f" (of {total:,} POSTs)"
    )
    rates = [f.sustained for f in result.numbers.values()]
    met = (
        len(rates) == 5
        and min(rates) >= RATE * 0.95
        and result.total_violations == 0
        and result.posted == result.expected
    )
    print(
        f"  target: {RATE} msg/s sustained per number (within 5%) for 5 numbers, 0 violations, "
        f"nothing forbidden sent: {'met' if met else 'NOT MET'}"
    )
    print(
        "  dispatcher steps (wall s / calls, overlapping): "
        + ", ".join(f"{k} {v[0]:.2f}/{v[1]:.0f}" for k, v in result.steps.items())
    )
    if result.profile:
        print(result.profile)


def main(argv: Sequence[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of sending per number")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--forbidden", type=int, default=20, help="night and no-window items")
    parser.add_argument("--profile", action="store_true", help="cProfile the dispatcher")
    args = parser.parse_args(argv)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    result = asyncio.run(run(args.seconds, args.database, args.forbidden))
    if profiler:
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        result.profile = out.getvalue()
    report(result, args.database)
    print(f"load average at the end {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    return result


if __name__ == "__main__":
    main()
