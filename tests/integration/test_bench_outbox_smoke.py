"""The outbox benchmarks run end to end at a tiny size, and their figures are real
(no timing is asserted: the machine decides those)."""

from __future__ import annotations

import pytest

from tests.bench import dispatch, outbox_decide
from tests.conftest import require_postgresql

TINY = ["--items", "200", "--contacts", "40", "--terms", "60", "--accounts", "2"]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_outbox_decide_benchmark_decides_every_item_in_a_constant_number_of_statements(
    database: str,
) -> None:
    if database == "postgresql":
        require_postgresql()
    (result,) = outbox_decide.main([*TINY, "--database", database])

    assert set(result.phases) == {"raw", "open", "a_cold", "a_warm", "b"}
    assert sum(result.outcomes.values()) == 200
    assert sum(result.states.values()) == 200
    assert "queued" not in result.states
    # The snapshot is a fixed set of queries, whatever the batch's size.
    assert result.phases["a_warm"].statements < 30


def test_dispatch_benchmark_sends_only_what_the_rules_allow() -> None:
    result = dispatch.main(["--seconds", "0.5", "--forbidden", "6"])

    assert result.expected == 5 * 40
    assert result.posted == result.expected  # nothing forbidden went out
    assert len(result.numbers) == 5
    assert all(f.posts == 40 for f in result.numbers.values())
    assert result.violations == {"number rate": 0, "pair rate": 0, "quiet hours": 0, "window": 0}
