"""Browser tests of the web page: Playwright for Python driving Debian's Chromium against the
real `hearth serve` (tests/server/conftest.py's start_server), pulling from the loopback hub.

Chromium comes from the system (`make test` installs Debian's `chromium` when it is missing);
Playwright's own browser download is not used. A missing browser fails these tests with what to
install: never a silent skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

CHROMIUM = Path(os.environ.get("HEARTH_TEST_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium keeps calling home on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"The web page's tests need Chromium at {CHROMIUM}. Install Debian's `chromium` "
            "package (`apt-get install chromium`, which `make test` does when run as root), or "
            "point HEARTH_TEST_CHROMIUM at a Chromium binary.",
            pytrace=False,
        )
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        yield launched
    finally:
        launched.close()


@dataclass
class Console:
    """What the page wrote to its console as errors, and what a test expects there."""

    errors: list[str] = field(default_factory=list)
    expected: list[re.Pattern[str]] = field(default_factory=list)

    def expect(self, pattern: str) -> None:
        self.expected.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.expected)]


def watch_console(page: Page) -> Console:
    console = Console()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            console.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: console.errors.append(f"uncaught: {error}"))
    return console
