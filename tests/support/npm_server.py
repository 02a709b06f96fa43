"""Starting a third-party server that `make test` installs with npm (Medplum's FHIR router, Azurite).

Both follow one rule: without node or the npm install the tests that need the server skip locally,
naming what is missing; under `CI=true` they fail instead, so CI never passes by running none of them.
A server announces its address on stdout; its output is drained afterwards so the pipe never fills.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable

import pytest

START_TIMEOUT_S = 60.0


def require(what: str, reason: str | None) -> None:
    """Skip (locally) or fail (under CI) when `reason` says why `what` cannot start here."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} unavailable under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def wait_for_address(process: subprocess.Popen[str], what: str, address_in: Callable[[str], str | None],
                     timeout_s: float = START_TIMEOUT_S) -> str:
    """The first address `address_in` finds in the server's stdout lines; the test fails if none comes."""
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            address = address_in(line)
            if address:
                found.append(address)
                break

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not found:
        process.kill()
        _, err = process.communicate(timeout=10)
        pytest.fail(f"{what} did not start: {(err or '').strip()[-2000:]}", pytrace=False)
    threading.Thread(target=lambda: [None for _ in process.stdout or []], daemon=True).start()
    return found[0]


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
