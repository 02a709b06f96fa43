"""Medplum's FHIR router on loopback: a real third-party FHIR server for the integration tests.

`tests/medplum/server.mjs` serves `@medplum/fhir-router` with its in-memory repository (pinned in
`tests/medplum/package-lock.json`; `make test` installs it with `npm ci`). One server runs per test
session. What it is and is not (no Subscriptions, no type-level `_history`, UUID version ids, …) is
in docs/fhir-servers.md, "Medplum in CI".

Without node or the npm install the Medplum tests skip locally and fail under `CI=true`
(tests/support/npm_server.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import npm_server

SERVER_DIR = Path(__file__).resolve().parent.parent / "medplum"
# The in-memory router refuses conditional transactions (If-Match / If-None-Exist entries) of more
# than 8 entries; the Medplum server does not (docs/fhir-servers.md).
TRANSACTION_SIZE = 8


def unavailable() -> str | None:
    """Why the Medplum server cannot start here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (Medplum's FHIR router needs Node.js 20+)"
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return f"the Medplum packages are not installed: run `npm ci` in {SERVER_DIR} (make test does)"
    return None


def require() -> None:
    npm_server.require("Medplum FHIR server", unavailable())


class MedplumServer:
    def __init__(self, url: str, process: subprocess.Popen[str]) -> None:
        self.url = url  # the FHIR base, http://127.0.0.1:PORT/fhir/R4
        self.process = process

    def reset(self) -> None:
        """Empty the in-memory repository (a harness route outside the FHIR base)."""
        origin = self.url.rsplit("/fhir/", 1)[0]
        httpx.post(f"{origin}/$reset", timeout=10).raise_for_status()


@contextmanager
def run_medplum() -> Iterator[MedplumServer]:
    require()
    # stdin is a pipe the server watches: if this process dies, the server's stdin closes and it exits.
    process = subprocess.Popen(["node", "server.mjs", "0"], cwd=SERVER_DIR, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = npm_server.wait_for_address(process, "the Medplum FHIR server",
                                      lambda line: json.loads(line)["url"] if line.strip() else None)
    try:
        yield MedplumServer(url, process)
    finally:
        npm_server.stop(process)
