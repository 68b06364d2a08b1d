"""A real Chromium driven by Playwright, for the page's tests.

Playwright's sync API runs in a worker thread (its async API needs asyncio), the server in the
test's trio nursery; a scenario reaches back into trio with ``trio.from_thread.run``. The
browser is the system's Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it):
Playwright's own browser download is not used. Without a Chromium the tests are skipped on a
developer's machine, and fail where ``SLUICEWAY_REQUIRE_BROWSER`` is set (CI sets it): a
skipped browser suite proves nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from playwright.sync_api import sync_playwright

T = TypeVar("T")

#: Where the tests write their screenshots (``build/screenshots`` of the repository).
SCREENSHOTS = Path(
    os.environ.get(
        "SLUICEWAY_SCREENSHOTS", Path(__file__).resolve().parents[2] / "build" / "screenshots"
    )
)

#: Chromium's flags for a closed network: no background traffic, no first-run work.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def chromium() -> str:
    """The Chromium executable to drive (``$SLUICEWAY_CHROMIUM``, else ``chromium`` on the
    PATH); skips the test, or fails it where a browser is required."""
    found = os.environ.get("SLUICEWAY_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    if os.environ.get("SLUICEWAY_REQUIRE_BROWSER"):
        pytest.fail("no Chromium found, and SLUICEWAY_REQUIRE_BROWSER is set (install chromium)")
    pytest.skip("no Chromium (apt-get install chromium, or set SLUICEWAY_CHROMIUM)")


async def in_browser(
    scenario: Callable[[Any], T], *, width: int = 1400, height: int = 900, csp: bool = False
) -> T:
    """Run ``scenario(page)`` on a new page of a fresh Chromium, in a worker thread.

    The page's content security policy (no ``eval``) would stop Playwright's waits for a
    condition, which poll it with a function made from text: it is bypassed unless ``csp``
    (the waits then poll from here instead)."""
    executable = chromium()

    def run() -> T:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(
                    viewport={"width": width, "height": height}, bypass_csp=not csp
                )
                page.set_default_timeout(20_000)
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                result = scenario(page)
                assert not errors, f"the page raised: {errors}"
                return result
            finally:
                browser.close()

    return await trio.to_thread.run_sync(run)


def screenshot(page: Any, name: str) -> Path:
    """Save a screenshot of the whole page as ``build/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
