"""Keyboard and screen reader basics of the lab's own pages, checked in the real browser."""

from __future__ import annotations

UNNAMED_CONTROLS = """() => [...document.querySelectorAll(
    'main input:not([type=hidden]), main select, main textarea, main button, main a[href]')]
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby')
               && !e.textContent.trim())
  .map(e => e.outerHTML.slice(0, 160))"""


def assert_keyboard_and_screen_reader_basics(page) -> None:
    """One h1; every control in the main landmark has an accessible name (a label, aria-label, or its text); the
    first Tab reaches the skip link, and following it moves the focus into the page's main content."""
    assert page.locator("h1").count() == 1, "a page has one h1"
    assert page.evaluate(UNNAMED_CONTROLS) == [], "every control needs a label"
    page.locator("body").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Skip to the page's content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "teachlab-main"
