"""Fixtures for the tests that drive the Prefect UI in a real browser.

The browser is the system's Chromium (Debian's ``chromium``; ``make browser`` installs it),
driven by Playwright; Playwright's own browser download is never used. ``ANON_TASKS_CHROMIUM``
names another executable. Without Chromium or Playwright the tests here skip, or fail when
``ANON_TASKS_REQUIRE_BROWSER=1`` (as ``.ci/run`` sets it).

One browser serves every test in this package and is closed when the package is done, not at
the end of the session: while Playwright's sync API is started, the main thread's asyncio loop
counts as running, so ``asyncio.run()`` in any later test would fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.test_deployments import prefect_server  # noqa: F401 (the fixture, for the tests here)

#: Set by .ci/run: a missing browser fails the tests instead of skipping them.
REQUIRE_BROWSER = os.environ.get("ANON_TASKS_REQUIRE_BROWSER", "") not in ("", "0")
CHROMIUM_NAMES = ("chromium", "chromium-browser")
#: CI runs as root (Chromium's sandbox refuses root) in containers with a small /dev/shm.
LAUNCH_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
LAUNCH_TIMEOUT_MS = 60_000
#: How long any single page action or wait may take unless a test says otherwise.
ACTION_TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1400, "height": 1000}

_ARTIFACTS = pytest.StashKey[Path]()


def _unavailable(message: str) -> NoReturn:
    if REQUIRE_BROWSER:
        pytest.fail(f"{message} (ANON_TASKS_REQUIRE_BROWSER is set)", pytrace=False)
    pytest.skip(message)


def find_chromium() -> str | None:
    """The Chromium executable: ``ANON_TASKS_CHROMIUM`` if set, else one on PATH."""
    configured = os.environ.get("ANON_TASKS_CHROMIUM", "")
    if configured:
        return shutil.which(configured)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    """A headless system Chromium, closed when the tests of this package are done."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    executable = find_chromium()
    if executable is None:
        configured = os.environ.get("ANON_TASKS_CHROMIUM", "")
        where = f"ANON_TASKS_CHROMIUM={configured!r}" if configured else " or ".join(CHROMIUM_NAMES)
        _unavailable(f"Chromium not found ({where}); `make browser` installs it")
    playwright = sync_playwright().start()
    try:
        try:
            launched = playwright.chromium.launch(
                executable_path=executable,
                headless=True,
                args=LAUNCH_ARGS,
                timeout=LAUNCH_TIMEOUT_MS,
            )
        except PlaywrightError as exc:
            _unavailable(f"Chromium at {executable} did not start: {exc}")
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser, request, tmp_path) -> Iterator[object]:
    """A page in a fresh browser context (no cookies, so each UI opens at its default)."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    request.node.stash[_ARTIFACTS] = tmp_path
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """When a test that uses ``page`` fails, save the page (PNG and HTML) into its tmp_path
    and name the files in the failure report."""
    report = yield
    if report.when == "call" and report.failed and _ARTIFACTS in item.stash:
        page = item.funcargs.get("page")
        if page is not None and not page.is_closed():
            folder = item.stash[_ARTIFACTS]
            png, html = folder / "failure.png", folder / "failure.html"
            try:
                page.screenshot(path=str(png), full_page=True)
                html.write_text(page.content())
                saved = f"url: {page.url}\nscreenshot: {png}\nhtml: {html}"
            except Exception as exc:  # a dead page must not hide the test's own failure
                saved = f"could not save the page: {exc}"
            report.sections.append(("browser page at failure", saved))
    return report
