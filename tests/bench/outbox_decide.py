"""Outbox decision benchmark (issue 17): a batch of queued items decided against
one snapshot read from the database, on SQLite and on PostgreSQL.

Run: ``make bench-outbox-decide`` (10,000 items, both databases), or
``python -m tests.bench.outbox_decide --items 2000 --database sqlite``.

The archive (``tests.bench.outbox_world``): 5 business numbers in one business
portfolio, 2,000 contacts (Japanese, British, American numbers) with marketing
and utility consent (opt-ins, some opt-outs), open windows for about 60% of
them from inbound messages captured through the signed webhook path, two
approved templates per number, and a 5,000-term lexicon (a third Japanese).
Then 10,000 queued items, 70% free-form text (Japanese for Japanese numbers),
30% templates with variables.

Measured, each on the same 10,000 rows:

* **raw baseline**: a plain ``SELECT`` of the 10,000 queued rows (ORM objects),
  the least any batch decision must read;
* **open**: the items' sealed contents opened (one vault batch);
* **(a) snapshot + decide**: ``SnapshotLoader.load`` for the 10,000 drafts and
  ``decide`` of each (the lexicon's matcher cold, then warm);
* **(b) decide_queued**: the whole ``Outbox.decide_queued`` in one transaction:
  claim, open, snapshot, decide, and write every state, history row and audit
  event.

Each reports items/s and the SQL statements it issued
(``before_cursor_execute``): a batch must cost a constant number of statements,
whatever its size (the run also counts a batch a tenth the size to show it).
Target (from the issue): >= 5,000 items/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, func, select

from policy.models import OutboxItem
from policy.rules import decide
from tests.bench.outbox_world import World, mixed_requests, queue, world

TARGET_PER_SECOND = 5_000


@dataclass
class Phase:
    name: str
    seconds: float
    statements: int
    items: int
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds else float("inf")


@dataclass
class Result:
    database: str
    items: int
    queue_seconds: float = 0.0
    phases: dict[str, Phase] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    small_batch_statements: int = 0
    error: str | None = None


@contextmanager
def counting(w: World) -> Iterator[Counter[str]]:
    """Count the SQL statements the engine issues while inside, by their start."""
    count: Counter[str] = Counter()

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        count[" ".join(statement.split()[:3])[:48]] += 1

    engine = w.services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield count
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


class PhaseFailed(Exception):
    """A measured step raised; the message is its first line."""


async def timed_phase(w: World, name: str, items: int, work: Any) -> tuple[Phase, Any]:
    with counting(w) as count:
        started = time.perf_counter()
        try:
            value = await work()
        except Exception as exc:
            first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise PhaseFailed(f"{name}: {type(exc).__name__}: {first}") from None
        seconds = time.perf_counter() - started
    return Phase(name, seconds, count.total(), items, count), value


async def run(database: str, items: int, contacts: int, terms: int, accounts: int) -> Result:
    result = Result(database, items)
    try:
        await _measure(result, database, items, contacts, terms, accounts)
    except PhaseFailed as exc:
        result.error = str(exc)
    return result


async def _measure(
    result: Result, database: str, items: int, contacts: int, terms: int, accounts: int
) -> None:
    async with world(database, accounts=accounts, contacts=contacts, terms=terms) as w:
        rng = random.Random(17)
        requests = mixed_requests(w, rng, items + items // 10)
        result.queue_seconds = await queue(w, requests[:items])
        services = w.services
        query = select(OutboxItem).where(OutboxItem.state == "queued")

        async def raw() -> int:
            async with services.sessions() as session:
                return len(list(await session.scalars(query)))

        phase, n = await timed_phase(w, "raw baseline: SELECT of the queued rows", items, raw)
        assert n == items, n
        result.phases["raw"] = phase

        async with services.sessions() as session:
            rows = list(await session.scalars(query))

            async def opening() -> Any:
                return await services.outbox.open_items(session, rows)

            phase, opened = await timed_phase(w, "open the sealed contents", items, opening)
            result.phases["open"] = phase
            drafts = [o.draft for o in opened]
            for label in ("cold", "warm"):

                async def snapshot_and_decide() -> list[Any]:
                    snapshot = await services.outbox._snapshots.load(session, drafts)
                    return [decide(d, snapshot) for d in drafts]

                name = f"(a) snapshot + decide, lexicon {label}"
                phase, decisions = await timed_phase(w, name, items, snapshot_and_decide)
                result.phases[f"a_{label}"] = phase
            result.outcomes.update(d.outcome.value for d in decisions)

        async def whole() -> int:
            return await services.outbox.decide_queued(limit=items)

        phase, decided = await timed_phase(w, "(b) Outbox.decide_queued (writes)", items, whole)
        assert decided == items, decided
        result.phases["b"] = phase
        await services.audit.flush()
        async with services.sessions() as session:
            result.states.update(
                dict(
                    (
                        await session.execute(
                            select(OutboxItem.state, func.count()).group_by(OutboxItem.state)
                        )
                    ).all()
                )
            )
        # The same decision for a batch a tenth the size: the statement count
        # must not follow the batch.
        await queue(w, requests[items:])
        small = len(requests) - items

        async def small_batch() -> int:
            return await services.outbox.decide_queued(limit=small)

        phase, _ = await timed_phase(w, "small batch", small, small_batch)
        result.small_batch_statements = phase.statements


def report(result: Result) -> None:
    print(
        f"\noutbox decision on {result.database}, {result.items:,} items "
        f"(queued in {result.queue_seconds:.1f} s, not measured)"
    )
    print(f"  {'':<44}{'seconds':>9}{'items/s':>10}{'SQL':>6}{'vs raw':>8}")
    raw = result.phases["raw"].seconds if "raw" in result.phases else 1.0
    for phase in result.phases.values():
        print(
            f"  {phase.name:<44}{phase.seconds:>9.3f}{phase.per_second:>10,.0f}"
            f"{phase.statements:>6}{phase.seconds / raw:>7.1f}x"
        )
    if result.error:
        print(f"  FAILED: {result.error}")
        return
    b = result.phases["b"]
    small = result.items // 10
    print(
        f"  statements per batch: {b.statements} for {result.items:,} items, "
        f"{result.small_batch_statements} for {small:,}"
    )
    print(
        "  (b)'s statements by kind: " + ", ".join(f"{k!r} {n}" for k, n in b.kinds.most_common(6))
    )
    total = sum(result.outcomes.values())
    print("  outcomes: " + ", ".join(f"{k} {v / total:.0%}" for k, v in result.outcomes.items()))
    print("  states after (b): " + ", ".join(f"{k} {v:,}" for k, v in result.states.items()))
    for key, label in (("a_warm", "(a)"), ("b", "(b)")):
        rate = result.phases[key].per_second
        met = "met" if rate >= TARGET_PER_SECOND else "NOT MET"
        print(f"  target >= {TARGET_PER_SECOND:,} items/s, {label}: {rate:,.0f}: {met}")


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="queued items in the batch")
    parser.add_argument("--contacts", type=int, default=2_000, help="contacts")
    parser.add_argument("--terms", type=int, default=5_000, help="lexicon terms")
    parser.add_argument("--accounts", type=int, default=5, help="business numbers")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql", "both"),
        default="both",
        help="SQLite (embedded) or a fresh PostgreSQL database (STRONGROOM_TEST_PG_DSN)",
    )
    args = parser.parse_args(argv)
    databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    results = []
    for database in databases:
        result = asyncio.run(run(database, args.items, args.contacts, args.terms, args.accounts))
        report(result)
        results.append(result)
    print(f"\nload average at the end {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    return results


if __name__ == "__main__":
    main()
