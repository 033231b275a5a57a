"""Each send rule of ``policy.rules.decide``, through ``decide`` and ``note_allowed``."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from policy.decision import (
    Category,
    ConsentState,
    ContentKind,
    Effect,
    NumberState,
    Outcome,
    PolicySettings,
    QuietHours,
    Snapshot,
    TemplateParameter,
    WarmupStep,
)
from policy.rules import decide, note_allowed
from tests.unit.policy_factories import (
    ACCOUNT,
    AGENT,
    CONTACT,
    NOW,
    PORTFOLIO,
    SUPERVISOR,
    TEMPLATE,
    codes,
    draft,
    opted_in,
    snapshot,
    template,
    template_draft,
    zone_for,
)

HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)


def outside_window() -> dict[tuple[str, str], datetime]:
    return {(ACCOUNT, CONTACT): NOW - 30 * HOUR}


def test_the_defaults_allow_a_service_reply_and_a_utility_template() -> None:
    for item in (draft(), template_draft()):
        decision = decide(item, snapshot())
        assert (decision.outcome, decision.reasons, decision.defer_until) == (
            Outcome.ALLOW,
            (),
            None,
        )
        assert decision.snapshot_version == "v1"
        assert decision.decided_at == NOW


# -- permission ---------------------------------------------------------------------


def test_a_sender_without_outbox_send_on_the_number_is_blocked() -> None:
    decision = decide(draft(sender_id="agent-2"), snapshot())
    assert decision.outcome is Outcome.BLOCK
    assert codes(decision) == ["permission.not_granted"]
    assert decision.reasons[0].params == {"sender_id": "agent-2", "account_id": ACCOUNT}


def test_permission_is_per_business_number() -> None:
    snap = snapshot(senders={"acc-2": frozenset({AGENT})})
    assert codes(decide(draft(), snap)) == ["permission.not_granted"]


# -- consent ------------------------------------------------------------------------


def test_marketing_needs_a_recorded_opt_in() -> None:
    decision = decide(
        template_draft(category=Category.MARKETING),
        snapshot(templates={TEMPLATE: template(category=Category.MARKETING)}),
    )
    assert decision.outcome is Outcome.BLOCK
    assert codes(decision) == ["consent.marketing_no_opt_in"]


def test_marketing_with_an_opt_in_is_allowed() -> None:
    snap = snapshot(
        consent={(CONTACT, Category.MARKETING): opted_in()},
        templates={TEMPLATE: template(category=Category.MARKETING)},
    )
    assert decide(template_draft(category=Category.MARKETING), snap).outcome is Outcome.ALLOW


def test_a_later_opt_out_blocks_and_says_when_and_how() -> None:
    state = ConsentState(
        opted_in_at=datetime(2026, 10, 1, tzinfo=UTC),
        opted_in_how="through the web form",
        opted_out_at=datetime(2026, 11, 3, 9, 30, tzinfo=UTC),
        opted_out_how="by replying STOP",
    )
    snap = snapshot(
        consent={(CONTACT, Category.MARKETING): state},
        templates={TEMPLATE: template(category=Category.MARKETING)},
    )
    decision = decide(template_draft(category=Category.MARKETING), snap)
    assert codes(decision) == ["consent.opted_out"]
    assert decision.reasons[0].message == (
        "the customer opted out of marketing on 2026-11-03 by replying STOP"
    )


@pytest.mark.parametrize(
    ("opt_out", "allowed"),
    [(NOW - 5 * HOUR, True), (NOW - 2 * HOUR, False), (NOW - 1 * HOUR, True)],
    ids=["opt-out-before-opt-in", "same-instant-counts-as-out", "resumed-after-opt-out"],
)
def test_only_an_opt_out_at_or_after_the_opt_in_counts(opt_out: datetime, allowed: bool) -> None:
    opt_in = NOW - 2 * HOUR if opt_out != NOW - HOUR else NOW - HOUR / 2
    state = ConsentState(opted_in_at=opt_in, opted_out_at=opt_out)
    snap = snapshot(
        consent={(CONTACT, Category.MARKETING): state},
        templates={TEMPLATE: template(category=Category.MARKETING)},
    )
    outcome = decide(template_draft(category=Category.MARKETING), snap).outcome
    assert (outcome is Outcome.ALLOW) is allowed


def test_utility_needs_its_own_opt_in_unless_settings_say_another_covers_it() -> None:
    marketing_only = {(CONTACT, Category.MARKETING): opted_in()}
    decision = decide(template_draft(), snapshot(consent=marketing_only))
    assert codes(decision) == ["consent.utility_no_opt_in"]
    assert decision.reasons[0].params["accepted"] == ["utility"]

    covered = PolicySettings(consent_covers={"utility": ["marketing"]})
    snap = snapshot(consent=marketing_only, settings={ACCOUNT: covered})
    assert decide(template_draft(), snap).outcome is Outcome.ALLOW


def test_an_opt_out_of_its_own_category_beats_a_covering_opt_in() -> None:
    consent = {
        (CONTACT, Category.MARKETING): opted_in(),
        (CONTACT, Category.UTILITY): ConsentState(
            opted_out_at=NOW - HOUR, opted_out_how="by phone"
        ),
    }
    covered = PolicySettings(consent_covers={"utility": ["marketing"]})
    decision = decide(template_draft(), snapshot(consent=consent, settings={ACCOUNT: covered}))
    assert codes(decision) == ["consent.opted_out"]
    assert decision.reasons[0].params["category"] is Category.UTILITY


def test_authentication_needs_consent_too_and_service_none() -> None:
    auth = template(
        category=Category.AUTHENTICATION, parameters=(TemplateParameter("code", "number"),)
    )
    snap = snapshot(templates={TEMPLATE: auth}, consent={})
    item = template_draft(category=Category.AUTHENTICATION, variables={"code": "123456"})
    assert codes(decide(item, snap)) == ["consent.authentication_no_opt_in"]
    assert decide(draft(), snapshot(consent={})).outcome is Outcome.ALLOW


# -- the service window -------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "open_"),
    [(timedelta(hours=23, minutes=59, seconds=59), True), (timedelta(hours=24), False)],
    ids=["just-inside", "exactly-24h"],
)
def test_free_form_goes_only_within_24_hours_of_the_last_inbound(
    age: timedelta, open_: bool
) -> None:
    snap = snapshot(last_inbound={(ACCOUNT, CONTACT): NOW - age})
    decision = decide(draft(), snap)
    assert codes(decision) == ([] if open_ else ["window.closed_free_form"])


def test_a_customer_who_never_wrote_gets_no_free_form() -> None:
    decision = decide(draft(kind=ContentKind.MEDIA, text="caption"), snapshot(last_inbound={}))
    assert codes(decision) == ["window.closed_free_form"]
    assert "never" in decision.reasons[0].message


def test_a_template_may_go_outside_the_window() -> None:
    assert (
        decide(template_draft(), snapshot(last_inbound=outside_window())).outcome is Outcome.ALLOW
    )


def test_the_window_is_per_business_number() -> None:
    snap = snapshot(last_inbound={("acc-2", CONTACT): NOW - HOUR})
    assert codes(decide(draft(), snap)) == ["window.closed_free_form"]


# -- templates ----------------------------------------------------------------------


def test_an_unknown_template_is_blocked() -> None:
    assert codes(decide(template_draft(template_id=99), snapshot())) == ["template.unknown"]
    assert codes(decide(template_draft(template_id=None), snapshot())) == ["template.unknown"]


@pytest.mark.parametrize("status", ["draft", "submitted", "rejected"])
def test_a_template_we_have_not_approved_is_blocked(status: str) -> None:
    snap = snapshot(templates={TEMPLATE: template(our_status=status)})
    assert codes(decide(template_draft(), snap)) == ["template.not_approved_by_us"]


@pytest.mark.parametrize(
    ("status", "sendable"),
    [
        ("APPROVED", True),
        ("REINSTATED", True),
        ("approved", True),
        ("PENDING", False),
        ("PAUSED", False),
        ("DISABLED", False),
        ("REJECTED", False),
        ("FLAGGED", False),
        ("IN_APPEAL", False),
        (None, False),
    ],
)
def test_meta_must_have_approved_the_template(status: str | None, sendable: bool) -> None:
    snap = snapshot(templates={TEMPLATE: template(meta_status=status)})
    assert codes(decide(template_draft(), snap)) == (
        [] if sendable else ["template.not_approved_by_meta"]
    )


def test_every_variable_must_be_filled_and_no_other_given() -> None:
    decision = decide(template_draft(variables={"name": "", "coupon": "X"}), snapshot())
    assert codes(decision) == [
        "template.variable_missing",
        "template.variable_missing",
        "template.variable_unknown",
    ]
    assert [r.params["name"] for r in decision.reasons] == ["name", "order", "coupon"]


@pytest.mark.parametrize(
    ("kind", "value", "valid"),
    [
        ("text", "Ana", True),
        ("text", "four    spaces", True),
        ("text", "five     spaces", False),
        ("text", "two\nlines", False),
        ("text", "tab\there", False),
        ("text", "   ", False),
        ("number", "1234", True),
        ("number", "-12.5", True),
        ("number", "12a", False),
        ("currency", "USD 12.50", True),
        ("currency", "1,234.00 EUR", True),
        ("currency", "12,34", False),
        ("currency", "twelve", False),
        ("date", "2026-11-03", True),
        ("date", "2026-11-03T10:00:00+09:00", True),
        ("date", "2026-02-30", False),
        ("date", "next week", False),
        ("url", "https://example.com/track?id=1", True),
        ("url", "javascript:alert(1)", False),
        ("url", "https://exa mple.com", False),
        ("colour", "red", False),
    ],
)
def test_each_value_is_checked_against_its_type(kind: str, value: str, valid: bool) -> None:
    snap = snapshot(templates={TEMPLATE: template(parameters=(TemplateParameter("v", kind),))})
    decision = decide(template_draft(variables={"v": value}), snap)
    assert codes(decision) == ([] if valid else ["template.variable_invalid"])
    if not valid:
        assert decision.reasons[0].params["type"] == kind


def test_the_templates_category_wins_over_the_items_and_it_says_so() -> None:
    snap = snapshot(templates={TEMPLATE: template(category=Category.MARKETING)})
    decision = decide(template_draft(category=Category.UTILITY), snap)  # only utility consent
    assert codes(decision) == ["consent.marketing_no_opt_in", "template.category_mismatch"]
    assert decision.reasons[1].effect is Effect.FLAG


# -- sensitive words ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code", "outcome"),
    [
        ("We offer GUARANTEED returns!", "lexicon.block", Outcome.BLOCK),
        ("an insider tip", "lexicon.hold", Outcome.HOLD),
        ("I promise", "lexicon.flag", Outcome.ALLOW),
        ("この商品は元本保証です", "lexicon.block", Outcome.BLOCK),
        ("今なら必ず儲かるチャンス", "lexicon.hold", Outcome.HOLD),
    ],
)
def test_a_lexicon_term_acts_by_its_action(text: str, code: str, outcome: Outcome) -> None:
    decision = decide(draft(text=text), snapshot())
    assert (codes(decision), decision.outcome) == ([code], outcome)
    assert decision.reasons[0].params["where"] == "text"


def test_words_apart_or_japanese_split_differently_do_not_match_a_phrase() -> None:
    assert decide(draft(text="returns are not guaranteed"), snapshot()).reasons == ()
    assert decide(draft(text="元本は保証しません"), snapshot()).reasons == ()


def test_template_variables_and_captions_are_checked() -> None:
    decision = decide(template_draft(variables={"name": "insider", "order": "1"}), snapshot())
    assert [(r.code, r.params["where"]) for r in decision.reasons] == [
        ("lexicon.hold", "variable:name")
    ]
    media = draft(kind=ContentKind.MEDIA, text="guaranteed returns inside")
    assert [r.params["where"] for r in decide(media, snapshot()).reasons] == ["caption"]


def test_the_term_itself_stays_out_of_the_reason() -> None:
    (reason,) = decide(draft(text="guaranteed returns"), snapshot()).reasons
    assert "guaranteed" not in json.dumps(reason.as_dict())
    assert reason.params["term_id"] == 1


# -- quiet hours --------------------------------------------------------------------


def at_local(zone: str, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, 10, hour, minute, tzinfo=ZoneInfo(zone)).astimezone(UTC)


@pytest.mark.parametrize(
    ("hour", "minute", "quiet"),
    [(7, 59, True), (8, 0, False), (21, 59, False), (22, 0, True), (3, 0, True)],
)
def test_quiet_hours_in_tokyo_for_a_japanese_number(hour: int, minute: int, quiet: bool) -> None:
    zone = zone_for("+81312345678")
    assert zone == "Asia/Tokyo"
    now = at_local("Asia/Tokyo", hour, minute)
    item = template_draft(recipient_region="JP", recipient_zone=zone)
    decision = decide(item, snapshot(now=now, last_inbound=outside_window()))
    assert codes(decision) == (["quiet_hours"] if quiet else [])
    if quiet:
        next_day = 1 if hour >= 22 else 0
        expected = datetime(2026, 11, 10 + next_day, 8, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
        assert decision.outcome is Outcome.DEFER
        assert decision.defer_until == expected.astimezone(UTC)
        assert decision.reasons[0].params["zone"] == "Asia/Tokyo"


def test_a_us_number_with_several_zones_uses_the_accounts_default_for_the_country() -> None:
    assert zone_for("+12135550123") == "America/Los_Angeles"
    assert zone_for("+18005550123") is None  # toll-free: every US zone
    settings = PolicySettings(region_zones={"US": "America/New_York"})
    item = template_draft(recipient_region="US", recipient_zone=None)
    # 12:00 UTC is 07:00 in New York.
    decision = decide(item, snapshot(settings={ACCOUNT: settings}, last_inbound=outside_window()))
    assert codes(decision) == ["quiet_hours"]
    assert decision.reasons[0].params["zone"] == "America/New_York"
    assert decision.defer_until == NOW + HOUR


def test_an_unknown_zone_is_treated_as_utc_and_says_so() -> None:
    item = template_draft(recipient_region="US", recipient_zone=None)
    snap = snapshot(now=NOW.replace(hour=23), last_inbound=outside_window())
    (reason,) = decide(item, snap).reasons
    assert reason.code == "quiet_hours"
    assert (reason.params["zone"], reason.params["zone_known"]) == ("UTC", False)
    assert "unknown" in reason.message


def test_authentication_and_replies_inside_the_window_are_exempt() -> None:
    late = NOW.replace(hour=23)  # 23:00 in London
    auth = template(
        category=Category.AUTHENTICATION, parameters=(TemplateParameter("code", "number"),)
    )
    snap = snapshot(
        now=late,
        templates={TEMPLATE: auth},
        consent={(CONTACT, Category.AUTHENTICATION): opted_in()},
        last_inbound=outside_window(),
    )
    item = template_draft(category=Category.AUTHENTICATION, variables={"code": "123456"})
    assert decide(item, snap).reasons == ()

    inside = snapshot(now=late, last_inbound={(ACCOUNT, CONTACT): late - HOUR})
    assert decide(draft(answers_customer=True), inside).reasons == ()
    assert codes(decide(draft(answers_customer=False), inside)) == ["quiet_hours"]


def test_quiet_hours_are_configurable_per_account() -> None:
    settings = PolicySettings(quiet_hours=QuietHours(start=time(13, 0), end=time(20, 0)))
    decision = decide(template_draft(), snapshot(settings={ACCOUNT: settings}))
    assert codes(decision) == ["quiet_hours"]
    assert decision.defer_until == NOW + HOUR  # 13:00 in London


def test_quiet_hours_are_judged_when_a_scheduled_item_goes() -> None:
    send_at = NOW.replace(hour=23)
    decision = decide(template_draft(send_at=send_at), snapshot())
    assert codes(decision) == ["quiet_hours", "scheduled"]
    assert decision.defer_until == datetime(
        2026, 11, 11, 8, 0, tzinfo=UTC
    )  # London is UTC in November


# -- scheduling ---------------------------------------------------------------------


def test_an_item_scheduled_later_is_deferred_until_then() -> None:
    decision = decide(draft(send_at=NOW + HOUR), snapshot())
    assert (decision.outcome, codes(decision), decision.defer_until) == (
        Outcome.DEFER,
        ["scheduled"],
        NOW + HOUR,
    )
    assert decide(draft(send_at=NOW), snapshot()).reasons == ()


# -- rates --------------------------------------------------------------------------


def test_a_stopped_number_blocks_and_a_backing_off_one_defers() -> None:
    stopped = snapshot(numbers={ACCOUNT: NumberState(NOW - 30 * 24 * HOUR, stopped_reason="368")})
    assert (decide(draft(), stopped).outcome, codes(decide(draft(), stopped))) == (
        Outcome.BLOCK,
        ["number.stopped"],
    )
    backoff = snapshot(
        numbers={ACCOUNT: NumberState(NOW - 30 * 24 * HOUR, backoff_until=NOW + SECOND)}
    )
    decision = decide(draft(), backoff)
    assert (codes(decision), decision.defer_until) == (["number.backoff"], NOW + SECOND)
    over = snapshot(numbers={ACCOUNT: NumberState(NOW - 30 * 24 * HOUR, backoff_until=NOW)})
    assert decide(draft(), over).reasons == ()


def spread(count: int, end: datetime, span: timedelta) -> list[datetime]:
    """``count`` sorted times up to ``end``, the oldest ``span`` before it."""
    step = span / max(count - 1, 1)
    return [end - span + step * i for i in range(count)]


def test_the_number_rate_counts_the_last_second() -> None:
    sends = spread(80, NOW, timedelta(milliseconds=900))
    decision = decide(draft(), snapshot(number_sends={ACCOUNT: sends}))
    assert codes(decision) == ["rate.number"]
    assert decision.defer_until == sends[0] + SECOND
    assert decide(draft(), snapshot(number_sends={ACCOUNT: sends[1:]})).reasons == ()
    # A send exactly one second ago is out of the window.
    edge = [NOW - SECOND, *sends[1:]]
    assert decide(draft(), snapshot(number_sends={ACCOUNT: edge})).reasons == ()


@pytest.mark.parametrize(("first", "limit"), [(None, 10), (0, 10), (2, 10), (3, 40), (7, 80)])
def test_a_new_number_warms_up(first: int | None, limit: int) -> None:
    state = NumberState(first_send_at=None if first is None else NOW - timedelta(days=first))
    sends = spread(limit, NOW, timedelta(milliseconds=500))
    decision = decide(draft(), snapshot(numbers={ACCOUNT: state}, number_sends={ACCOUNT: sends}))
    assert codes(decision) == (["rate.number"] if limit == 80 else ["rate.warmup"])
    assert decision.reasons[0].params["limit"] == limit
    fewer = snapshot(numbers={ACCOUNT: state}, number_sends={ACCOUNT: sends[1:]})
    assert decide(draft(), fewer).reasons == ()


def test_the_configured_rate_caps_the_warm_up() -> None:
    settings = PolicySettings(messages_per_second=5, warmup=[WarmupStep(0, 10)])
    sends = spread(5, NOW, timedelta(milliseconds=100))
    snap = snapshot(settings={ACCOUNT: settings}, number_sends={ACCOUNT: sends})
    assert codes(decide(draft(), snap)) == ["rate.number"]


def test_the_pair_rate_allows_a_burst_then_one_every_interval() -> None:
    two = [NOW - 2 * SECOND, NOW - SECOND]
    assert decide(draft(), snapshot(pair_sends={(ACCOUNT, CONTACT): two})).reasons == ()
    three = [*two, NOW]
    decision = decide(draft(), snapshot(pair_sends={(ACCOUNT, CONTACT): three}))
    assert codes(decision) == ["rate.pair"]
    # Tokens after the third send: 3 - 3 + 2/6 = 1/3; one whole token 4 s later.
    until = decision.defer_until
    assert until == NOW + 4 * SECOND
    assert (
        decide(draft(), snapshot(now=until, pair_sends={(ACCOUNT, CONTACT): three})).reasons == ()
    )
    early = until - timedelta(milliseconds=1)
    assert codes(decide(draft(), snapshot(now=early, pair_sends={(ACCOUNT, CONTACT): three}))) == [
        "rate.pair"
    ]


def test_the_pair_rate_is_per_business_number_and_the_bucket_refills() -> None:
    burst = [NOW - 2 * SECOND, NOW - SECOND, NOW]
    assert decide(draft(), snapshot(pair_sends={("acc-2", CONTACT): burst})).reasons == ()
    old = [t - 18 * SECOND for t in burst]  # three intervals later the bucket is full again
    assert decide(draft(), snapshot(pair_sends={(ACCOUNT, CONTACT): old})).reasons == ()


def test_a_pair_backing_off_is_deferred() -> None:
    decision = decide(draft(), snapshot(pair_backoff={(ACCOUNT, CONTACT): NOW + 16 * SECOND}))
    assert (codes(decision), decision.defer_until) == (["rate.pair_backoff"], NOW + 16 * SECOND)


def tier_snapshot(**overrides: object) -> Snapshot:
    recipients = {"ct-a": NOW - 20 * HOUR, "ct-b": NOW - 2 * HOUR}
    fields: dict[str, object] = {
        "settings": {ACCOUNT: PolicySettings(messaging_tier=2)},
        "tier_recipients": {PORTFOLIO: recipients},
        "last_inbound": outside_window(),
        "consent": {(c, Category.UTILITY): opted_in() for c in (CONTACT, "ct-a")},
    }
    return snapshot(**(fields | overrides))


def test_the_messaging_tier_defers_a_new_business_initiated_recipient() -> None:
    decision = decide(template_draft(), tier_snapshot())
    assert (codes(decision), decision.defer_until) == (["rate.tier"], NOW + 4 * HOUR)
    # A recipient already counted, or one inside a window, costs nothing more.
    assert decide(template_draft(contact_id="ct-a"), tier_snapshot()).reasons == ()
    inside = tier_snapshot(last_inbound={(ACCOUNT, CONTACT): NOW - HOUR})
    assert decide(template_draft(), inside).reasons == ()
    unlimited = tier_snapshot(settings={ACCOUNT: PolicySettings(messaging_tier=None)})
    assert decide(template_draft(), unlimited).reasons == ()
    stale = tier_snapshot(
        tier_recipients={PORTFOLIO: {"ct-a": NOW - 24 * HOUR, "ct-b": NOW - HOUR}}
    )
    assert decide(template_draft(), stale).reasons == ()


def test_marketing_is_capped_per_recipient() -> None:
    consent = {(CONTACT, Category.MARKETING): opted_in()}
    templates = {TEMPLATE: template(category=Category.MARKETING)}
    item = template_draft(category=Category.MARKETING)
    two = [NOW - timedelta(days=20), NOW - timedelta(days=1)]
    snap = snapshot(consent=consent, templates=templates, marketing_sends={CONTACT: two})
    decision = decide(item, snap)
    assert (codes(decision), decision.defer_until) == (
        ["rate.marketing_cap"],
        NOW + timedelta(days=10),
    )
    aged = [NOW - timedelta(days=30), NOW - timedelta(days=1)]
    snap = snapshot(consent=consent, templates=templates, marketing_sends={CONTACT: aged})
    assert decide(item, snap).reasons == ()
    # A utility message is not counted against it.
    assert decide(template_draft(), snapshot(marketing_sends={CONTACT: two})).reasons == ()


@pytest.mark.parametrize(("minutes", "held"), [(59, True), (60, False)])
def test_the_same_content_again_soon_is_held(minutes: int, held: bool) -> None:
    recent = {(CONTACT, b"digest-1"): NOW - timedelta(minutes=minutes)}
    decision = decide(draft(), snapshot(recent_content=recent))
    assert (codes(decision), decision.outcome) == (
        (["duplicate_content"], Outcome.HOLD) if held else ([], Outcome.ALLOW)
    )
    assert (
        decide(
            draft(contact_id="ct-2"),
            snapshot(recent_content=recent, last_inbound={(ACCOUNT, "ct-2"): NOW - HOUR}),
        ).reasons
        == ()
    )


# -- approval, every reason, expiry ---------------------------------------------------


def test_an_approval_releases_holds_but_not_blocks() -> None:
    item = draft(text="an insider tip", approved_by=SUPERVISOR)
    decision = decide(item, snapshot())
    assert decision.outcome is Outcome.ALLOW
    (reason,) = decision.reasons
    assert (reason.code, reason.effect, reason.params["approved_by"]) == (
        "lexicon.hold",
        Effect.FLAG,
        SUPERVISOR,
    )
    blocked = decide(replace(item, text="insider: guaranteed returns"), snapshot())
    assert blocked.outcome is Outcome.BLOCK


@pytest.mark.parametrize("approver", [AGENT, "someone"])
def test_an_approval_by_the_sender_or_a_non_approver_does_not_count(approver: str) -> None:
    snap = snapshot(approvers={ACCOUNT: frozenset({SUPERVISOR, AGENT})})
    decision = decide(draft(text="an insider tip", approved_by=approver), snap)
    assert decision.outcome is Outcome.HOLD
    assert codes(decision) == ["lexicon.hold", "approval.not_valid"]


def test_every_reason_is_listed_not_only_the_first() -> None:
    snap = snapshot(
        now=NOW.replace(hour=23),
        templates={TEMPLATE: template(our_status="submitted", meta_status="PAUSED")},
        consent={},
        numbers={
            ACCOUNT: NumberState(stopped_reason="131031", backoff_until=NOW.replace(hour=23) + HOUR)
        },
        pair_backoff={(ACCOUNT, CONTACT): NOW.replace(hour=23) + HOUR},
        recent_content={(CONTACT, b"digest-1"): NOW.replace(hour=23) - timedelta(minutes=1)},
        last_inbound=outside_window(),
    )
    item = template_draft(
        sender_id="intruder",
        category=Category.MARKETING,
        variables={"name": "guaranteed returns", "order": "many"},
        content_digest=b"digest-1",
    )
    decision = decide(item, snap)
    assert decision.outcome is Outcome.BLOCK
    assert set(codes(decision)) == {
        "permission.not_granted",
        "consent.utility_no_opt_in",
        "template.not_approved_by_us",
        "template.not_approved_by_meta",
        "template.category_mismatch",
        "template.variable_invalid",
        "lexicon.block",
        "quiet_hours",
        "number.stopped",
        "number.backoff",
        "rate.pair_backoff",
        "duplicate_content",
    }
    json.dumps(decision.as_dict())  # every parameter is JSON-ready


def test_a_defer_past_the_expiry_blocks_as_expired() -> None:
    item = draft(send_at=NOW + 2 * HOUR, expires_at=NOW + HOUR)
    decision = decide(item, snapshot())
    assert (decision.outcome, codes(decision)) == (Outcome.BLOCK, ["scheduled", "expired"])
    assert decision.defer_until is None
    ok = decide(replace(item, expires_at=NOW + 2 * HOUR), snapshot())
    assert (ok.outcome, ok.defer_until) == (Outcome.DEFER, NOW + 2 * HOUR)
    late = decide(draft(expires_at=NOW), snapshot())
    assert (late.outcome, codes(late)) == (Outcome.BLOCK, ["expired"])


def test_the_latest_defer_wins() -> None:
    snap = snapshot(pair_backoff={(ACCOUNT, CONTACT): NOW + 3 * HOUR})
    decision = decide(draft(send_at=NOW + HOUR), snap)
    assert decision.defer_until == NOW + 3 * HOUR


# -- a batch's own sends ----------------------------------------------------------------


def test_decide_changes_nothing_and_note_allowed_counts_the_batch() -> None:
    snap = snapshot(
        settings={ACCOUNT: PolicySettings(messaging_tier=1)},
        consent={
            (CONTACT, Category.MARKETING): opted_in(),
            ("ct-2", Category.MARKETING): opted_in(),
        },
        templates={TEMPLATE: template(category=Category.MARKETING)},
        last_inbound=outside_window(),
    )
    item = template_draft(category=Category.MARKETING)
    before = (dict(snap.number_sends), dict(snap.pair_sends), dict(snap.tier_recipients))
    assert decide(item, snap).outcome is Outcome.ALLOW
    assert (dict(snap.number_sends), dict(snap.pair_sends), dict(snap.tier_recipients)) == before

    note_allowed(item, snap, NOW)
    assert snap.number_sends[ACCOUNT] == [NOW]
    assert snap.pair_sends[ACCOUNT, CONTACT] == [NOW]
    assert snap.tier_recipients[PORTFOLIO] == {CONTACT: NOW}
    assert snap.marketing_sends[CONTACT] == [NOW]
    assert snap.recent_content[CONTACT, b"digest-1"] == NOW
    assert codes(decide(item, snap)) == ["duplicate_content"]
    assert codes(decide(template_draft(contact_id="ct-2", category=Category.MARKETING), snap)) == [
        "rate.tier"
    ]
    for _ in range(2):
        note_allowed(replace(item, content_digest=b""), snap, NOW)
    assert set(codes(decide(replace(item, content_digest=b""), snap))) == {
        "rate.pair",
        "rate.marketing_cap",
    }


def test_a_reply_inside_the_window_is_not_counted_against_the_tier() -> None:
    snap = snapshot()
    note_allowed(draft(), snap, NOW)
    assert snap.tier_recipients == {}
    assert snap.marketing_sends == {}


def test_an_opt_out_of_the_covering_category_leaves_nothing_that_covers() -> None:
    out = ConsentState(
        opted_in_at=NOW - 48 * HOUR, opted_out_at=NOW - HOUR, opted_out_how="by replying STOP"
    )
    covered = PolicySettings(consent_covers={"utility": ["marketing"]})
    snap = snapshot(consent={(CONTACT, Category.MARKETING): out}, settings={ACCOUNT: covered})
    decision = decide(template_draft(), snap)
    assert codes(decision) == ["consent.opted_out"]
    assert decision.reasons[0].params["category"] is Category.MARKETING


def test_an_answer_outside_the_window_is_not_exempt_from_quiet_hours() -> None:
    snap = snapshot(now=NOW.replace(hour=23), last_inbound=outside_window())
    assert codes(decide(template_draft(answers_customer=True), snap)) == ["quiet_hours"]


def test_over_the_tier_waits_until_enough_recipients_age_out() -> None:
    # Three counted against a tier of two (the tier was lowered): two must age out first.
    recipients = {"ct-a": NOW - 20 * HOUR, "ct-b": NOW - 2 * HOUR, "ct-c": NOW - 10 * HOUR}
    decision = decide(template_draft(), tier_snapshot(tier_recipients={PORTFOLIO: recipients}))
    assert (codes(decision), decision.defer_until) == (["rate.tier"], NOW + 14 * HOUR)
