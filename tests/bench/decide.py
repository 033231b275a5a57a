"""Decision benchmark (issue 17): ``policy.rules.decide`` alone, per item.

Run: ``make bench-decide`` (10,000 items), or ``python -m tests.bench.decide --items 2000``.

Builds, in memory and from a fixed seed, a realistic snapshot: 5 business
numbers, 2,000 contacts with consent entries and open or closed windows, a
dozen templates, per-number and per-pair send histories, a messaging tier part
used, marketing and duplicate-content histories, and a 5,000-term lexicon (a
third Japanese, a third English phrases, the rest English words; a few are
common words, so some items are flagged or held). Then it decides drafts that
are half Japanese (the search benchmark's generators), free-form and templates
with variables, so every rule runs, lexicon matching over the text and every
variable included.

Each item is timed twice, in turn: the raw baseline (``tokenize`` of its text,
the least any lexicon check must do) and ``decide``. Printed: the median, p95
and mean per item of both, their ratio, the outcome counts, the time to compile
the lexicon, and the issue's target (median <= 1 ms) marked met or NOT MET.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from archiver.search.blind_index import tokenize
from policy.decision import (
    Category,
    ConsentState,
    ContentKind,
    Draft,
    NumberState,
    PolicySettings,
    Snapshot,
    Source,
    TemplateParameter,
    TemplateView,
)
from policy.matching import LexiconMatcher
from policy.rules import decide
from tests.bench.search import EN_WORDS, JA_NOUNS, english, japanese

TARGET_MEDIAN_MS = 1.0
SEED = 17
NOW = datetime(2026, 11, 10, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo, 22:00 the day before in New York
ACCOUNTS = [f"acc-{i}" for i in range(5)]
AGENTS = [f"agent-{i}" for i in range(20)]
KANJI = (
    "確認予約会議資料注文振込口座連絡変更担当支払請求配送住所電話書類"
    + "契約商品在庫金額残高返金保険送金利息手数料"
)
CATEGORIES = (Category.UTILITY, Category.MARKETING, Category.AUTHENTICATION)
KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのまみむめもらりるれろ"


@dataclass(slots=True)
class Result:
    """What one run measured (times in milliseconds per item)."""

    items: int
    terms: int
    decide_ms: list[float] = field(default_factory=list)
    baseline_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    lexicon_build_ms: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.decide_ms)

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline_ms)


def _made_up(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(6, 11)))


def lexicon_terms(rng: random.Random, count: int) -> list[tuple[int, str, str]]:
    """``count`` distinct terms: a third Japanese, a third phrases, a third words."""
    terms: dict[str, str] = {}
    actions = ["flag", "hold", "block"]
    common = iter(rng.sample(EN_WORDS[200:], 10) + rng.sample(JA_NOUNS[20:], 5))
    while len(terms) < count:
        kind = len(terms) % 3
        if len(terms) < 15:  # a few words the texts hold: flags, mostly
            term, action = next(common), rng.choice(["flag", "flag", "hold"])
        elif kind == 0:
            term = "".join(rng.choice(KANJI + KANA) for _ in range(rng.randint(2, 5)))
            action = rng.choice(actions)
        elif kind == 1:
            term = f"{rng.choice(EN_WORDS)} {_made_up(rng)}"
            action = rng.choice(actions)
        else:
            term, action = _made_up(rng), rng.choice(actions)
        terms.setdefault(term, action)
    return [(i + 1, term, action) for i, (term, action) in enumerate(terms.items())]


def build_snapshot(rng: random.Random, contacts: int, lexicon: LexiconMatcher) -> Snapshot:
    templates = {
        i: TemplateView(
            id=i,
            name=f"template_{i}",
            language="ja" if i % 2 else "en",
            category=CATEGORIES[i % 3],
            our_status="approved" if i < 10 else "submitted",
            meta_status="APPROVED" if i != 9 else "PAUSED",
            parameters=(
                TemplateParameter("name"),
                TemplateParameter("order", "number"),
                TemplateParameter("note"),
            ),
        )
        for i in range(12)
    }
    consent: dict[tuple[str, Category], ConsentState] = {}
    last_inbound: dict[tuple[str, str], datetime] = {}
    for c in range(contacts):
        contact = f"ct-{c}"
        for category in (Category.MARKETING, Category.UTILITY, Category.AUTHENTICATION):
            roll = rng.random()
            if roll < 0.75:
                consent[contact, category] = ConsentState(
                    opted_in_at=NOW - timedelta(days=rng.randint(1, 400)),
                    opted_in_how="through the web form",
                )
            elif roll < 0.85:
                consent[contact, category] = ConsentState(
                    opted_in_at=NOW - timedelta(days=400),
                    opted_out_at=NOW - timedelta(days=rng.randint(0, 300)),
                    opted_out_how="by replying STOP",
                )
        if rng.random() < 0.6:
            last_inbound[rng.choice(ACCOUNTS), contact] = NOW - timedelta(
                minutes=rng.randint(1, 48 * 60)
            )
    recent = [NOW - timedelta(milliseconds=rng.randint(1, 999)) for _ in range(40)]
    return Snapshot(
        version="bench",
        now=NOW,
        settings={
            a: PolicySettings(
                region_zones={"US": "America/New_York"},
                consent_covers={"utility": ["marketing"]},
                messaging_tier=2_000,
            )
            for a in ACCOUNTS
        },
        senders={a: frozenset(AGENTS) for a in ACCOUNTS},
        approvers={a: frozenset({"supervisor"}) for a in ACCOUNTS},
        consent=consent,
        last_inbound=last_inbound,
        templates=templates,
        lexicon=lexicon,
        numbers={
            a: NumberState(first_send_at=NOW - timedelta(days=rng.randint(0, 30))) for a in ACCOUNTS
        },
        number_sends={a: sorted(recent) for a in ACCOUNTS},
        pair_sends={
            (rng.choice(ACCOUNTS), f"ct-{rng.randrange(contacts)}"): [NOW - timedelta(seconds=20)]
            for _ in range(contacts // 4)
        },
        tier_recipients={
            "pf-1": {
                f"ct-{c}": NOW - timedelta(minutes=rng.randint(1, 1439))
                for c in rng.sample(range(contacts), min(contacts, 800))
            }
        },
        marketing_sends={
            f"ct-{c}": [NOW - timedelta(days=rng.randint(1, 29))]
            for c in rng.sample(range(contacts), contacts // 3)
        },
        recent_content={
            (f"ct-{c}", b"digest-%d" % (c % 7)): NOW - timedelta(minutes=rng.randint(1, 120))
            for c in rng.sample(range(contacts), contacts // 10)
        },
    )


def drafts(rng: random.Random, count: int, contacts: int) -> list[Draft]:
    out = []
    for i in range(count):
        ja = rng.random() < 0.5
        template = rng.random() < 0.6
        text = japanese(rng, []) if ja else english(rng, [])
        template_id = rng.randrange(12)
        variables = {}
        if template:
            variables = {
                "name": rng.choice(["佐藤 花子", "Ana Souza", "田中様"]),
                "order": str(rng.randrange(10_000, 99_999)),
                "note": japanese(rng, [])[:60] if ja else english(rng, [])[:60],
            }
        out.append(
            Draft(
                item_id=f"item-{i}",
                account_id=rng.choice(ACCOUNTS),
                portfolio_id="pf-1",
                source=rng.choice(list(Source)),
                sender_id=rng.choice(AGENTS),
                contact_id=f"ct-{rng.randrange(contacts)}",
                recipient_region="JP" if ja else "US",
                recipient_zone="Asia/Tokyo" if ja else None,
                kind=ContentKind.TEMPLATE if template else ContentKind.TEXT,
                category=CATEGORIES[template_id % 3] if template else rng.choice(list(Category)),
                text="" if template else text,
                template_id=template_id if template else None,
                variables=variables,
                content_digest=b"digest-%d" % rng.randrange(50),
                answers_customer=rng.random() < 0.5,
                created_at=NOW,
                expires_at=NOW + timedelta(days=1),
            )
        )
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(items: int, terms: int, contacts: int) -> Result:
    rng = random.Random(SEED)
    result = Result(items=items, terms=terms)
    entries = lexicon_terms(rng, terms)
    started = time.perf_counter()
    lexicon = LexiconMatcher(entries)
    result.lexicon_build_ms = (time.perf_counter() - started) * 1e3
    snap = build_snapshot(rng, contacts, lexicon)
    work = drafts(rng, items, contacts)
    for item in work[: min(200, items)]:  # warm the tokenizer's tables and the zone cache
        decide(item, snap)
    clock = time.perf_counter_ns
    for item in work:
        text = item.text or " ".join(item.variables.values())
        t0 = clock()
        tokenize(text)
        t1 = clock()
        decision = decide(item, snap)
        t2 = clock()
        result.baseline_ms.append((t1 - t0) / 1e6)
        result.decide_ms.append((t2 - t1) / 1e6)
        result.outcomes[decision.outcome.value] += 1
        result.codes.update(r.code for r in decision.reasons)
    return result


def report(result: Result) -> None:
    ours, base = result.decide_ms, result.baseline_ms
    print(
        f"\ndecide, {result.items:,} items, {result.terms:,}-term lexicon "
        f"(compiled in {result.lexicon_build_ms:,.0f} ms), per item in ms"
    )
    print(f"  {'':<26}{'median':>9}{'p95':>9}{'mean':>9}")
    for name, values in (("decide", ours), ("baseline: tokenize(text)", base)):
        print(
            f"  {name:<26}{statistics.median(values):>9.3f}{_pct(values, 0.95):>9.3f}"
            f"{statistics.fmean(values):>9.3f}"
        )
    ratio = result.median / result.baseline_median
    print(f"  ratio decide / baseline (median): {ratio:.1f}x")
    total = sum(result.outcomes.values())
    shares = ", ".join(f"{k} {v / total:.0%}" for k, v in result.outcomes.most_common())
    print(f"  outcomes: {shares}")
    print(
        "  most frequent reasons: "
        + ", ".join(f"{c} {n:,}" for c, n in result.codes.most_common(8))
    )
    met = "met" if result.median <= TARGET_MEDIAN_MS else "NOT MET"
    print(f"\ntarget (from the issue): median <= {TARGET_MEDIAN_MS:g} ms per item: {met}")
    print(f"load average at the end {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")


def main(argv: Sequence[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="drafts to decide")
    parser.add_argument("--terms", type=int, default=5_000, help="lexicon terms")
    parser.add_argument("--contacts", type=int, default=2_000, help="contacts in the snapshot")
    args = parser.parse_args(argv)
    result = run(args.items, args.terms, args.contacts)
    report(result)
    return result


if __name__ == "__main__":
    main()
