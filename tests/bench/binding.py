"""Record binding benchmark: the CPU cost of a record's MAC.

Run: ``make bench-binding``. Prints microseconds per record to compute a binding
(as capture and import do once per record) and to check one (as every read does),
on a message record with realistic ids, best of five rounds.
"""

from __future__ import annotations

import os
import timeit
from datetime import UTC, datetime

from archiver.records.binding import RecordBinding
from archiver.records.models import Record
from archiver.vault.models import SealedObject

WAMID = "wamid.HBgMNDQ3NzAwOTAwMjIyFQIAEhggQTNFQjA5RjY5QzQ4RjM0QkU2AA=="
ROUNDS = 5
PER_ROUND = 100_000


def main() -> None:
    now = datetime.now(UTC)
    record = Record(
        account_id="acc_5f0c2a9d4e7b1c3a",
        contact_id="ct_8e2b7d1f0a9c4e6b3d51",
        dedupe_key=f"m:{WAMID}:text",
        kind="message",
        source="cloud_api",
        direction="inbound",
        item_type="text",
        wamid=WAMID,
        related_wamid=None,
        status=None,
        occurred_at=now,
        received_at=now,
        has_media=False,
        forwarded=False,
        opens_window=True,
    )
    obj = SealedObject(
        object_key=f"record/{now:%Y/%m/%d}/{os.urandom(16).hex()}",
        version_id="null",
        key_id="sk_" + os.urandom(12).hex(),
        sha256=os.urandom(32).hex(),
        size=1_234,
    )
    binding = RecordBinding(os.urandom(32))
    record.binding = binding.compute(record, obj)
    assert binding.matches(record, obj)
    load = os.getloadavg()[0]
    print(f"record binding, best of {ROUNDS} rounds of {PER_ROUND:,} (load average {load:.1f})")
    for name, work in (
        ("compute", lambda: binding.compute(record, obj)),
        ("check", lambda: binding.matches(record, obj)),
    ):
        best = min(timeit.repeat(work, number=PER_ROUND, repeat=ROUNDS))
        print(f"  {name:8} {best / PER_ROUND * 1e6:6.2f} µs per record")


if __name__ == "__main__":
    main()
