"""A real Chromium for browser tests: its arguments, and a HOME whose NSS database trusts a lab's CA."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

CHROMIUM_ARGS = (
    "--no-sandbox",  # tests often run as root in a container, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1400, "height": 900}
# Chromium aborts requests when this machine's interfaces change: tests and other sessions make and remove Docker
# networks and containers all the time. Such a page is loaded again, for that reason and no other.
NETWORK_CHANGED = "net::ERR_NETWORK_CHANGED"
_failed_requests: dict[int, list[tuple[str, str]]] = {}


def goto(page, url: str, attempts: int = 3):
    """``page.goto(url)``, again when Chromium aborted the navigation for a network change, and only then."""
    from playwright.sync_api import Error as PlaywrightError

    for attempt in range(1, attempts + 1):
        try:
            return page.goto(url)
        except PlaywrightError as error:
            if NETWORK_CHANGED not in str(error) or attempt == attempts:
                raise
            print(f"navigating to {url} again: {error}")


def watch_failed_requests(context) -> None:
    """Remember every request of ``context`` that failed, with Chromium's reason (printed when a test fails)."""
    failed = _failed_requests.setdefault(id(context), [])
    context.on("requestfailed", lambda request: failed.append((request.url, request.failure or "")))


def forget_failed_requests(context) -> list[tuple[str, str]]:
    """The requests of ``context`` that failed, once the context is done."""
    return _failed_requests.pop(id(context), [])


def expect_jupyterlab(page, timeout_ms: float, reloads: int = 2) -> None:
    """JupyterLab's launcher shows within ``timeout_ms``. A page whose requests Chromium aborted for a network
    change is loaded again (at most ``reloads`` times); any other blank page fails as it is."""
    from playwright.sync_api import expect

    failed = _failed_requests.get(id(page.context), [])
    handled = len(failed)  # aborts before the lab's page are the pages before it: theirs to handle
    launcher = page.locator(".jp-Launcher")
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            expect(launcher).to_be_visible(timeout=2_000)
            return
        except AssertionError:
            aborted = [url for url, reason in failed[handled:] if NETWORK_CHANGED in reason]
            handled = len(failed)
            if aborted and reloads:
                print(f"loading {page.url} again: Chromium aborted {aborted} for a network change")
                reloads -= 1
                page.reload()
            elif time.monotonic() > deadline:
                raise


def trusting_home(folder: Path, ca_certificate: Path) -> Path:
    """A HOME whose NSS database trusts the lab's CA, as a university's managed desktops trust theirs."""
    nssdb = folder / ".pki" / "nssdb"
    if not (nssdb / "cert9.db").exists():
        nssdb.mkdir(parents=True, exist_ok=True)
        subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True)
    nickname = f"teachlab-test-ca-{abs(hash(str(ca_certificate)))}"
    subprocess.run(
        ["certutil", "-A", "-d", f"sql:{nssdb}", "-n", nickname, "-t", "C,,", "-i", str(ca_certificate)],
        check=True,
        capture_output=True,
    )
    return folder


def sign_in_at_the_provider(page, lab, username: str) -> None:
    """From the hub's login page, through the university's login form, back to the hub home page."""
    page.get_by_role("button", name="Sign in with University login").click()
    page.wait_for_url(f"{lab.issuer}/**")
    page.locator("#username").fill(username)
    page.locator("#password").fill(lab.password(username))
    page.locator("button#login").click()
    page.wait_for_url(f"{lab.public_url}/hub/home")
