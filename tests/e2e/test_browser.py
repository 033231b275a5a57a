"""The console in a real browser: a Japanese conversation, searched and read, then
the same pages as a user scoped to another account.

Runs Debian's chromium through Playwright; skipped when it is missing, unless
``STRONGROOM_TEST_REQUIRE_BROWSER=1`` makes that a failure. Screenshots of each
step go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.e2e.conftest import running_server
from tests.e2e.server import PASSWORD, Server
from tests.e2e.test_console import DELETED, EDITED, ORIGINAL, japanese_conversation

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
OTHER_PHONE_NUMBER_ID = "209876543210987"


@pytest.fixture(scope="module")
def browser(site: Server) -> Iterator[Browser]:
    """Chromium, launched after ``site``: Playwright's sync API keeps an event loop
    running in this thread, so the server's in-process set-up must come first."""
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


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server on SQLite with an admin, an officer and one account."""
    with running_server(tmp_path_factory.mktemp("browser"), "sqlite") as srv:
        yield srv


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    # Headless Chromium on a loaded machine sometimes fails a capture ("Unable to
    # capture screenshot") although the page is fine; the picture is an artifact,
    # not what is tested, so it gets a few tries.
    for attempt in range(3):
        try:
            page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=True)
            return
        except PlaywrightError as exc:
            if "Unable to capture screenshot" not in str(exc) or attempt == 2:
                raise
            page.wait_for_timeout(500)


def _sign_in(page: Page, base: str, username: str, prefix: str) -> None:
    """Password, then TOTP enrolment with a code computed from the page's secret."""
    page.goto(f"{base}/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    _shot(page, f"{prefix}-1-sign-in")
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{base}/login/mfa")
    totp = pyotp.TOTP(page.locator("#totp-secret").inner_text().strip())
    _shot(page, f"{prefix}-2-totp-enrolment")
    page.get_by_label("Six-digit code").fill(totp.now())
    page.get_by_role("button", name="Verify").click()
    if page.url.endswith("/login/mfa"):  # the code's time step ended: use the next one
        time.sleep(30 - time.time() % 30 + 1)
        page.get_by_label("Six-digit code").fill(totp.now())
        page.get_by_role("button", name="Verify").click()
    page.wait_for_url(f"{base}/")
    expect(page.get_by_role("heading", name=f"Welcome, {username}")).to_be_visible()


def test_search_and_read_a_japanese_conversation(site: Server, browser: Browser) -> None:
    contact = japanese_conversation(site)
    other = site.add_account(phone_number_id=OTHER_PHONE_NUMBER_ID, verify_token="other-token")
    site.create_user("browser-officer", "compliance_officer", account=site.account_id)
    site.create_user("browser-outsider", "compliance_officer", account=other)

    context = browser.new_context(locale="ja-JP", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    _sign_in(page, site.url, "browser-officer", "officer")
    _shot(page, "officer-3-home")

    page.get_by_role("link", name="Search").click()
    page.get_by_label("Words or").fill("会議")
    page.get_by_role("button", name="Search").click()
    results = page.locator("ol.hits")
    expect(results).to_contain_text(ORIGINAL)
    expect(results).to_contain_text(EDITED)
    _shot(page, "officer-4-search-results")

    page.locator("ol.hits a", has_text="Open conversation").first.click()
    page.wait_for_url(re.compile(rf".*/conversations/{contact}#m\d+"))
    expect(page.get_by_role("heading", name=re.compile("Conversation"))).to_be_visible()
    expect(page.locator(".msg.in .bubble").first).to_contain_text(EDITED)
    expect(page.locator(".msg.out .bubble")).to_contain_text("Business App")
    expect(page.locator(".deleted")).to_have_text("This message was deleted.")
    _shot(page, "officer-5-conversation")

    history = page.locator("details.history")
    versions = history.locator(".versions li")
    expect(versions.first).to_be_hidden()
    history.locator("summary", has_text="edited").click()
    expect(versions).to_have_count(2)
    expect(versions.nth(0)).to_contain_text(ORIGINAL)
    expect(versions.nth(1)).to_contain_text(EDITED)
    page.locator("details.original summary").click()
    expect(page.locator("details.original")).to_contain_text(DELETED)
    _shot(page, "officer-6-edit-history")
    context.close()

    outsider = browser.new_context(locale="ja-JP", viewport={"width": 1280, "height": 900})
    page = outsider.new_page()
    _sign_in(page, site.url, "browser-outsider", "outsider")
    page.goto(f"{site.url}/search?q=%E4%BC%9A%E8%AD%B0")
    expect(page.locator(".results")).to_contain_text("Nothing matches")
    expect(page.locator("ol.hits")).to_have_count(0)
    _shot(page, "outsider-3-search-finds-nothing")
    response = page.goto(f"{site.url}/conversations/{contact}")
    assert response is not None
    assert response.status in (403, 404)
    expect(page.get_by_role("heading", level=1)).to_have_text(
        re.compile("Not found|You do not have access")
    )
    expect(page.locator("main")).not_to_contain_text(ORIGINAL)
    _shot(page, "outsider-4-conversation-refused")
    outsider.close()
