"""The console in a real browser: a Japanese conversation, searched and read, then
the same pages as a user scoped to another account; a conversation's customer,
delivery states and failed receipts.

Runs Debian's chromium through Playwright; skipped when it is missing, unless
``STRONGROOM_TEST_REQUIRE_BROWSER=1`` makes that a failure. Screenshots of each
step go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from api.sandbox.fake_graph import FakeMedia, running_fake_graph
from tests.e2e.server import PASSWORD, Authenticator, Server
from tests.e2e.test_console import DELETED, EDITED, ORIGINAL, japanese_conversation
from tests.e2e.test_conversation import OPTED_OUT, RECEIVER, RECEIVER_NAME, receipts_conversation
from tests.e2e.test_media_safety import (
    HOSTILE,
    JS,
    TOKEN,
    Captured,
    capture_all,
    server_with_graph,
    svg_loading,
)

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
OTHER_PHONE_NUMBER_ID = "209876543210987"
FAKE_MEDIA = FakeMedia(access_token=TOKEN)


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
    """A real server on SQLite with an admin, an officer and one account, fetching
    media from a fake Graph API."""
    with running_fake_graph(FAKE_MEDIA) as graph_url:
        yield from server_with_graph(tmp_path_factory, "sqlite", graph_url)


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
    authenticator = Authenticator(page.locator("#totp-secret").inner_text().strip())
    _shot(page, f"{prefix}-2-totp-enrolment")
    page.get_by_label("Six-digit code").fill(authenticator.code())
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


def test_the_conversation_names_the_customer_and_shows_deliveries(
    site: Server, browser: Browser
) -> None:
    contact = receipts_conversation(site)
    site.create_user("browser-receipts", "compliance_officer", account=site.account_id)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    _sign_in(page, site.url, "browser-receipts", "receipts")
    page.goto(f"{site.url}/conversations/{contact}")
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_contain_text(f"Conversation with {RECEIVER_NAME}")
    expect(heading).to_contain_text(f"+{RECEIVER}")

    read = page.locator(".msg.out", has_text="Your order has shipped.").locator(".delivery")
    expect(read).to_have_attribute("aria-label", "Delivery: read")
    expect(read.locator(".receipt")).to_have_text(
        [re.compile(rf"^{state} 2025-11-21 07:28$") for state in ("sent", "delivered", "read")]
    )
    refused = page.locator(".msg.out", has_text="Spring sale").locator(".delivery")
    expect(refused).to_have_attribute("aria-label", "Delivery: failed")
    expect(refused.locator(".receipt-failed")).to_be_visible()
    expect(refused.get_by_role("alert")).to_contain_text(
        f"{OPTED_OUT} Unable to deliver the message. This recipient has chosen to stop"
    )
    orphan = page.get_by_role("article", name="status for a message not in this archive")
    expect(orphan).to_contain_text("Status for a message not in this archive wamid.R9")
    expect(orphan.get_by_role("alert")).to_have_text("131047 Re-engagement message")
    _shot(page, "receipts-1-conversation")

    page.goto(f"{site.url}/search")
    page.get_by_label("Delivery").select_option("failed")
    page.get_by_label("Meta error code").fill(str(OPTED_OUT))
    page.get_by_role("button", name="Search").click()
    hits = page.locator("ol.hits li")
    expect(hits).to_have_count(1)
    expect(hits.first).to_contain_text("Spring sale: 20% off.")
    expect(hits.first.locator(".sender")).to_have_text("business")
    _shot(page, "receipts-2-search-failed")
    context.close()


# What each hostile file really is, as a browser would render it if it were served
# inline; the JavaScript file runs when an SVG loads it as its script.
REAL_TYPES = {
    "svg-script-href": "image/svg+xml",  # the attack
    "svg-script": "image/svg+xml",
    "svg-onload": "image/svg+xml",
    "html-script": "text/html",
    "xhtml-script": "application/xhtml+xml",
}


@pytest.fixture(scope="module")
def hostile(site: Server) -> Captured:
    """The hostile and the proven files, captured through the webhook and fetched."""
    return capture_all(site, FAKE_MEDIA, "447700900666")


def _open_directly(page: Page, url: str) -> bool:
    """Navigate to ``url`` in the page; True when that only started a download (no
    document was made and the page stayed blank), False when it rendered something."""
    page.goto("about:blank")
    try:
        page.goto(url)
    except PlaywrightError as exc:  # Chromium aborts a navigation that downloads
        if "Download is starting" not in str(exc) and "ERR_ABORTED" not in str(exc):
            raise
    return page.url == "about:blank"


def _rendered_as(content_type: str) -> Callable[[Route], None]:
    """A route handler that fetches the real response and changes only its type and
    disposition, keeping every other header (nosniff, the sandboxing CSP)."""

    def handle(route: Route) -> None:
        served = route.fetch()
        headers = {k: v for k, v in served.headers.items() if k != "content-disposition"}
        route.fulfill(response=served, headers=headers | {"content-type": content_type})

    return handle


def test_no_hostile_media_runs_script_directly_or_in_the_viewer(
    site: Server, browser: Browser, hostile: Captured
) -> None:
    site.create_user("media-officer", "compliance_officer", account=site.account_id)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    # Every script in the hostile files sets the title to "ran" and requests /ran.
    marks: list[str] = []
    context.on("request", lambda r: marks.append(r.url) if r.url.endswith("/ran") else None)
    context.route(f"{site.url}/ran", lambda route: route.fulfill(status=204))
    page = context.new_page()
    _sign_in(page, site.url, "media-officer", "media")
    controls = 0

    def control(name: str, body: bytes, content_type: str) -> None:
        """The probe can fail: the same bytes served inline as what they are, without
        our headers, from our origin, do run. Any mark left by what was opened
        before would have been seen before this one (the browser reports in order)."""
        nonlocal controls
        url = f"{site.url}/control/{name}"
        context.route(url, lambda route: route.fulfill(body=body, content_type=content_type))
        with page.expect_request(f"{site.url}/ran"):
            page.goto(url)
        expect(page).to_have_title("ran")
        controls += 1
        assert len(marks) == controls, marks

    context.route(
        f"{site.url}/control/javascript",
        lambda route: route.fulfill(body=JS, content_type="application/javascript"),
    )
    for name, real_type in REAL_TYPES.items():
        media = f"{site.url}/api/v1/media/{hostile.ids[name]}"
        # The stored file opened in a tab of its own runs nothing: it only downloads.
        with page.expect_download():
            downloaded = _open_directly(page, media)
            assert page.title() != "ran"
        assert downloaded
        # Even rendered as what it really is, our headers (kept) stop its script.
        context.route(media, _rendered_as(real_type))
        page.goto(media)
        assert page.title() != "ran"
        context.unroute(media)
        # The viewer offers it only as a download, which only downloads.
        page.goto(f"{site.url}/media/{hostile.ids[name]}/view")
        expect(page.locator(".viewer img, .viewer audio, .viewer video")).to_have_count(0)
        with page.expect_download() as download:
            page.get_by_role("link", name="Download").click()
        assert download.value.suggested_filename == f"media-{hostile.ids[name]}"
        assert page.title() != "ran"
        body = svg_loading("/control/javascript") if name == "svg-script-href" else HOSTILE[name][0]
        control(name, body, real_type)

    # The attack exactly, with every other defence gone: an SVG rendered
    # inline loading the stored JavaScript file as its script. nosniff stops it.
    script = f"/api/v1/media/{hostile.ids['javascript']}"
    context.route(
        f"{site.url}/control/attack",
        lambda route: route.fulfill(body=svg_loading(script), content_type="image/svg+xml"),
    )
    with page.expect_response(f"{site.url}{script}") as loaded:
        page.goto(f"{site.url}/control/attack")
    assert loaded.value.headers["x-content-type-options"] == "nosniff"
    assert page.title() != "ran"
    page.goto(f"{site.url}/conversations/{hostile.contact}")  # thumbnails are only <img>
    _shot(page, "media-1-conversation")
    control("last", HOSTILE["svg-script"][0], "image/svg+xml")

    # A proven image is shown, in the viewer and in a tab of its own.
    page.goto(f"{site.url}/media/{hostile.ids['png']}/view")
    image = page.locator(".viewer img")
    expect(image).to_have_count(1)
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    assert image.evaluate("img => img.naturalWidth") == 64
    _shot(page, "media-2-viewer-image")
    expect(page.locator(".viewer audio")).to_have_count(0)
    # Proven audio plays in the viewer (a tab of its own has an opaque origin, whose
    # player would fetch the file without the session).
    page.goto(f"{site.url}/media/{hostile.ids['voice']}/view")
    player = page.locator(".viewer audio")
    expect(player).to_have_count(1)
    page.wait_for_function("a => a.readyState > 0 || a.error", arg=player.element_handle())
    assert player.evaluate("a => a.error") is None
    response = page.goto(f"{site.url}/api/v1/media/{hostile.ids['png']}")
    assert response is not None
    assert response.headers["content-type"] == "image/png"
    assert page.evaluate("document.images.length && document.images[0].naturalWidth") == 64
    assert len(marks) == controls
    context.close()


HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def test_the_api_reference_renders_every_operation_from_this_origin(
    site: Server, browser: Browser
) -> None:
    """``/schema`` under the console's Content-Security-Policy: nothing blocked, nothing
    fetched from elsewhere, and each operation of the served description on the page."""
    spec = site.client.get("/schema/openapi.json").json()
    operations = [
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]
    assert len(operations) > 20
    context = browser.new_context()
    page = context.new_page()
    elsewhere: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(site.url) else elsewhere.append(r.url))
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    # A failed load is reported above, with its address; anything else is an error here.
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    # Injected by the browser itself, so the page's own policy does not apply to it.
    page.add_init_script(
        "window.violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    page.goto(f"{site.url}/schema")
    expect(page.get_by_role("heading", name=re.compile("Strongroom API"))).to_be_visible()
    shown = page.locator("section.operation h2")
    expect(shown).to_have_count(len(operations))
    headings = [" ".join(text.split()) for text in shown.all_inner_texts()]
    assert headings == [f"{method} {path}" for method, path in operations]
    records = page.locator("section.operation", has_text="/api/v1/accounts/{account_id}/records")
    expect(records.first).to_contain_text("bearer")
    expect(page.locator(".schemes")).to_contain_text("bearer: http bearer")
    _shot(page, "api-reference")
    assert page.evaluate("window.violations") == []
    assert elsewhere == []
    assert errors == []
    assert set(failed) <= {f"{site.url}/favicon.ico"}  # the browser asks; there is none
    context.close()


def test_the_served_description_declares_api_tokens_as_bearer_tokens(site: Server) -> None:
    spec = site.client.get("/schema/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    records = spec["paths"]["/api/v1/accounts/{account_id}/records"]["get"]
    assert {"bearer": []} in records["security"]
    # What the description declares is what the server takes.
    assert site.officer["Authorization"].startswith("Bearer sr_")
    path = f"/api/v1/accounts/{site.account_id}/records"
    assert site.client.get(path, headers=site.officer).status_code == 200
    assert site.client.get(path).status_code == 401
