"""A real headless Chromium for the end-to-end tests: one browser per test module, a fresh context per test.

The browser is Debian's ``chromium`` (``make system-packages`` installs it), driven by the Python
``playwright`` package; Playwright's own browser downloads are never used. A test gets an empty
context (no cookies, no storage), so it signs in through the real login provider as a student would.
After a failed test every page still open is saved as ``failure-<n>.png`` and ``failure-<n>.html`` in
the test's output folder, to see what the browser showed and which elements were there.

The lab itself (``lab``, ``users``, ``hub_log_on_failure``) comes from tests/support/lab_fixtures.py,
the plugin that tests/conftest.py registers for tests/hub and tests/e2e alike.
"""

from __future__ import annotations

import os
import shutil

import pytest

from spawner.devlab.names import chromium_resolver_rules
from support.browser import CHROMIUM_ARGS, VIEWPORT, forget_failed_requests, trusting_home, watch_failed_requests

DEFAULT_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def chromium_browser(lab, tmp_path_factory):
    """Headless Chromium for one module: it trusts the lab's CA and resolves the lab's test domain to loopback.
    Playwright's sync API holds an event loop on this thread while it runs, so it is stopped when the module
    ends, before other tests use asyncio."""
    from playwright import sync_api

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: run `make system-packages` (make test does)")
    if shutil.which("certutil") is None:
        pytest.fail("certutil is not installed: run `make system-packages` (make test does)")
    home = trusting_home(tmp_path_factory.mktemp("chromium-home"), lab.certificates.ca_certificate)
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=[*CHROMIUM_ARGS, chromium_resolver_rules(lab.domain)],
            env={**os.environ, "HOME": str(home)},
        )
        yield browser
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def browser_context(request, chromium_browser, output_dir):
    """A context of its own for one test: no cookies or storage from other tests, 30 s default timeouts."""
    context = chromium_browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    watch_failed_requests(context)
    try:
        yield context
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            for url, reason in forget_failed_requests(context):
                print(f"request failed: {url}: {reason}")
            for number, page in enumerate(context.pages, start=1):
                print(f"\n===== page {number} at failure: {page.url} (see {output_dir}/failure-{number}.*) =====")
                page.screenshot(path=output_dir / f"failure-{number}.png", full_page=True)
                (output_dir / f"failure-{number}.html").write_text(page.content())
    finally:
        forget_failed_requests(context)
        context.close()
