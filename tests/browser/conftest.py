"""One headless Debian Chromium for all browser tests, driven by Playwright for Python.

Playwright's own browser download cannot work offline, so the tests launch the `chromium` package's
executable (`.ci/run` installs it) with a fresh profile and the flags that keep it from reaching
outside hosts."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
# Screenshots land in a temporary folder; `VIGIL_SCREENSHOTS=docs/console pytest -m browser`
# refreshes the ones docs/console.md shows (a normal run leaves the work tree clean).
SCREENSHOTS = Path(os.environ.get("VIGIL_SCREENSHOTS") or Path(tempfile.gettempdir()) / "vigil-console-screenshots")


# Package scope, not session: Playwright's sync API keeps an event loop running on the main thread
# while it is open, and tests after these ones may call asyncio.run().
@pytest.fixture(scope="package")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("the chromium package is not installed (.ci/run installs it with apt-get)")
        pytest.skip("the chromium package is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()
