"""The decision benchmark runs end to end on a tiny batch, and its figures are real."""

from __future__ import annotations

from tests.bench import decide as bench


def test_decide_benchmark_runs_and_every_rule_gets_to_speak() -> None:
    result = bench.main(["--items", "400", "--terms", "300", "--contacts", "100"])

    assert len(result.decide_ms) == len(result.baseline_ms) == 400
    assert all(ms > 0 for ms in result.decide_ms)
    assert sum(result.outcomes.values()) == 400
    assert {"allow", "block", "defer", "hold"} <= set(result.outcomes)
    # The snapshot is meant to exercise the rules, not to allow everything.
    for code in ("window.closed_free_form", "quiet_hours", "rate.warmup", "lexicon.flag"):
        assert result.codes[code] > 0, (code, result.codes)
