"""The Tilt web UI in a real browser: headless Chromium (Debian's `chromium`, installed by
./bootstrap.sh) driven by Playwright opens the UI of a `tilt up` session, waits until storage,
app and loader are green, clicks the smoke resource's trigger and sees it pass, checks the
NodePort links (they open the Services), and saves a screenshot under build/. No usage-data
prompt may cover the UI (the Tiltfile opts out).

Needs the local cluster and the pinned Tilt (`invoke test` provides both) and /usr/bin/chromium."""
from __future__ import annotations

import os
import re
import urllib.request

import pytest

from tests.support import tilt as live
from twotier import settings as settingsmod
from twotier.dev import tiltrun
from twotier.poll import Timeout, poll

pytestmark = [pytest.mark.tilt, pytest.mark.usefixtures("clean_slate")]

CHROMIUM = os.environ.get("TWOTIER_CHROMIUM", "/usr/bin/chromium")
# Debian's chromium as root in a container: no sandbox, no GPU, nothing fetched from outside.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = tiltrun.ROOT / "build" / "screenshots"
LINKS = {"http://127.0.0.1:31000/items": "in-svc (NodePort 31000)",
         "http://127.0.0.1:31001/createlist/0": "out-svc (NodePort 31001)"}


@pytest.fixture(scope="module")
def settings(cluster):
    return settingsmod.load()


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: ./bootstrap.sh installs Debian's chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def row(page, name: str):
    """The overview table's row of resource NAME."""
    name_button = page.locator("td button").filter(has_text=re.compile(rf"^{re.escape(name)}$"))
    return page.locator("tr", has=name_button).first


def wait_green(page, names, timeout_s: float = 300) -> None:
    """Every NAME's row shows only healthy statuses (update and runtime) and none pending/error;
    TIMEOUT_S only bounds a hang."""
    states = {}

    def green() -> bool:
        for name in names:
            r = row(page, name)
            states[name] = (r.locator(".is-healthy").count(), r.locator(".is-error, .is-pending, .is-building").count())
        return all(h >= 1 and b == 0 for h, b in states.values())

    try:
        poll(green, timeout=timeout_s, interval=1, what="the resources green in the UI")
    except Timeout:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "tilt-ui-not-green.png"), full_page=True)
        pytest.fail(f"not green in the UI after {timeout_s:.0f}s (healthy, bad) = {states}")


def test_tilt_ui_shows_green_resources_runs_smoke_and_links_the_nodeports(cluster, settings, browser):
    with live.TiltSession(settings) as session:
        session.wait_ready(resources=("storage", "app", "loader"))
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"http://localhost:{session.port}/overview", wait_until="domcontentloaded")
        page.locator("table[aria-label='Resources overview'], [aria-label='Resources overview']").first \
            .wait_for(timeout=60_000)
        assert page.get_by_text("We collect anonymized usage data").count() == 0, "the analytics prompt is shown"
        wait_green(page, ["storage", "app", "loader"])

        # the NodePort links of storage and app, as the Tiltfile declares them, and they answer
        hrefs = {a.get_attribute("href"): a.inner_text().strip()
                 for a in page.locator("a[href^='http://127.0.0.1:310']").all()}
        assert hrefs == LINKS, hrefs
        for url in LINKS:
            with urllib.request.urlopen(url, timeout=10) as resp:
                assert resp.status == 200

        # smoke is a manual button: click its trigger and see it pass in the UI (and in Tilt's API)
        smoke_row = row(page, "smoke")
        trigger = smoke_row.locator("button[aria-label^='Trigger update']")
        trigger.wait_for(timeout=30_000)
        trigger.click()

        def finished() -> dict | None:
            status = session.resource_status("smoke")
            history = status.get("buildHistory") or []
            done = history and history[0].get("finishTime") and not status.get("currentBuild", {}).get("startTime")
            return status if done else None

        status = poll(finished, timeout=300, interval=1, what="the smoke resource's run finished")
        history = status["buildHistory"]
        assert not history[0].get("error"), history[0]
        assert status.get("updateStatus") == "ok"
        wait_green(page, ["smoke"], timeout_s=60)
        assert smoke_row.locator(".is-healthy").first.inner_text().startswith("Updated")

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / "tilt-ui.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        page.close()
