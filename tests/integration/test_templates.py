"""The template registry on real databases: drafts checked against Meta's rules,
maker-checker approval with every step audited and every refusal denied, and
reads scoped to the caller's accounts."""

from __future__ import annotations

from typing import Any

import pytest

from archiver.audit.services import Actor
from policy.decision import Category, TemplateParameter
from policy.errors import (
    DuplicateTemplate,
    InvalidTemplate,
    SelfApproval,
    TemplateNotFound,
    TemplateStateError,
)
from policy.models import MessageTemplate
from policy.templates import TemplateRegistry
from tests.integration.policy_world import World, world

__all__ = ["world"]

MAKER = Actor(id="usr_maker")
SUBMITTER = Actor(id="usr_submitter")
CHECKER = Actor(id="usr_checker")
BODY = [{"type": "BODY", "text": "Your order {{1}} ships on {{2}}."}]
PARAMS = [{"name": "1", "type": "text"}, {"name": "2", "type": "date"}]


async def _draft(world: World, **kwargs: Any) -> MessageTemplate:
    values: dict[str, Any] = {
        "name": "order_confirmation",
        "language": "en-US",
        "category": "utility",
        "components": BODY,
        "parameters": PARAMS,
    }
    values.update(kwargs)
    return await world.templates.create(MAKER, None, world.account_id, **values)


async def test_a_template_goes_from_draft_to_approved_by_another_person(world: World) -> None:
    row = await _draft(world)
    assert (row.waba_id, row.language, row.status) == ("102290129340398", "en_US", "draft")
    await world.templates.submit(SUBMITTER, None, row.id)
    for person in (MAKER, SUBMITTER):
        with pytest.raises(SelfApproval, match="another person decides"):
            await world.templates.approve(person, None, row.id)
    approved = await world.templates.approve(CHECKER, None, row.id, "wording checked")
    assert (approved.status, approved.decided_by, approved.decision_comment) == (
        "approved",
        CHECKER.id,
        "wording checked",
    )
    with pytest.raises(TemplateStateError, match="not submitted"):
        await world.templates.reject(CHECKER, None, row.id, "too late")
    with pytest.raises(TemplateStateError, match="only a draft or a rejected"):
        await world.templates.update(MAKER, None, row.id, components=BODY)
    steps = [
        (e.action, e.outcome, e.actor)
        for action in ("template.create", "template.submit", "template.approve", "template.reject")
        for e in await world.audit_events(action)
    ]
    assert steps == [
        ("template.create", "ok", MAKER.id),
        ("template.submit", "ok", SUBMITTER.id),
        ("template.approve", "denied", MAKER.id),
        ("template.approve", "denied", SUBMITTER.id),
        ("template.approve", "ok", CHECKER.id),
        ("template.reject", "denied", CHECKER.id),
    ]
    async with world.services.sessions() as session:
        views = await TemplateRegistry.views(session, [row.id, row.id + 99])
    assert views[row.id].parameters == (
        TemplateParameter("1", "text"),
        TemplateParameter("2", "date"),
    )
    assert (views[row.id].category, views[row.id].our_status) == (Category.UTILITY, "approved")
    assert set(views) == {row.id}


async def test_a_rejected_template_needs_a_comment_and_is_edited_back_to_a_draft(
    world: World,
) -> None:
    row = await _draft(world)
    await world.templates.submit(MAKER, None, row.id)
    with pytest.raises(InvalidTemplate, match="needs a comment"):
        await world.templates.reject(CHECKER, None, row.id, "  ")
    rejected = await world.templates.reject(CHECKER, None, row.id, "say which order")
    assert rejected.status == "rejected"
    body = [{"type": "BODY", "text": "Order {{order_id}} is on its way."}]
    edited = await world.templates.update(
        MAKER, None, row.id, components=body, parameters=[{"name": "order_id", "type": "text"}]
    )
    assert (edited.status, edited.decided_by, edited.submitted_by) == ("draft", None, None)
    assert len(await world.audit_events("template.update")) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Order Confirmation"}, "only a-z, 0-9 and _"),
        ({"language": "english"}, "not a code like en"),
        ({"category": "service"}, "unknown template category"),
        ({"components": []}, "non-empty list"),
        ({"components": [{"type": "HEADER", "text": "x"}]}, "exactly one BODY"),
        ({"parameters": [{"name": "1"}]}, "without a parameter: 2"),
        ({"parameters": [*PARAMS, {"name": "3", "type": "text"}]}, "no placeholder uses: 3"),
        ({"parameters": [{"name": "1", "type": "money"}, PARAMS[1]]}, "type 'money'"),
        (
            {"components": [{"type": "BODY", "text": "{{1}} and {{3}}"}]},
            "without gaps",
        ),
        (
            {"components": [{"type": "BODY", "text": "{{1}} and {{name}}"}]},
            "all numbered",
        ),
        ({"parameters": [PARAMS[0], PARAMS[0]]}, "share a name"),
    ],
)
async def test_bad_drafts_are_refused_and_audited(
    world: World, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidTemplate, match=message):
        await _draft(world, **change)
    assert await world.count(MessageTemplate) == 0
    (denied,) = await world.audit_events("template.create")
    assert denied.outcome == "denied"


async def test_names_are_unique_per_business_account_and_language(world: World) -> None:
    await _draft(world)
    with pytest.raises(DuplicateTemplate):
        await _draft(world, language="en_US")
    other = await _draft(world, language="fr")
    assert other.language == "fr"


async def test_reads_and_steps_are_scoped_to_the_callers_accounts(world: World) -> None:
    elsewhere = await world.register("106540352249999", "999999999999999")
    no_waba = await world.register("106540352248888", None)
    mine = await _draft(world)
    theirs = await world.templates.create(
        MAKER,
        [elsewhere],
        elsewhere,
        name="welcome",
        language="en",
        category="marketing",
        components=[{"type": "BODY", "text": "Hello"}],
        parameters=[],
    )
    assert [t.id for t in await world.templates.list_for([world.account_id])] == [mine.id]
    assert [t.id for t in await world.templates.list_for(None, elsewhere)] == [theirs.id]
    assert len(await world.templates.list_for(None)) == 2
    with pytest.raises(TemplateNotFound):
        await world.templates.get([world.account_id], theirs.id)
    with pytest.raises(TemplateNotFound):
        await world.templates.submit(MAKER, [world.account_id], theirs.id)
    with pytest.raises(TemplateNotFound, match="within your accounts"):
        await world.templates.create(
            MAKER, [world.account_id], elsewhere, name="x", language="en",
            category="utility", components=BODY, parameters=PARAMS,
        )  # fmt: skip
    with pytest.raises(InvalidTemplate, match="no WhatsApp Business Account id"):
        await world.templates.create(
            MAKER, None, no_waba, name="x", language="en",
            category="utility", components=BODY, parameters=PARAMS,
        )  # fmt: skip
    denied = [e for e in await world.audit_events("template.submit") if e.outcome == "denied"]
    assert [e.target for e in denied] == [f"template:{theirs.id}"]
