"""Azurite's Blob service on loopback: the Azure Storage emulator for the Blob destination tests.

Pinned in `tests/azurite/package-lock.json` (azurite 3.35.0, the last release that runs on Node 20: 3.36
needs Node 21 and 3.37 Node 22); `make test` installs it with `npm ci`. One in-memory server per test
session, telemetry off. Azurite emulates Blob, Queue and Table but not the Data Lake (dfs) endpoint; the
Data Lake destination is tested against tests/support/dfs_stub.py.

Without node or the npm install the Azurite tests skip locally and fail under `CI=true`
(tests/support/npm_server.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import npm_server

SERVER_DIR = Path(__file__).resolve().parent.parent / "azurite"
# Azurite's documented development account (github.com/Azure/Azurite#default-storage-account); public.
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_LISTENING = re.compile(r"listens on (http://\S+)")


def unavailable() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (Azurite needs Node.js 20+)"
    if not (SERVER_DIR / "node_modules" / ".bin" / "azurite-blob").exists():
        return f"Azurite is not installed: run `npm ci` in {SERVER_DIR} (make test does)"
    return None


def require() -> None:
    npm_server.require("Azurite", unavailable())


class Azurite:
    def __init__(self, url: str, process: subprocess.Popen[str]) -> None:
        self.url = url.rstrip("/")  # http://127.0.0.1:PORT
        self.account_url = f"{self.url}/{ACCOUNT}"
        self.process = process

    def container(self, name: str):  # noqa: ANN201 - azure.storage.blob.ContainerClient
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient(self.account_url, credential={"account_name": ACCOUNT, "account_key": KEY})
        client = service.get_container_client(name)
        if not client.exists():
            client.create_container()
        return client


@contextmanager
def run_azurite() -> Iterator[Azurite]:
    require()
    process = subprocess.Popen(
        [str(SERVER_DIR / "node_modules" / ".bin" / "azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", "0",
         "--inMemoryPersistence", "--extentMemoryLimit", "256", "--disableTelemetry", "--skipApiVersionCheck",
         "--silent"],
        cwd=SERVER_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = npm_server.wait_for_address(process, "Azurite",
                                      lambda line: m.group(1) if (m := _LISTENING.search(line)) else None)
    try:
        yield Azurite(url, process)
    finally:
        npm_server.stop(process)
