"""The template registry's pure checks: Meta's language codes and statuses, and
components whose placeholders agree with the declared parameters."""

from __future__ import annotations

from typing import Any

import pytest

from policy.decision import TemplateParameter
from policy.errors import InvalidTemplate
from policy.templates import check_content, meta_language, meta_status

HEADER = {"type": "HEADER", "format": "TEXT", "text": "Hi {{name}}"}
BUTTON = {"type": "BUTTONS", "buttons": [{"type": "URL", "url": "https://x.test/{{track}}"}]}


def test_named_placeholders_anywhere_in_the_components_must_all_be_declared() -> None:
    components = [HEADER, {"type": "BODY", "text": "Order {{ order_id }} ships"}, BUTTON]
    params = [
        {"name": "name", "type": "text"},
        {"name": "order_id", "type": "number"},
        {"name": "track", "type": "url"},
    ]
    _, checked = check_content(components, params)
    assert checked == [
        TemplateParameter("name"),
        TemplateParameter("order_id", "number"),
        TemplateParameter("track", "url"),
    ]
    with pytest.raises(InvalidTemplate, match="without a parameter: track"):
        check_content(components, params[:2])


def test_a_template_without_placeholders_takes_no_parameters() -> None:
    body = [{"type": "BODY", "text": "Thanks!"}]
    assert check_content(body, []) == (body, [])
    with pytest.raises(InvalidTemplate, match="no placeholder uses: 1"):
        check_content(body, [{"name": "1", "type": "text"}])


@pytest.mark.parametrize(
    ("components", "parameters", "message"),
    [
        ("BODY", [], "non-empty list"),
        ([{"text": "x"}], [], "needs a type"),
        ([{"type": "BODY"}, {"type": "body"}], [], "exactly one BODY"),
        ([{"type": "BODY", "text": "{{1}}"}], {"1": "text"}, "must be a list"),
        ([{"type": "BODY", "text": "{{1}}"}], [{"name": "1", "kind": "x"}], "is {name, type}"),
        ([{"type": "BODY", "text": "{{Bad-Name}}"}], [], "not a number or a-z0-9_"),
        ([{"type": "BODY", "text": "{{2}}"}], [{"name": "2"}], "without gaps"),
    ],
)
def test_malformed_content_is_refused(components: Any, parameters: Any, message: str) -> None:
    with pytest.raises(InvalidTemplate, match=message):
        check_content(components, parameters)


@pytest.mark.parametrize(
    ("code", "expected"), [("en", "en"), ("en_US", "en_US"), ("en-us", "en_US"), ("pt_BR", "pt_BR")]
)
def test_language_codes_take_metas_form(code: str, expected: str) -> None:
    assert meta_language(code) == expected


@pytest.mark.parametrize("code", ["", "english", "e", "en_", "en US"])
def test_bad_language_codes_are_refused(code: str) -> None:
    with pytest.raises(InvalidTemplate):
        meta_language(code)


def test_meta_statuses_are_kept_and_reinstated_means_approved() -> None:
    assert meta_status("approved") == "APPROVED"
    assert meta_status("PENDING_DELETION") == "PENDING_DELETION"
    assert meta_status("REINSTATED") == "APPROVED"
    assert meta_status("SOMETHING_NEW") is None
