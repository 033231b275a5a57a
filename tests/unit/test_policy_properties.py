"""Properties of ``decide`` over random drafts and states: what it must never let through."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from archiver.search.services import _matches, lexicon_group  # the search's check, as oracle
from policy.decision import (
    Category,
    ConsentState,
    ContentKind,
    Draft,
    Outcome,
    PolicySettings,
    Snapshot,
    TemplateParameter,
)
from policy.rules import decide
from tests.unit.policy_factories import (
    ACCOUNT,
    AGENT,
    CONTACT,
    NOW,
    SUPERVISOR,
    TERMS,
    draft,
    snapshot,
    template,
)

HOUR = timedelta(hours=1)
SENT = (Outcome.ALLOW, Outcome.DEFER)  # a deferred item goes later: it must be as clean
BLOCK_TERMS = [term for _, term, action in TERMS if action == "block"]
WORDS = ["hello", "your", "order", "GUARANTEED", "returns", "insider", "promise", "元本", "保証"]
WORDS += ["元本保証", "必ず儲かる", "です", "guaranteed returns", "Returns!", "-", " "]

# Every dimension leans towards its harmless value, so that a case often hangs on one rule.
minutes_ago = st.integers(0, 24 * 60).map(lambda m: NOW - timedelta(minutes=m))
CLEAN = ["hello", "your order is ready", "ご注文を確認しました", "Ana", "12"]
texts = st.sampled_from(CLEAN) | st.lists(st.sampled_from(WORDS), max_size=5).map(" ".join)
texts |= st.text(max_size=10)


@st.composite
def consents(draw: st.DrawFn) -> ConsentState | None:
    kind = draw(st.sampled_from(["in", "in", "in", "none", "out", "random"]))
    if kind == "none":
        return None
    if kind == "in":
        return ConsentState(opted_in_at=NOW - 30 * 24 * HOUR)
    if kind == "out":
        return ConsentState(opted_in_at=NOW - 30 * 24 * HOUR, opted_out_at=draw(minutes_ago))
    return ConsentState(
        opted_in_at=draw(st.none() | minutes_ago), opted_out_at=draw(st.none() | minutes_ago)
    )


def _often(value: object, *others: object) -> st.SearchStrategy[object]:
    return st.sampled_from([value, value, value, *others])


@st.composite
def cases(draw: st.DrawFn) -> tuple[Draft, Snapshot]:
    templates = {
        i: template(
            id=i,
            category=draw(st.sampled_from(Category)),
            our_status=draw(_often("approved", "submitted", "rejected", "draft")),
            meta_status=draw(_often("APPROVED", None, "PAUSED", "FLAGGED", "PENDING")),
            parameters=(TemplateParameter("name"),),
        )
        for i in range(3)
    }
    kind = draw(st.sampled_from([ContentKind.TEMPLATE, *ContentKind]))
    variables = draw(
        st.fixed_dictionaries({"name": texts})
        | st.dictionaries(st.sampled_from(["name", "other"]), texts, max_size=2)
    )
    item = draft(
        kind=kind,
        category=draw(st.sampled_from(Category)),
        text=draw(texts),
        template_id=draw(_often(0, 1, 2, 3, None)) if kind is ContentKind.TEMPLATE else None,
        variables=variables if kind is ContentKind.TEMPLATE else {},
        answers_customer=draw(st.booleans()),
        approved_by=draw(st.sampled_from([None, SUPERVISOR, SUPERVISOR, AGENT])),
        sender_id=draw(_often(AGENT, "intruder")),
        recipient_zone=draw(st.sampled_from([None, "Asia/Tokyo", "Europe/London"])),
    )
    consent = {
        (CONTACT, category): state
        for category in Category
        if (state := draw(consents())) is not None
    }
    covers = draw(
        st.dictionaries(
            st.sampled_from(["utility", "authentication"]),
            st.lists(st.sampled_from(["marketing", "utility", "service"]), max_size=2),
        )
    )
    age = draw(_often(timedelta(hours=1), None, timedelta(hours=24), timedelta(hours=30)))
    age = draw(st.just(age) | st.integers(0, 49 * 60).map(lambda m: timedelta(minutes=m)))
    snap = snapshot(
        now=NOW + timedelta(minutes=draw(st.integers(0, 24 * 60))),
        settings={ACCOUNT: PolicySettings(consent_covers=covers)},
        consent=consent,
        templates=templates,
        last_inbound={} if age is None else {(ACCOUNT, CONTACT): NOW - age},
    )
    return item, snap


def _window_open(snap: Snapshot) -> bool:
    last: datetime | None = snap.last_inbound.get((ACCOUNT, CONTACT))
    return last is not None and snap.now - last < 24 * HOUR


def _marketing_consent(snap: Snapshot) -> bool:
    state = snap.consent.get((CONTACT, Category.MARKETING))
    if state is None or state.opted_in_at is None:
        return False
    return state.opted_out_at is None or state.opted_out_at < state.opted_in_at


@settings(max_examples=800, deadline=None)
@given(cases())
def test_decide_never_lets_a_forbidden_message_through(case: tuple[Draft, Snapshot]) -> None:
    item, snap = case
    decision = decide(item, snap)
    if decision.outcome not in SENT:
        return
    known = snap.templates.get(item.template_id) if item.template_id is not None else None
    category = known.category if known is not None else item.category
    if category is Category.MARKETING:
        assert _marketing_consent(snap), "marketing without a standing opt-in"
    if item.kind is ContentKind.TEMPLATE:
        assert known is not None, "an unknown template"
        assert known.our_status == "approved", "a template we did not approve"
        assert known.meta_status == "APPROVED", "a template Meta did not approve"
    else:
        assert _window_open(snap), "free-form outside the service window"
    for text in (item.text, *item.variables.values()):
        for term in BLOCK_TERMS:
            assert not _matches(lexicon_group(term), text), f"a block term in {text!r}"


@settings(max_examples=300, deadline=None)
@given(cases())
def test_decide_is_pure_and_lists_a_reason_for_every_refusal(case: tuple[Draft, Snapshot]) -> None:
    item, snap = case
    first = decide(item, snap)
    assert decide(item, snap) == first
    if first.outcome is Outcome.ALLOW:
        assert all(r.effect.value == "flag" for r in first.reasons)
    else:
        assert any(r.effect.value == first.outcome.value for r in first.reasons)
