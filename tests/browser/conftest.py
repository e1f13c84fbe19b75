"""Headless Chromium (Debian's ``chromium`` at /usr/bin/chromium) driven by Playwright.

Playwright's own browser downloads are never used: the browser is launched
with ``executable_path``. Without /usr/bin/chromium these tests skip, loudly,
except under CI (``CI`` set), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import warnings

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: the browser tests need it under CI (.ci/apt-packages installs chromium)")
    warnings.warn(f"BROWSER TESTS SKIPPED: {reason}", stacklevel=2)
    pytest.skip(f"BROWSER TESTS SKIPPED: {reason} (apt-get install chromium)")


@pytest.fixture
async def browser():
    """A headless Chromium (a new empty profile: Playwright gives every launch its own
    temporary user data dir); ``await browser.new_context()`` for each visitor."""
    if not os.path.exists(CHROMIUM):
        _missing(f"{CHROMIUM} not found")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


def watch_console(page) -> list[str]:
    """Collect console errors and uncaught page errors of ``page``."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    return errors
