"""The outbound console in a real browser: an agent composes a template message and
a free-text one, checks each decision (one blocked, one allowed) and sends; a
supervisor's held message waits in the hold queue, its sender cannot approve it,
another supervisor does.

Debian's chromium through Playwright, as in ``test_browser``; the server is seeded
before the browser starts (Playwright's sync API keeps a loop running)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import running_server
from tests.e2e.outbox_world import (
    HOLD_TERM,
    IN_WINDOW,
    OPTED_IN,
    OPTED_OUT,
    WABA_ID,
    Seeded,
    seed_outbox,
)
from tests.e2e.server import PASSWORD, Authenticator, Server
from tests.e2e.test_browser import _shot

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Seeded]]:
    """A real server on SQLite, seeded for the outbox, with an agent and two supervisors."""
    with running_server(tmp_path_factory.mktemp("outbox"), "sqlite", waba_id=WABA_ID) as srv:
        seeded = seed_outbox(srv)
        srv.create_user("pw-agent", "agent", account=srv.account_id)
        for name in ("pw-maker", "pw-checker"):
            srv.create_user(name, "supervisor", account=srv.account_id)
        yield srv, seeded


@pytest.fixture(scope="module")
def browser(site: tuple[Server, Seeded]) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("STRONGROOM_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"a browser is required here: {reason}")
        pytest.skip(reason)
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield launched
        finally:
            launched.close()


def _sign_in(browser: Browser, base: str, username: str) -> Page:
    """A new page signed in as ``username``: a second factor only for roles that need one."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{base}/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(re.compile(rf"{re.escape(base)}/(login/mfa)?$"))
    if page.url.endswith("/login/mfa"):
        authenticator = Authenticator(page.locator("#totp-secret").inner_text().strip())
        page.get_by_label("Six-digit code").fill(authenticator.code())
        page.get_by_role("button", name="Verify").click()
        page.wait_for_url(f"{base}/")
    expect(page.get_by_role("heading", name=f"Welcome, {username}")).to_be_visible()
    return page


def _check(page: Page) -> None:
    page.get_by_role("button", name="Check").click()
    expect(page.get_by_role("status")).to_be_visible()


def test_an_agent_checks_and_sends_a_template_and_a_text(
    site: tuple[Server, Seeded], browser: Browser
) -> None:
    server, world = site
    page = _sign_in(browser, server.url, "pw-agent")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link")).to_have_text(["Compose", "Sent", "Templates"])
    nav.get_by_role("link", name="Compose").click()
    page.get_by_label("Recipient").fill("+" + OPTED_OUT)
    page.get_by_label("A template").check()
    page.locator(f"#template-{world.promo}").check()
    page.locator(f"#var-{world.promo}-1").fill("Ana")
    _check(page)
    check = page.get_by_role("status")
    expect(check.locator(".outcome")).to_contain_text("block")
    expect(check.locator(".reason")).to_contain_text(
        f"blocked: the customer opted out of marketing on {world.opted_out_on} "
        "by replying with a stop word (STOP)"
    )
    _shot(page, "outbox-1-check-blocked")

    page.get_by_label("Recipient").fill("+" + OPTED_IN)
    _check(page)
    expect(page.get_by_role("status").locator(".outcome")).to_contain_text("allow")
    expect(page.locator(f"#var-{world.promo}-1")).to_have_value("Ana")  # the form is kept
    page.get_by_role("button", name="Send").click()
    page.wait_for_url(re.compile(r".*/outbox/[0-9a-f]{32}$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Outbox item")
    expect(page.locator("main")).to_contain_text("Template spring_promo (en_GB)")
    expect(page.locator(".moves li").first).to_contain_text("new → queued")
    _shot(page, "outbox-2-template-sent")

    page.goto(f"{server.url}/compose")
    page.get_by_label("Recipient").fill("+" + IN_WINDOW)
    page.get_by_label(re.compile("^Free text")).check()
    page.get_by_label("Text", exact=True).fill("Your parcel leaves today.")
    _check(page)
    allowed = page.get_by_role("status")
    expect(allowed.locator(".outcome")).to_contain_text("allow")
    expect(allowed).to_contain_text("No rule objected.")
    page.get_by_role("button", name="Send").click()
    page.wait_for_url(re.compile(r".*/outbox/[0-9a-f]{32}$"))
    expect(page.locator("main")).to_contain_text("Your parcel leaves today.")

    page.get_by_role("link", name="Sent").click()
    rows = page.locator("table.items tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.locator(".outcome-allow")).to_have_count(2)
    _shot(page, "outbox-3-sent-list")
    page.context.close()


def test_a_held_message_is_approved_by_another_supervisor(
    site: tuple[Server, Seeded], browser: Browser
) -> None:
    server, _ = site
    maker = _sign_in(browser, server.url, "pw-maker")
    maker.get_by_role("link", name="Compose").click()
    maker.get_by_label("Recipient").fill("+" + IN_WINDOW)
    maker.get_by_label("Text", exact=True).fill(f"Invest now: {HOLD_TERM}!")
    _check(maker)
    expect(maker.get_by_role("status").locator(".outcome")).to_contain_text("hold")
    expect(maker.get_by_role("status")).to_contain_text("held: the text holds lexicon term")
    maker.get_by_role("button", name="Send").click()
    maker.wait_for_url(re.compile(r".*/outbox/[0-9a-f]{32}$"))
    item_id = maker.url.rsplit("/", 1)[1]
    expect(maker.get_by_role("heading", level=1)).to_contain_text("held")

    maker.get_by_role("link", name="Hold queue").click()
    held = maker.locator(f"#i{item_id}")
    expect(held).to_contain_text(f"Invest now: {HOLD_TERM}!")
    expect(held).to_contain_text("another supervisor must decide it")
    held.get_by_label("Comment").fill("looks fine to me")
    held.get_by_role("button", name="Approve").click()
    expect(maker.get_by_role("alert")).to_contain_text(
        "nobody may approve or reject their own item"
    )
    expect(maker.locator(f"#i{item_id}")).to_be_visible()  # still held
    _shot(maker, "outbox-4-own-approval-refused")
    maker.context.close()

    checker = _sign_in(browser, server.url, "pw-checker")
    checker.get_by_role("link", name="Hold queue").click()
    held = checker.locator(f"#i{item_id}")
    expect(held).to_contain_text(f"Invest now: {HOLD_TERM}!")
    expect(held.locator(".reason")).to_contain_text("held:")
    _shot(checker, "outbox-5-hold-queue")
    held.get_by_label("Comment").fill("Cleared with compliance")
    held.get_by_role("button", name="Approve").click()
    expect(checker.get_by_role("status")).to_contain_text("Approved")
    expect(checker.locator(f"#i{item_id}")).to_have_count(0)
    checker.goto(f"{server.url}/outbox/{item_id}")
    expect(checker.locator(".moves")).to_contain_text("held → approved")
    expect(checker.locator(".moves")).to_contain_text("Cleared with compliance")
    _shot(checker, "outbox-6-approved")
    checker.context.close()
